"""Local fakes of outside services, for tests and for ``kronos paper chaos``.

:mod:`kronos.testing.fake_alpaca` serves Alpaca's market-data and trading APIs on
``127.0.0.1`` with fault injection; :mod:`kronos.testing.fake_market` is the small,
deterministic market behind its trading API. Nothing here reaches the network.
"""
