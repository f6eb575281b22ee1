"""The base of every settings section (:mod:`kronos.config`): frozen, keywords checked."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from kronos.errors import ConfigError, did_you_mean


class ConfigModel(BaseModel):
    """A settings section: frozen, built from defaults and keywords only, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    env_prefix: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        """Validate ``data``; an unknown keyword raises :class:`ConfigError` naming the nearest."""
        unknown = [k for k in data if k not in _keywords(type(self))]
        if unknown:
            hints = [f"{k!r}{did_you_mean(k, type(self).model_fields)}" for k in unknown]
            raise ConfigError(f"{type(self).__name__}: unknown setting {', '.join(hints)}")
        super().__init__(**data)

    @classmethod
    def env_names(cls) -> dict[str, str]:
        """Field name -> the environment variable that sets it."""
        out = {}
        for name, info in cls.model_fields.items():
            alias = info.validation_alias
            out[name] = alias if isinstance(alias, str) else (cls.env_prefix + name).upper()
        return out


def _keywords(cls: type[BaseModel]) -> set[str]:
    names = set(cls.model_fields)
    names |= {a for f in cls.model_fields.values() if isinstance(a := f.validation_alias, str)}
    return names
