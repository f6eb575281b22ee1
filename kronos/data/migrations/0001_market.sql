-- Market data: bars, company profiles, ingest lineage, and derived views.
-- bars has no PRIMARY KEY index on purpose: at tens of millions of rows the
-- index more than doubles ingest time and memory. (symbol, ts) stays unique
-- because every write goes through kronos.data.ingest.upsert (keyed anti-join,
-- duplicates refused per batch); the duplicate_keys QA rule checks it.
CREATE TABLE bars (
    symbol    VARCHAR NOT NULL,
    ts        DATE    NOT NULL,     -- trading day (exchange-local date)
    open      DOUBLE,               -- NULL where the source ships closes only
    high      DOUBLE,
    low       DOUBLE,
    close     DOUBLE,               -- raw (unadjusted) close; NULL where only adjusted closes exist
    adj_close DOUBLE  NOT NULL,     -- split- and dividend-adjusted close
    volume    DOUBLE,
    source    VARCHAR NOT NULL
);

CREATE TABLE dim_company_profile (
    symbol       VARCHAR     NOT NULL,
    available_at TIMESTAMPTZ NOT NULL,  -- when this profile became known
    name         VARCHAR,
    asset_type   VARCHAR     NOT NULL,  -- equity | etf | index
    sector       VARCHAR,
    industry     VARCHAR,
    exchange     VARCHAR,
    currency     VARCHAR,
    market_cap   DOUBLE,
    source       VARCHAR     NOT NULL,
    PRIMARY KEY (symbol, available_at)
);

CREATE TABLE ingest_log (
    batch_id     VARCHAR     PRIMARY KEY,
    source       VARCHAR     NOT NULL,
    target_table VARCHAR     NOT NULL,
    origin       VARCHAR     NOT NULL,  -- file path or generator description
    rows_in      BIGINT      NOT NULL,
    inserted     BIGINT      NOT NULL,
    updated      BIGINT      NOT NULL,
    finished_at  TIMESTAMPTZ NOT NULL
);

-- Close-to-close returns on adjusted closes; the first bar of each symbol has none.
CREATE VIEW daily_returns AS
SELECT symbol, ts, ret, log_ret FROM (
    SELECT symbol, ts,
           adj_close / lag(adj_close) OVER w - 1     AS ret,
           ln(adj_close / lag(adj_close) OVER w)     AS log_ret
    FROM bars
    WINDOW w AS (PARTITION BY symbol ORDER BY ts)
) WHERE ret IS NOT NULL;

-- 60-session average dollar volume (raw close x volume), trailing only.
CREATE VIEW mv_liquidity_60d AS
SELECT symbol, ts,
       avg(close * volume)   OVER w AS avg_dollar_vol_60d,
       count(close * volume) OVER w AS n_obs
FROM bars
WINDOW w AS (PARTITION BY symbol ORDER BY ts ROWS BETWEEN 59 PRECEDING AND CURRENT ROW);
