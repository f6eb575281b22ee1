"""The transport under :mod:`kronos.execution.brokers.alpaca`: alpaca-py's client, sent once.

:class:`AlpacaClient` sends every request exactly once and with a timeout (the
broker does its own retries); :func:`never_sent` tells a failure that cannot have
reached Alpaca from one that may have, and :func:`api_message` reads Alpaca's
error message out of an :class:`APIError`.
"""

from __future__ import annotations

from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from urllib3.exceptions import NewConnectionError

__all__ = ["AlpacaClient", "api_message", "never_sent"]


class AlpacaClient(TradingClient):
    """alpaca-py's client, sending each request once and with a timeout.

    alpaca-py 0.44 retries 429/504 itself (``RESTClient._one_request`` raises
    ``RetryException`` while ``retry > 0``) and passes no timeout to ``requests``;
    passing ``retry=0`` makes every error surface as :class:`APIError`.
    """

    def __init__(self, *, timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._timeout_s = timeout_s

    def _one_request(self, method: str, url: str, opts: dict, retry: int) -> dict:
        return super()._one_request(method, url, {**opts, "timeout": self._timeout_s}, 0)


def never_sent(exc: requests.RequestException) -> bool:
    """The request cannot have reached the server (no connection was made)."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, NewConnectionError | ConnectionRefusedError):
            return True
        stack += [err.__cause__, err.__context__, getattr(err, "reason", None)]
        stack += [a for a in err.args if isinstance(a, BaseException)]
    return False


def api_message(exc: APIError) -> str:
    """Alpaca's error message, or the start of the body when it is not JSON."""
    try:
        return str(exc.message)
    except (ValueError, KeyError, TypeError):
        text = str(exc).strip().replace("\n", " ")
        return text[:200] or "no message"
