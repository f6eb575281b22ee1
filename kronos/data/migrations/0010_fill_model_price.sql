-- Paper vs backtest (kronos.execution.parity): what the backtest's fill rule gives for
-- each paper fill on the bar of the session it happened in. model_ref: that bar's
-- reference price (open or close, on the store's price basis); model_price: the
-- modelled fill price (NULL until the bar is in the store, or when the backtest
-- would not have filled the order); model_rule: the rule used; model_note: why
-- model_price is NULL.
ALTER TABLE fills ADD COLUMN model_ref DOUBLE;
ALTER TABLE fills ADD COLUMN model_price DOUBLE;
ALTER TABLE fills ADD COLUMN model_rule VARCHAR;
ALTER TABLE fills ADD COLUMN model_note VARCHAR;
