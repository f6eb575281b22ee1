"""Checks of the Alpaca trading settings (:class:`kronos.config.AlpacaTradingSettings`).

Paper keys ``APCA_PAPER_API_KEY_ID`` / ``APCA_PAPER_API_SECRET_KEY``, live keys
``APCA_LIVE_API_KEY_ID`` / ``APCA_LIVE_API_SECRET_KEY``, ``KRONOS_ALPACA_MODE``
(``paper`` by default), ``KRONOS_ALPACA_TRADING_URL``, ``KRONOS_ALPACA_TIMEOUT_S``.
Live mode is refused unless ``KRONOS_ALLOW_LIVE_TRADING`` is ``true`` (any case,
surrounding blanks ignored); ``1``, ``yes``, ``on``... are refused, and the
refusal names the variable and the value given. Keys are
:class:`~pydantic.SecretStr`: they never show in a repr, an error or a log line.
:func:`kronos.config.load_settings` reads them from the environment or ``.env``.
"""

from __future__ import annotations

from kronos.config import AlpacaTradingSettings
from kronos.data.sources.alpaca import AlpacaConfigError

__all__ = [
    "ENV_ALLOW_LIVE",
    "ENV_MODE",
    "AlpacaConfigError",
    "AlpacaTradingSettings",
    "credentials",
    "live_trading_allowed",
    "load_alpaca_trading_settings",
]

ENV_PAPER_KEY_ID = "APCA_PAPER_API_KEY_ID"
ENV_PAPER_SECRET = "APCA_PAPER_API_SECRET_KEY"
ENV_LIVE_KEY_ID = "APCA_LIVE_API_KEY_ID"
ENV_LIVE_SECRET = "APCA_LIVE_API_SECRET_KEY"
ENV_MODE = "KRONOS_ALPACA_MODE"
ENV_ALLOW_LIVE = "KRONOS_ALLOW_LIVE_TRADING"
ENV_URL = "KRONOS_ALPACA_TRADING_URL"
ENV_TIMEOUT = "KRONOS_ALPACA_TIMEOUT_S"


def live_trading_allowed(flag: str | None) -> bool:
    """Whether ``KRONOS_ALLOW_LIVE_TRADING`` unlocks live mode: exactly ``true``, any case."""
    return flag is not None and flag.strip().lower() == "true"


def credentials(settings: AlpacaTradingSettings) -> tuple[str, str]:
    """The key pair for the settings' mode; refuses live trading without the flag."""
    if settings.mode == "live":
        if not live_trading_allowed(settings.allow_live):
            given = " is unset" if settings.allow_live is None else f"={settings.allow_live!r}"
            raise AlpacaConfigError(
                f"live trading is refused: {ENV_MODE}=live needs {ENV_ALLOW_LIVE}=true "
                f"(real money), and {ENV_ALLOW_LIVE}{given}: only 'true' unlocks it; "
                "use paper mode otherwise"
            )
        names = (ENV_LIVE_KEY_ID, ENV_LIVE_SECRET)
        pair = (settings.live_key_id, settings.live_secret_key)
    else:
        names = (ENV_PAPER_KEY_ID, ENV_PAPER_SECRET)
        pair = (settings.paper_key_id, settings.paper_secret_key)
    values = [p.get_secret_value().strip() if p is not None else "" for p in pair]
    missing = [name for name, value in zip(names, values, strict=True) if not value]
    if missing:
        raise AlpacaConfigError(
            f"Alpaca {settings.mode} trading: set {', '.join(missing)} (environment or .env)"
        )
    return values[0], values[1]


def load_alpaca_trading_settings(settings: AlpacaTradingSettings) -> AlpacaTradingSettings:
    """``settings`` (``load_settings().alpaca_trading``) once checked.

    Raises:
        AlpacaConfigError: the mode's keys are unset, or live mode lacks
            ``KRONOS_ALLOW_LIVE_TRADING=true``; the message names the variables and
            never includes a secret.

    """
    credentials(settings)
    return settings
