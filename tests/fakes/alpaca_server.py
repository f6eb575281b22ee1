"""The fake Alpaca server now lives in the package: :mod:`kronos.testing.fake_alpaca`."""

from kronos.testing.fake_alpaca import *  # noqa: F403
from kronos.testing.fake_alpaca import (  # the names the tests import, for linters
    FakeAlpacaServer,
    FakeBar,
    FakeResponse,
    RecordedRequest,
    run_alpaca_data_server,
)

__all__ = [
    "FakeAlpacaServer",
    "FakeBar",
    "FakeResponse",
    "RecordedRequest",
    "run_alpaca_data_server",
]
