from __future__ import annotations

import pickle
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from arch import arch_model
from fakes.calendar_days import weekdays
from scipy import stats

from kronos.metrics import coverage, crps_student_t
from kronos.models.base import FORECAST_SCHEMA, HORIZON, ForecastError, target_dates
from kronos.models.baselines import EwmaNormal, GarchT, HistoricalQuantiles

SYMBOLS = ["AAA", "BBB", "CCC"]
N_DAYS = 600
TRAIN_DAYS = 400


START = date(2018, 1, 1)


def simulate_garch_t(
    rng: np.random.Generator,
    n: int,
    mu: float = 0.03,
    omega: float = 0.02,
    alpha: float = 0.08,
    beta: float = 0.9,
    nu: float = 6.0,
) -> np.ndarray:
    """Daily log returns (decimal) from a GARCH(1,1) with standardized t errors (percent units)."""
    z = rng.standard_t(nu, n) * np.sqrt((nu - 2) / nu)
    y = np.empty(n)
    s2 = omega / (1 - alpha - beta)
    for t in range(n):
        y[t] = mu + np.sqrt(s2) * z[t]
        s2 = omega + alpha * (y[t] - mu) ** 2 + beta * s2
    return y / 100


def make_panel(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    days = weekdays(START, n)
    return pl.DataFrame(
        {
            "symbol": np.repeat(SYMBOLS, n).tolist(),
            "ts": days * len(SYMBOLS),
            "y": np.concatenate([simulate_garch_t(rng, n) for _ in SYMBOLS]),
        },
        schema={"symbol": pl.String(), "ts": pl.Date(), "y": pl.Float64()},
    )


@pytest.fixture(scope="module")
def panel() -> pl.DataFrame:
    return make_panel(N_DAYS, seed=1)


@pytest.fixture(scope="module")
def days() -> list[date]:
    return weekdays(START, N_DAYS)


@pytest.fixture(scope="module")
def fitted(panel: pl.DataFrame, days: list[date]) -> dict[str, object]:
    train = panel.filter(pl.col("ts") <= days[TRAIN_DAYS - 1])
    return {
        "historical": HistoricalQuantiles(window=250).fit(train),
        "ewma": EwmaNormal(lam=0.94).fit(train),
        "garch": GarchT().fit(train),
    }


MODELS = ["historical", "ewma", "garch"]


def series(panel: pl.DataFrame, symbol: str) -> np.ndarray:
    return panel.filter(pl.col("symbol") == symbol).sort("ts")["y"].to_numpy()


def assert_same_forecasts(a: pl.DataFrame, b: pl.DataFrame, rtol: float = 0.0) -> None:
    assert a.height == b.height
    for col in ("symbol", "asof", "step", "target_ts", "model", "version"):
        assert a[col].to_list() == b[col].to_list(), col
    for col in ("p05", "p50", "p95"):
        np.testing.assert_allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=rtol, atol=0)


@pytest.mark.parametrize("key", MODELS)
def test_forecast_frame_shape(key, fitted, panel, days):
    model = fitted[key]
    asof = days[450]
    out = model.predict(panel, asof)
    assert dict(out.schema) == FORECAST_SCHEMA
    assert out.height == len(SYMBOLS) * HORIZON
    for s in SYMBOLS:
        rows = out.filter(pl.col("symbol") == s)
        assert rows["step"].to_list() == list(range(1, HORIZON + 1))
        assert rows["target_ts"].to_list() == target_dates(asof)
    assert set(out["asof"].to_list()) == {asof}
    assert set(out["model"].to_list()) == {model.name}
    assert set(out["version"].to_list()) == {model.version}
    assert model.version != "unfitted"
    assert out.select(pl.col("p05", "p50", "p95").is_finite().all()).row(0) == (True,) * 3


@pytest.mark.parametrize("key", MODELS)
def test_no_look_ahead(key, fitted, panel, days):
    model = fitted[key]
    cutoff = days[450]
    rng = np.random.default_rng(7)
    after = pl.col("ts") > cutoff
    changed = panel.with_columns(
        pl.when(after).then(pl.lit(rng.normal(0, 0.5, panel.height))).otherwise(pl.col("y"))
    )
    changed = changed.with_columns(  # a NaN after the cutoff must not matter either
        pl.when(after & (pl.col("ts") == days[451])).then(None).otherwise(pl.col("y")).alias("y")
    )
    assert not changed["y"].equals(panel["y"])
    assert_same_forecasts(model.predict(panel, cutoff), model.predict(changed, cutoff))
    origins = [days[420], days[440], cutoff]
    assert_same_forecasts(
        model.predict_origins(panel, origins), model.predict_origins(changed, origins)
    )


@pytest.mark.parametrize("key", MODELS)
def test_predict_origins_equals_predict(key, fitted, panel, days):
    model = fitted[key]
    # trading days, a Saturday (uses Friday's row) and the training end itself
    saturday = next(d for d in days[500:] if d.weekday() == 4) + timedelta(days=1)
    origins = [*days[TRAIN_DAYS:N_DAYS:13], saturday, days[TRAIN_DAYS - 1]]
    batched = model.predict_origins(panel, origins)
    one_by_one = pl.concat([model.predict(panel, o) for o in origins])
    # same arithmetic on a prefix of the series: expected bit-identical, rtol 1e-12 allowed
    assert_same_forecasts(batched, one_by_one, rtol=1e-12)
    assert model.predict_origins(panel, []).schema == pl.Schema(FORECAST_SCHEMA)


@pytest.mark.parametrize("key", MODELS)
def test_save_load_round_trip(key, fitted, panel, days, tmp_path: Path):
    model = fitted[key]
    model.save(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"state.pt", "config.json", "scaler.pkl"}
    assert pickle.loads((tmp_path / "scaler.pkl").read_bytes()) == {}
    loaded = type(model).load(tmp_path)
    assert loaded.version == model.version
    assert loaded.get_config() == model.get_config()
    origins = [days[450], days[599]]
    assert_same_forecasts(
        model.predict_origins(panel, origins), loaded.predict_origins(panel, origins)
    )


def test_load_refuses_another_model(fitted, tmp_path: Path):
    fitted["ewma"].save(tmp_path)
    with pytest.raises(ForecastError, match=r"config\.json.*'ewma'"):
        GarchT.load(tmp_path)
    with pytest.raises(ForecastError, match=r"config\.json"):
        HistoricalQuantiles.load(tmp_path / "missing")


def test_versions_identify_fitted_state(panel, days):
    train = panel.filter(pl.col("ts") <= days[TRAIN_DAYS - 1])
    assert EwmaNormal(0.94).fit(train).version == EwmaNormal(0.94).fit(train).version
    assert EwmaNormal(0.94).fit(train).version != EwmaNormal(0.97).fit(train).version
    shorter = panel.filter(pl.col("ts") <= days[TRAIN_DAYS - 2])
    assert GarchT().fit(train).version != GarchT().fit(shorter).version


def test_historical_quantiles_by_hand(fitted, panel, days):
    idx = 517
    out = fitted["historical"].predict(panel, days[idx], ["BBB"])
    window = series(panel, "BBB")[idx - 249 : idx + 1]  # the last 250 returns up to asof
    assert len(window) == 250
    # reference: np.quantile (linear) on the window; rtol 1e-12; p50 is exactly zero
    np.testing.assert_allclose(out["p05"], np.quantile(window, 0.05), rtol=1e-12)
    np.testing.assert_allclose(out["p95"], np.quantile(window, 0.95), rtol=1e-12)
    assert (out["p50"] == 0.0).all()


def test_ewma_by_hand(fitted, panel, days):
    idx, lam = 480, 0.94
    y = series(panel, "CCC")[: idx + 1]
    s2 = np.var(y[:30], ddof=1)  # seed: sample variance of the first 30 returns
    for r in y[30:]:
        s2 = lam * s2 + (1 - lam) * r * r
    model = fitted["ewma"]
    mu, sigma = model.distribution(panel, days[idx], ["CCC"])
    # reference: the loop above; rtol 1e-12 (lfilter does the same sums)
    np.testing.assert_allclose(sigma, np.full((1, HORIZON), np.sqrt(s2)), rtol=1e-12)
    assert (mu == 0).all()
    out = model.predict(panel, days[idx], ["CCC"])
    np.testing.assert_allclose(out["p95"], stats.norm.ppf(0.95) * np.sqrt(s2), rtol=1e-12)
    np.testing.assert_allclose(out["p05"], -stats.norm.ppf(0.95) * np.sqrt(s2), rtol=1e-12)


def test_ewma_restarts_after_a_gap(fitted, panel, days):
    # a NaN 40 rows back: the recursion restarts on the 39 returns after it, not on all history
    idx = 500
    y = series(panel, "AAA")[: idx + 1].copy()
    y[idx - 39] = np.nan
    gappy = panel.with_columns(
        pl.when((pl.col("symbol") == "AAA") & (pl.col("ts") == days[idx - 39]))
        .then(None)
        .otherwise(pl.col("y"))
        .alias("y")
    )
    tail = y[idx - 38 :]
    s2 = np.var(tail[:30], ddof=1)
    for r in tail[30:]:
        s2 = 0.94 * s2 + 0.06 * r * r
    _, sigma = fitted["ewma"].distribution(gappy, days[idx], ["AAA"])
    np.testing.assert_allclose(sigma[0, 0], np.sqrt(s2), rtol=1e-12)


def test_garch_filter_matches_arch(fitted, panel, days):
    model = fitted["garch"]
    k = model.symbols_.index("AAA")
    params = model.params_[k]  # arch's order for a constant mean: mu, omega, alpha, beta, nu
    y = 100 * series(panel, "AAA")
    for idx in (TRAIN_DAYS - 1, 450, 599):
        # arch with the fitted parameters fixed, on the data from the start to asof
        fixed = arch_model(y[: idx + 1], mean="Constant", vol="GARCH", p=1, q=1, dist="t")
        expected = fixed.fix(params).forecast(horizon=HORIZON, reindex=False).variance
        mu, sigma, nu = model.distribution(panel, days[idx], ["AAA"])
        # reference: arch's own forecast variances; rtol 1e-6
        np.testing.assert_allclose((100 * sigma[0]) ** 2, expected.to_numpy()[-1], rtol=1e-6)
        np.testing.assert_allclose(mu[0], params[0] / 100, rtol=1e-12)
        assert (nu == params[4]).all()
    out = model.predict_origins(panel, days[TRAIN_DAYS:N_DAYS:7])
    assert (out["p95"] > out["p50"]).all() and (out["p50"] > out["p05"]).all()
    # quantiles are those of the standardized t: mu + t_nu^-1(q) sqrt((nu - 2)/nu) sigma; rtol 1e-12
    one = model.predict(panel, days[599], ["AAA"])
    mu, sigma, nu = model.distribution(panel, days[599], ["AAA"])
    p95 = mu[0] + stats.t.ppf(0.95, nu[0]) * np.sqrt((nu[0] - 2) / nu[0]) * sigma[0]
    np.testing.assert_allclose(one["p95"], p95, rtol=1e-12)
    # the CRPS helper takes the t scale, not the sd
    score = crps_student_t(0.0, mu, sigma * np.sqrt((nu - 2) / nu), nu)
    assert 0 < score < sigma.max()


def test_garch_calibration_on_garch_data():
    n_train, n_test = 1500, 500
    panel = make_panel(n_train + n_test, seed=11)
    days = weekdays(START, n_train + n_test)
    model = GarchT().fit(panel.filter(pl.col("ts") <= days[n_train - 1]))
    origins = days[n_train - 1 : n_train + n_test - 1]
    out = model.predict_origins(panel, origins).filter(pl.col("step") == 1)
    realised = panel.rename({"ts": "target_ts", "y": "realised"})
    scored = out.join(realised, on=["symbol", "target_ts"], how="inner")
    assert scored.height == len(SYMBOLS) * n_test
    cov = coverage(scored["realised"], scored["p05"], scored["p95"])
    # nominal 0.90; the band is about +-3.7 binomial sd for 1500 draws (sd 0.0077)
    assert 0.85 <= cov <= 0.95


@pytest.mark.parametrize("key", MODELS)
def test_unknown_symbol(key, fitted, panel, days):
    with pytest.raises(ForecastError, match="ZZZ"):
        fitted[key].predict(panel, days[450], ["AAA", "ZZZ"])
    with pytest.raises(ForecastError, match="ZZZ"):
        fitted[key].predict_origins(panel, [days[450]], ["ZZZ"])


@pytest.mark.parametrize("key", ["historical", "ewma"])
def test_too_short(key, fitted, panel, days):
    model = fitted[key]
    asof = days[model.input_size - 2]  # one return short
    with pytest.raises(ForecastError, match=r"AAA.*needs at least"):
        model.predict(panel, asof, ["AAA"])
    with pytest.raises(ForecastError, match=r"AAA.*needs at least"):
        model.predict_origins(panel, [days[450], asof], ["AAA"])


def test_garch_too_short_to_fit(panel, days):
    short = panel.filter((pl.col("symbol") != "BBB") | (pl.col("ts") <= days[199]))
    with pytest.raises(ForecastError, match=r"BBB.*at least 250"):
        GarchT().fit(short)


@pytest.mark.parametrize("key", MODELS)
def test_nan_in_window(key, fitted, panel, days):
    asof = days[450]
    holed = panel.with_columns(
        pl.when((pl.col("symbol") == "BBB") & (pl.col("ts") == asof))
        .then(float("nan"))
        .otherwise(pl.col("y"))
        .alias("y")
    )
    with pytest.raises(ForecastError, match=r"BBB.*NaN"):
        fitted[key].predict(holed, asof)
    with pytest.raises(ForecastError, match=r"BBB.*NaN"):
        fitted[key].predict_origins(holed, [days[440], asof])
    # the other symbols are unaffected
    assert fitted[key].predict(holed, asof, ["AAA", "CCC"]).height == 2 * HORIZON


def test_garch_refusals(fitted, panel, days):
    model = fitted["garch"]
    extra = panel.filter(pl.col("symbol") == "AAA").with_columns(pl.lit("DDD").alias("symbol"))
    with pytest.raises(ForecastError, match=r"DDD.*not fitted"):
        model.predict(pl.concat([panel, extra]), days[450])
    with pytest.raises(ForecastError, match=r"CCC.*before the training end"):
        model.predict(panel, days[300], ["CCC"])
    # a NaN between the training end and asof breaks the filtered variance
    holed = panel.with_columns(
        pl.when((pl.col("symbol") == "CCC") & (pl.col("ts") == days[420]))
        .then(float("nan"))
        .otherwise(pl.col("y"))
        .alias("y")
    )
    with pytest.raises(ForecastError, match=r"CCC.*NaN"):
        model.predict(holed, days[450], ["CCC"])
    assert model.predict(holed, days[419], ["CCC"]).height == HORIZON
    with pytest.raises(ForecastError, match=r"CCC.*last training day"):
        model.predict(panel.filter(pl.col("ts") > days[TRAIN_DAYS - 1]), days[450], ["CCC"])


def test_unfitted_model_refuses(panel, days):
    with pytest.raises(ForecastError, match="not fitted"):
        EwmaNormal().predict(panel, days[450])
