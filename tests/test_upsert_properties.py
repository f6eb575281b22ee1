"""Upsert invariants over random batches (Hypothesis)."""

from datetime import date, timedelta

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kronos.data.ingest import conform, upsert
from kronos.data.store import Store

rows = st.lists(
    st.tuples(
        st.sampled_from(["A", "B", "C"]),
        st.integers(0, 20),
        st.floats(0.5, 500, allow_nan=False, allow_infinity=False),
    ),
    max_size=40,
    unique_by=lambda r: (r[0], r[1]),
)


def _bars(batch: list[tuple[str, int, float]]) -> pl.DataFrame:
    frame = pl.DataFrame(
        {
            "symbol": [r[0] for r in batch],
            "ts": [date(2020, 1, 1) + timedelta(days=r[1]) for r in batch],
            "adj_close": [r[2] for r in batch],
        },
        schema={"symbol": pl.String, "ts": pl.Date, "adj_close": pl.Float64},
    )
    nulls = [pl.lit(None, pl.Float64).alias(c) for c in ("open", "high", "low", "close", "volume")]
    return conform(frame.with_columns(*nulls, source=pl.lit("p")), "bars", origin="p")


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=rows, second=rows)
def test_upsert_equals_last_writer_wins_union_and_repeats_are_no_ops(
    tmp_path_factory, first, second
):
    with Store.open(tmp_path_factory.mktemp("p") / "k.duckdb") as store:
        upsert(store, "bars", _bars(first), source="p", origin="p")
        result = upsert(store, "bars", _bars(second), source="p", origin="p")
        again = upsert(store, "bars", _bars(second), source="p", origin="p")
        stored = dict(
            ((s, t), v)
            for s, t, v in store.con.execute("SELECT symbol, ts, adj_close FROM bars").fetchall()
        )
    expected = {(s, date(2020, 1, 1) + timedelta(days=d)): v for s, d, v in first}
    old = dict(expected)
    expected.update({(s, date(2020, 1, 1) + timedelta(days=d)): v for s, d, v in second})
    assert stored == expected  # one row per key, the newest batch's value
    new_keys = {(s, date(2020, 1, 1) + timedelta(days=d)) for s, d, _ in second}
    assert result.inserted == len(new_keys - old.keys())
    assert result.updated == sum(
        1 for s, d, v in second if old.get((s, date(2020, 1, 1) + timedelta(days=d)), v) != v
    )
    assert (again.inserted, again.updated) == (0, 0)
