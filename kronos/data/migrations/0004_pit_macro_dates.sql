-- Fix: the factor and revision macros took the UTC date of as_of, so for an
-- end-of-day New York cutoff (04:59 UTC the next day) they read the next
-- session's liquidity bar. Dates are now New York dates, and a bar counts only
-- once its 16:00 New York close has passed, as in kronos.data.readers.

-- Cross-sectional EPS revisions as of an instant. For each symbol: the nearest
-- fiscal period ending after asof, its latest consensus known at as_of, and the
-- consensus known lookback_days earlier. rev_eps_chg is the relative change,
-- z_rev_eps its cross-sectional z-score (clipped to +/-3).
CREATE OR REPLACE MACRO fmp_revisions_cs(as_of, lookback_days := 30) AS TABLE
WITH known AS (
    SELECT * FROM fmp_analyst_estimates
    WHERE available_at <= as_of::TIMESTAMPTZ AND eps_avg IS NOT NULL
),
target AS (
    SELECT symbol, min(period_end) AS period_end FROM known
    WHERE period_end > CAST(timezone('America/New_York', as_of::TIMESTAMPTZ) AS DATE)
    GROUP BY symbol
),
now_est AS (
    SELECT k.symbol, k.period_end, arg_max(k.eps_avg, k.available_at) AS eps_now,
           max(k.available_at) AS known_at
    FROM known k JOIN target t USING (symbol, period_end) GROUP BY ALL
),
prev_est AS (
    SELECT k.symbol, arg_max(k.eps_avg, k.available_at) AS eps_prev
    FROM known k JOIN target t USING (symbol, period_end)
    WHERE k.available_at <= as_of::TIMESTAMPTZ - to_days(CAST(lookback_days AS INTEGER))
    GROUP BY ALL
),
chg AS (
    SELECT n.symbol, n.period_end, n.known_at, n.eps_now, p.eps_prev,
           (n.eps_now - p.eps_prev) / greatest(abs(p.eps_prev), 0.01) AS rev_eps_chg
    FROM now_est n LEFT JOIN prev_est p USING (symbol)
)
SELECT symbol, as_of::TIMESTAMPTZ AS "asof", period_end, known_at, eps_now, eps_prev, rev_eps_chg,
       greatest(-3, least(3, (rev_eps_chg - avg(rev_eps_chg) OVER ())
                              / nullif(stddev_samp(rev_eps_chg) OVER (), 0))) AS z_rev_eps
FROM chg;

-- Value/quality factors as of an instant, from the latest version of each
-- quarterly statement known at as_of (restatements replace earlier versions once
-- known). TTM = sum of the last 4 quarters. z_* are z-scores within the sector
-- (sector as known at as_of), falling back to the whole cross-section where the
-- sector has fewer than 3 names; all clipped to +/-3.
--   roe = TTM net income / equity, roa = TTM net income / total assets,
--   gm  = TTM gross profit / TTM revenue, dta = total debt / total assets,
--   rev = TTM revenue growth over the prior TTM (needs 8 quarters).
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
    SELECT symbol, arg_max(avg_dollar_vol_60d, ts) AS avg_dollar_vol_60d
    FROM mv_liquidity_60d
    WHERE ts <= CAST(timezone('America/New_York', as_of::TIMESTAMPTZ) - INTERVAL 16 HOUR AS DATE)
      AND n_obs >= 60 GROUP BY symbol
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
