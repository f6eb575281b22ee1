"""Brokers behind one contract (:mod:`kronos.execution.brokers.base`): simulated and Alpaca."""
