"""Shared fixtures: stores are built once per session where tests only read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronos.data import loaders
from kronos.data.store import Store


@pytest.fixture
def store(tmp_path: Path):
    """A fresh, empty store for one test."""
    with Store.open(tmp_path / "kronos.duckdb") as s:
        yield s


@pytest.fixture(scope="session")
def bundled_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database file holding the bundled data (closed; open it read-only)."""
    path = tmp_path_factory.mktemp("bundled") / "kronos.duckdb"
    with Store.open(path) as s:
        loaders.load_bundled(s)
    return path


@pytest.fixture(scope="session")
def mlflow_settings(tmp_path_factory: pytest.TempPathFactory):
    """One SQLite MLflow store for the session (its migrations take seconds)."""
    from kronos.config import TrackingSettings

    root = tmp_path_factory.mktemp("mlruns")
    return TrackingSettings(mlflow_tracking_uri=None, KRONOS_MLRUNS_DIR=root)


@pytest.fixture(scope="session")
def run_settings(mlflow_settings):
    """Default settings that track into the session's MLflow store (for ``mlflow_run``)."""
    from kronos.config import Settings

    return Settings(tracking=mlflow_settings)


# the corporate actions the raw store carries (see ``raw_db``)
RAW_SPLIT = ("SYN0001", 241, 2.0)  # symbol, session index of the ex-date, new shares per old
RAW_DIVIDENDS = ("SYN0002", (200, 263, 326), 0.75)  # symbol, ex-date indexes, cash per share
RAW_ENDED = ("SYN0003", 300)  # symbol whose bars stop after this session index


def make_raw(bars, sessions):
    """Synthetic bars turned into a vendor's raw and adjusted closes (``raw_db``'s actions).

    The synthetic path is the total-return path; the raw prints halve at the
    split and drop by the dividend at each ex-date, and ``adj_close`` is the raw
    close times the product of the later events' factors (CRSP/Yahoo rule).
    """
    import polars as pl

    sym, at, ratio = RAW_SPLIT
    dsym, days, cash = RAW_DIVIDENDS
    ended, last = RAW_ENDED
    out = []
    for (symbol,), frame in bars.sort("symbol", "ts").group_by("symbol", maintain_order=True):
        frame = frame.with_columns(i=pl.col("ts").replace_strict(sessions, return_dtype=pl.Int64))
        if symbol == ended:
            frame = frame.filter(pl.col("i") <= last)
        scale = pl.lit(1.0)
        shift = pl.lit(0.0)
        if symbol == sym:
            scale = pl.when(pl.col("i") >= at).then(1 / ratio).otherwise(1.0)
        if symbol == dsym:
            shift = sum(
                (pl.when(pl.col("i") >= d).then(cash).otherwise(0.0) for d in days), pl.lit(0.0)
            )
        frame = frame.with_columns(
            *((pl.col(c) * scale - shift).alias(c) for c in ("open", "high", "low", "close")),
            volume=pl.col("volume") / scale,
        )
        # adjusted: every earlier price times each later event's factor
        close = frame["close"].to_list()
        idx = frame["i"].to_list()
        factor = [1.0] * len(close)
        events = []
        if symbol == sym:
            events = [(at, 1 / ratio)]
        if symbol == dsym:
            events = [(d, 1 - cash / close[idx.index(d) - 1]) for d in days]
        for k, i in enumerate(idx):
            for d, a in events:
                if i < d:
                    factor[k] *= a
        out.append(frame.with_columns(adj_close=pl.Series(close) * pl.Series(factor)).drop("i"))
    return pl.concat(out)


@pytest.fixture(scope="session")
def raw_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic store with raw and adjusted closes: a 2:1 split, dividends, a name that stops.

    See :data:`RAW_SPLIT`, :data:`RAW_DIVIDENDS` and :data:`RAW_ENDED` (indexes
    are sessions of the stored bars).
    """
    path = tmp_path_factory.mktemp("raw") / "kronos.duckdb"
    with Store.open(path) as s:
        loaders.load_synthetic(s, n_symbols=6, years=1.5, seed=3)
        bars = s.con.sql("SELECT * FROM bars").pl()
        sessions = {d: i for i, d in enumerate(sorted(bars["ts"].unique().to_list()))}
        raw = make_raw(bars, sessions)
        s.con.register("_raw", raw.to_arrow())
        with s.transaction() as con:
            con.execute("DELETE FROM bars")
            con.execute(f"INSERT INTO bars SELECT {', '.join(bars.columns)} FROM _raw")
        s.con.unregister("_raw")
    return path


EXAMPLE_PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "kronos_example"


@pytest.fixture(scope="session")
def example_plugin(tmp_path_factory: pytest.TempPathFactory):
    """``examples/kronos_example`` installed as a package outside ``kronos/``.

    A copy lies in a temporary folder on ``sys.path`` with a ``.dist-info``
    holding the entry points of its ``pyproject.toml``, so
    :mod:`importlib.metadata` finds them as it finds any installed package's.
    Yields the folder (put it on ``PYTHONPATH`` for a ``kronos`` subprocess).
    """
    import configparser
    import importlib
    import shutil
    import sys
    import tomllib

    root = tmp_path_factory.mktemp("site")
    shutil.copytree(EXAMPLE_PACKAGE / "kronos_example", root / "kronos_example")
    project = tomllib.loads((EXAMPLE_PACKAGE / "pyproject.toml").read_text())["project"]
    info = root / f"kronos_example-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    points = configparser.ConfigParser()
    points.optionxform = str  # keep names as written
    for group, entries in project["entry-points"].items():
        points[group] = entries
    with (info / "entry_points.txt").open("w") as f:
        points.write(f)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield root
    sys.path.remove(str(root))
    for name in [m for m in sys.modules if m.split(".")[0] == "kronos_example"]:
        del sys.modules[name]
