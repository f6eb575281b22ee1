"""Execution: fill rules, brokers, reconciliation and the paper loop (orders come from decision)."""
