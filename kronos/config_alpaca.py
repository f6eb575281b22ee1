"""The Alpaca sections of the settings (``APCA_*``, ``KRONOS_ALPACA_*``): see kronos.config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from kronos.config_base import ConfigModel

ALPACA_FEEDS = ("iex", "sip", "delayed_sip", "otc", "boats", "overnight")  # alpaca-py's DataFeed


class AlpacaDataSettings(ConfigModel):
    """Connection settings for the Alpaca market-data API (``APCA_*``).

    Keys are :class:`~pydantic.SecretStr`: they never show in a repr, a log line,
    an error or a run record. Build one with field names or the variable names,
    e.g. ``AlpacaDataSettings(APCA_API_KEY_ID=..., APCA_API_SECRET_KEY=...)``;
    :func:`kronos.data.sources.alpaca.load_alpaca_settings` checks the keys are set.
    """

    api_key: SecretStr | None = Field(None, validation_alias="APCA_API_KEY_ID")
    secret_key: SecretStr | None = Field(None, validation_alias="APCA_API_SECRET_KEY")
    data_url: str | None = Field(
        None,
        validation_alias="APCA_DATA_URL",
        description="Base URL override (tests, proxies); alpaca-py appends /v2/...",
    )
    feed: str = Field("iex", validation_alias="APCA_DATA_FEED")
    timeout_s: float = Field(
        30.0,
        gt=0,
        validation_alias="APCA_DATA_TIMEOUT_S",
        description="Seconds to wait for each answer before giving up",
    )

    @field_validator("data_url")
    @classmethod
    def _normalise_url(cls, value: str | None) -> str | None:
        value = (value or "").strip().rstrip("/")
        return value or None

    @field_validator("feed")
    @classmethod
    def _known_feed(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in ALPACA_FEEDS:
            raise ValueError(
                f"unknown Alpaca data feed {value!r}; expected one of {list(ALPACA_FEEDS)}"
            )
        return value


class AlpacaTradingSettings(ConfigModel):
    """Connection settings for the Alpaca trading API.

    Paper keys ``APCA_PAPER_API_KEY_ID`` / ``APCA_PAPER_API_SECRET_KEY``, live keys
    ``APCA_LIVE_API_KEY_ID`` / ``APCA_LIVE_API_SECRET_KEY``, ``KRONOS_ALPACA_MODE``
    (``paper`` by default), ``KRONOS_ALPACA_TRADING_URL``, ``KRONOS_ALPACA_TIMEOUT_S``,
    ``KRONOS_ALLOW_LIVE_TRADING``. Build one with field or variable names, e.g.
    ``AlpacaTradingSettings(APCA_PAPER_API_KEY_ID=..., APCA_PAPER_API_SECRET_KEY=...)``.
    Which keys are needed depends on the mode; the broker checks.
    """

    paper_key_id: SecretStr | None = Field(None, validation_alias="APCA_PAPER_API_KEY_ID")
    paper_secret_key: SecretStr | None = Field(None, validation_alias="APCA_PAPER_API_SECRET_KEY")
    live_key_id: SecretStr | None = Field(None, validation_alias="APCA_LIVE_API_KEY_ID")
    live_secret_key: SecretStr | None = Field(None, validation_alias="APCA_LIVE_API_SECRET_KEY")
    mode: Literal["paper", "live"] = Field("paper", validation_alias="KRONOS_ALPACA_MODE")
    allow_live: str | None = Field(
        None,
        validation_alias="KRONOS_ALLOW_LIVE_TRADING",
        description="the text given; only 'true' (any case) unlocks live mode",
    )
    trading_url: str | None = Field(
        None,
        validation_alias="KRONOS_ALPACA_TRADING_URL",
        description="Base URL override (tests, the fake); alpaca-py appends /v2/...",
    )
    timeout_s: float = Field(10.0, gt=0, validation_alias="KRONOS_ALPACA_TIMEOUT_S")

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
