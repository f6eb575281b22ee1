"""Execution: the order planner and policy gates (brokers and the paper loop build on it)."""

from kronos.decision.planner import Plan, client_order_id, orders_table_rows, plan_orders

__all__ = ["Plan", "client_order_id", "orders_table_rows", "plan_orders"]
