-- The paper-trading loop and the simulated broker.
--
-- sim_broker_*: the simulated broker's own books (what "the broker" knows),
-- kept apart from the loop's records (orders, fills, positions) so that
-- reconciliation compares two independent accounts, as it does with Alpaca.
-- A restarted process continues from these rows.

CREATE TABLE sim_broker_state (
    account VARCHAR PRIMARY KEY,
    session DATE NOT NULL,             -- the current session of the simulated clock
    phase VARCHAR NOT NULL,            -- open | closed
    cash DOUBLE NOT NULL,
    starting_cash DOUBLE NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE sim_broker_orders (
    account VARCHAR NOT NULL, client_order_id VARCHAR NOT NULL, broker_order_id VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL, side VARCHAR NOT NULL, qty DOUBLE NOT NULL,
    filled_qty DOUBLE NOT NULL, filled_avg_price DOUBLE, status VARCHAR NOT NULL,
    order_type VARCHAR NOT NULL, limit_price DOUBLE, time_in_force VARCHAR NOT NULL,
    submitted_at TIMESTAMPTZ NOT NULL, updated_at TIMESTAMPTZ NOT NULL, reason VARCHAR,
    PRIMARY KEY (account, client_order_id)
);

CREATE TABLE sim_broker_fills (
    account VARCHAR NOT NULL, fill_id VARCHAR NOT NULL, client_order_id VARCHAR NOT NULL,
    broker_order_id VARCHAR NOT NULL, symbol VARCHAR NOT NULL, side VARCHAR NOT NULL,
    qty DOUBLE NOT NULL, price DOUBLE NOT NULL, commission DOUBLE NOT NULL,
    filled_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (account, fill_id)
);

CREATE TABLE sim_broker_positions (
    account VARCHAR NOT NULL, symbol VARCHAR NOT NULL, qty DOUBLE NOT NULL,
    avg_price DOUBLE NOT NULL,
    PRIMARY KEY (account, symbol)
);

-- One row per loop cycle: what it saw and did (status: running | done | failed).
CREATE TABLE paper_cycles (
    account VARCHAR NOT NULL, cycle INTEGER NOT NULL, broker VARCHAR NOT NULL,
    started_at TIMESTAMPTZ NOT NULL, finished_at TIMESTAMPTZ,
    broker_now TIMESTAMPTZ, market_open BOOLEAN, "asof" DATE, run_id VARCHAR,
    status VARCHAR NOT NULL, decided BOOLEAN NOT NULL DEFAULT false,
    submitted INTEGER NOT NULL DEFAULT 0, fills INTEGER NOT NULL DEFAULT 0,
    differences INTEGER NOT NULL DEFAULT 0, nav DOUBLE, cash DOUBLE, message VARCHAR,
    PRIMARY KEY (account, cycle)
);

-- What reconciliation found different between the loop's records and the
-- broker (the broker wins; this keeps what was overwritten).
CREATE TABLE paper_reconciliations (
    account VARCHAR NOT NULL, cycle INTEGER NOT NULL, kind VARCHAR NOT NULL,
    key VARCHAR NOT NULL, ours VARCHAR, broker VARCHAR, action VARCHAR NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
);

-- A bracket order's exit prices, so a restarted loop submits the same order.
ALTER TABLE orders ADD COLUMN take_profit DOUBLE;
ALTER TABLE orders ADD COLUMN stop_loss DOUBLE;
