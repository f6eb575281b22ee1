-- Market regime probabilities per session from the state-space regime encoder
-- (kronos.models.regime, whitepaper sections 4 and 10). The row of session ts
-- from a model trained on data up to trained_until is known once both sessions
-- have closed: readers take the newest version with trained_until <= asof and
-- its rows with ts <= asof. Rows are appended, never rewritten; a retrained
-- model writes a new version.
CREATE TABLE regime_features (
    model VARCHAR NOT NULL, version VARCHAR NOT NULL, ts DATE NOT NULL,
    trained_until DATE NOT NULL,
    p_calm DOUBLE NOT NULL, p_normal DOUBLE NOT NULL, p_turbulent DOUBLE NOT NULL,
    computed_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (model, version, ts)
);
