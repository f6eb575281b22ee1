"""Walk-forward backtests: specs, splits, the engine, vectorbt parity, reports."""
