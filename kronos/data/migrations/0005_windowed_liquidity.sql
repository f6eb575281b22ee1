-- Speed: the factor macro read liquidity through mv_liquidity_60d, a rolling
-- window over every bar ever stored (0.5 s at 3,000 symbols x 2 years). It now
-- averages each symbol's last 60 sessions up to the last closed session,
-- requiring all 60 to have a dollar volume and to fall within 180 calendar
-- days, exactly as kronos.data.readers.liquidity does.
CREATE OR REPLACE MACRO fundamentals_factors_v1(as_of) AS TABLE

WITH inc_v AS (
    SELECT symbol, period_end,
           arg_max(payload, available_at) AS payload, max(available_at) AS known_at
    FROM fmp_income_statement
    WHERE available_at <= as_of::TIMESTAMPTZ AND period <> 'FY'
    GROUP BY symbol, period_end
),
inc_k AS (
    SELECT *, row_number() OVER (PARTITION BY symbol ORDER BY period_end DESC) AS k FROM inc_v
),
ttm AS (
    SELECT symbol,
           max(period_end) FILTER (k = 1) AS period_end,
           max(known_at) AS known_at,
           sum(CAST(payload->>'netIncome' AS DOUBLE))   FILTER (k <= 4) AS ni_ttm,
           sum(CAST(payload->>'revenue' AS DOUBLE))     FILTER (k <= 4) AS rev_ttm,
           sum(CAST(payload->>'grossProfit' AS DOUBLE)) FILTER (k <= 4) AS gp_ttm,
           count(*) FILTER (k <= 4) AS n_q,
           sum(CAST(payload->>'revenue' AS DOUBLE)) FILTER (k BETWEEN 5 AND 8) AS rev_prev_ttm,
           count(*) FILTER (k BETWEEN 5 AND 8) AS n_q_prev
    FROM inc_k WHERE k <= 8 GROUP BY symbol
),
bal AS (
    SELECT symbol,
           arg_max(payload, (period_end, available_at)) AS payload
    FROM fmp_balance_sheet WHERE available_at <= as_of::TIMESTAMPTZ GROUP BY symbol
),
prof AS (
    SELECT symbol, arg_max(sector, available_at) AS sector,
           arg_max(market_cap, available_at) AS profile_market_cap
    FROM dim_company_profile WHERE available_at <= as_of::TIMESTAMPTZ GROUP BY symbol
),
km AS (
    SELECT symbol,
           arg_max(CAST(payload->>'marketCap' AS DOUBLE), (period_end, available_at)) AS km_market_cap
    FROM fmp_key_metrics WHERE available_at <= as_of::TIMESTAMPTZ GROUP BY symbol
),
liq AS (
    SELECT symbol, avg(dv) AS avg_dollar_vol_60d FROM (
        SELECT symbol, close * volume AS dv,
               row_number() OVER (PARTITION BY symbol ORDER BY ts DESC) AS k
        FROM bars
        WHERE ts <= CAST(timezone('America/New_York', as_of::TIMESTAMPTZ) - INTERVAL 16 HOUR AS DATE)
          AND ts > CAST(timezone('America/New_York', as_of::TIMESTAMPTZ) - INTERVAL 16 HOUR AS DATE)
                   - INTERVAL 180 DAY
    ) WHERE k <= 60 GROUP BY symbol HAVING count(dv) = 60
),
raw AS (
    SELECT t.symbol, t.period_end, t.known_at, coalesce(p.sector, 'Unknown') AS sector,
           CASE WHEN t.n_q = 4 THEN t.ni_ttm / nullif(CAST(b.payload->>'totalStockholdersEquity' AS DOUBLE), 0) END AS roe,
           CASE WHEN t.n_q = 4 THEN t.ni_ttm / nullif(CAST(b.payload->>'totalAssets' AS DOUBLE), 0) END AS roa,
           CASE WHEN t.n_q = 4 THEN t.gp_ttm / nullif(t.rev_ttm, 0) END AS gm,
           CAST(b.payload->>'totalDebt' AS DOUBLE) / nullif(CAST(b.payload->>'totalAssets' AS DOUBLE), 0) AS dta,
           CASE WHEN t.n_q = 4 AND t.n_q_prev = 4 THEN t.rev_ttm / nullif(t.rev_prev_ttm, 0) - 1 END AS rev,
           coalesce(km.km_market_cap, p.profile_market_cap) AS market_cap,
           l.avg_dollar_vol_60d
    FROM ttm t
    LEFT JOIN bal b USING (symbol)
    LEFT JOIN prof p USING (symbol)
    LEFT JOIN km USING (symbol)
    LEFT JOIN liq l USING (symbol)
),
long AS (
    UNPIVOT raw ON roe, roa, gm, dta, rev INTO NAME factor VALUE x
),
stats AS (
    SELECT *,
           count(x) OVER (PARTITION BY factor, sector) AS n_sec,
           avg(x) OVER (PARTITION BY factor, sector) AS mu_sec,
           stddev_samp(x) OVER (PARTITION BY factor, sector) AS sd_sec,
           avg(x) OVER (PARTITION BY factor) AS mu_all,
           stddev_samp(x) OVER (PARTITION BY factor) AS sd_all
    FROM long
),
z AS (
    SELECT symbol, factor,
           greatest(-3, least(3, CASE
               WHEN n_sec >= 3 AND sd_sec > 0 THEN (x - mu_sec) / sd_sec
               ELSE (x - mu_all) / nullif(sd_all, 0) END)) AS z
    FROM stats
),
zw AS (
    PIVOT z ON factor IN ('roe', 'roa', 'gm', 'dta', 'rev') USING first(z) GROUP BY symbol
)
SELECT r.symbol, as_of::TIMESTAMPTZ AS "asof", r.period_end, r.known_at, r.sector,
       r.roe, r.roa, r.gm, r.dta, r.rev,
       zw.roe AS z_roe, zw.roa AS z_roa, zw.gm AS z_gm, zw.dta AS z_dta, zw.rev AS z_rev,
       r.market_cap, r.avg_dollar_vol_60d
FROM raw r LEFT JOIN zw USING (symbol);
