"""The decision chain: snapshot -> strategist -> regime tuner -> allocator -> planner.

One function of one snapshot (:func:`kronos.decision.step.decide_from`), called
by the walk-forward backtest and the paper loop alike.
"""
