"""Settings of the Alpaca trading API, read from the environment or ``.env`` at the edges.

Paper keys ``APCA_PAPER_API_KEY_ID`` / ``APCA_PAPER_API_SECRET_KEY``, live keys
``APCA_LIVE_API_KEY_ID`` / ``APCA_LIVE_API_SECRET_KEY``, ``KRONOS_ALPACA_MODE``
(``paper`` by default), ``KRONOS_ALPACA_TRADING_URL``, ``KRONOS_ALPACA_TIMEOUT_S``.
Live mode is refused unless ``KRONOS_ALLOW_LIVE_TRADING`` is ``true`` (any case,
surrounding blanks ignored); ``1``, ``yes``, ``on``... are refused, and the
refusal names the variable and the value given. Keys are
:class:`~pydantic.SecretStr`: they never show in a repr, an error or a log line.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsConfigDict

from kronos.data.sources.alpaca import AlpacaConfigError, OwnVariablesSettings

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


class AlpacaTradingSettings(OwnVariablesSettings):
    """Connection settings for the Alpaca trading API.

    Populated from the environment or ``.env`` by variable name (field names are
    not read); pass the same names as keywords to build one directly, e.g.
    ``AlpacaTradingSettings(APCA_PAPER_API_KEY_ID=..., APCA_PAPER_API_SECRET_KEY=...)``.
    Which keys are needed depends on the mode; :class:`AlpacaBroker` checks.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_file=".env",
        env_file_encoding="utf-8",
    )

    paper_key_id: SecretStr | None = Field(default=None, validation_alias=ENV_PAPER_KEY_ID)
    paper_secret_key: SecretStr | None = Field(default=None, validation_alias=ENV_PAPER_SECRET)
    live_key_id: SecretStr | None = Field(default=None, validation_alias=ENV_LIVE_KEY_ID)
    live_secret_key: SecretStr | None = Field(default=None, validation_alias=ENV_LIVE_SECRET)
    mode: Literal["paper", "live"] = Field(default="paper", validation_alias=ENV_MODE)
    allow_live: str | None = Field(
        default=None,
        validation_alias=ENV_ALLOW_LIVE,
        description="the text given; only 'true' (any case) unlocks live mode",
    )
    trading_url: str | None = Field(
        default=None,
        validation_alias=ENV_URL,
        description="Base URL override (tests, the fake); alpaca-py appends /v2/...",
    )
    timeout_s: float = Field(default=10.0, gt=0, validation_alias=ENV_TIMEOUT)

    @field_validator("mode", mode="before")
    @classmethod
    def _lower_mode(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("allow_live", mode="before")
    @classmethod
    def _flag_text(cls, value: Any) -> Any:
        if isinstance(value, bool):  # a keyword from code, not the environment
            return "true" if value else "false"
        return value

    @field_validator("trading_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        value = (value or "").strip().rstrip("/")
        return value or None


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


def load_alpaca_trading_settings() -> AlpacaTradingSettings:
    """Read :class:`AlpacaTradingSettings` from the environment / ``.env`` and check them.

    Raises:
        AlpacaConfigError: a value is invalid, the mode's keys are unset, or live
            mode lacks ``KRONOS_ALLOW_LIVE_TRADING=true``; the message names the
            variables and never includes a secret.

    """
    try:
        settings = AlpacaTradingSettings()
    except ValidationError as exc:
        invalid = [
            f"{error['loc'][0] if error['loc'] else '?'}: {error['msg']}"
            for error in exc.errors(include_input=False, include_url=False)
        ]
        raise AlpacaConfigError("Alpaca trading settings: invalid " + "; ".join(invalid)) from None
    credentials(settings)
    return settings
