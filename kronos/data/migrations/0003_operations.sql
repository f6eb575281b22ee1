-- Operational tables filled by the forecasting, calibration, strategy and
-- execution stages. Shapes follow ARCHITECTURE.md's contracts.

CREATE TABLE forecasts (
    symbol VARCHAR NOT NULL, "asof" DATE NOT NULL, step INTEGER NOT NULL,  -- asof: origin session
    target_ts DATE NOT NULL, p05 DOUBLE NOT NULL, p50 DOUBLE NOT NULL, p95 DOUBLE NOT NULL,
    model VARCHAR NOT NULL, version VARCHAR NOT NULL,
    calibrated BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (symbol, "asof", step, model, version, calibrated)
);

-- scope: symbol | sector | global; key: the symbol or sector name ('*' for global).
CREATE TABLE calibration_state (
    model VARCHAR NOT NULL, scope VARCHAR NOT NULL, key VARCHAR NOT NULL,
    "asof" DATE NOT NULL, bias DOUBLE NOT NULL, scale DOUBLE NOT NULL,
    n_samples INTEGER NOT NULL, resid_var DOUBLE, updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, scope, key, "asof")
);

CREATE TABLE strategist_recos (
    "asof" TIMESTAMPTZ NOT NULL, symbol VARCHAR NOT NULL, rank INTEGER NOT NULL,
    side VARCHAR NOT NULL, score DOUBLE NOT NULL, contributions JSON NOT NULL,
    run_id VARCHAR,
    PRIMARY KEY ("asof", symbol)
);

CREATE TABLE policy_knobs (
    "asof" TIMESTAMPTZ NOT NULL, knob VARCHAR NOT NULL, value VARCHAR NOT NULL,
    reason VARCHAR, run_id VARCHAR,
    PRIMARY KEY ("asof", knob)
);

CREATE TABLE orders (
    client_order_id VARCHAR PRIMARY KEY, run_id VARCHAR NOT NULL, "asof" TIMESTAMPTZ NOT NULL,
    symbol VARCHAR NOT NULL, side VARCHAR NOT NULL, qty DOUBLE NOT NULL,
    order_type VARCHAR NOT NULL, limit_price DOUBLE, intent VARCHAR NOT NULL,
    status VARCHAR NOT NULL, broker VARCHAR NOT NULL, broker_order_id VARCHAR,
    target_weight DOUBLE, turnover_est DOUBLE, submitted_at TIMESTAMPTZ, updated_at TIMESTAMPTZ
);

CREATE TABLE fills (
    fill_id VARCHAR PRIMARY KEY, client_order_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL,
    side VARCHAR NOT NULL, qty DOUBLE NOT NULL, price DOUBLE NOT NULL,
    commission DOUBLE NOT NULL DEFAULT 0, filled_at TIMESTAMPTZ NOT NULL,
    target_weight DOUBLE, turnover_est DOUBLE, broker VARCHAR NOT NULL
);

CREATE TABLE positions (
    account VARCHAR NOT NULL, "asof" TIMESTAMPTZ NOT NULL, symbol VARCHAR NOT NULL,
    qty DOUBLE NOT NULL, avg_price DOUBLE, market_value DOUBLE, broker VARCHAR NOT NULL,
    PRIMARY KEY (account, "asof", symbol)
);

-- scope: symbol | sector | global | headline; key: symbol, sector or '*'.
CREATE TABLE circuit_breakers (
    breaker_id VARCHAR PRIMARY KEY, scope VARCHAR NOT NULL, key VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, tripped_at TIMESTAMPTZ NOT NULL, expires_at TIMESTAMPTZ,
    cleared_at TIMESTAMPTZ, details JSON
);
