"""The ``strategy`` section of a backtest spec: the decision chain, or a plain strategy."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)


class StrategySpec(BaseModel):
    """What turns the data into orders: the decision chain, or a plain strategy.

    ::

        strategy:
          kind: decision | signals | weights   # default decision (the Kronos chain)
          fn: "pkg.mod:func"     # or an entry-point name of group kronos.strategies
          file: path/to.parquet  # instead of fn: columns ts (date), symbol and `column`
          column: signal         # default signal (signals) or weight (weights)
          size: 0.05             # signals only: fraction of NAV an entry buys (default 1/N)

    ``signals``: +1 enters (when flat), -1 exits (when held), 0 or null does
    nothing; ``weights``: the target weight of each name (names absent: 0).
    ``fn(store, asof, symbols) -> frame[symbol, value]`` is called at the close
    of ``asof`` (weights: on the rebalance sessions; signals: every session); a
    file's rows dated ``ts`` are known at the close of ``ts`` (see
    :mod:`kronos.backtest.plain`). A relative ``file`` is looked up in the spec
    file's folder, then in the working directory. ``strategy: weights`` is short
    for ``strategy: {kind: weights}``. The default (the decision chain) leaves
    the spec hash as it was before this section existed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["decision", "signals", "weights"] = "decision"
    fn: str | None = Field(None, description="'pkg.mod:func' or a kronos.strategies entry point")
    file: str | None = Field(None, description="a parquet file: ts, symbol and `column`")
    column: str | None = Field(None, description="the file's value column (signal | weight)")
    size: float | None = Field(
        None, gt=0, le=1, description="signals: NAV fraction per entry; None: 1/N universe"
    )
    _path: Path | None = PrivateAttr(None)  # ``file`` resolved when the spec was read

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> StrategySpec:
        if self.kind == "decision":
            extra = [k for k in ("fn", "file", "column", "size") if getattr(self, k) is not None]
            if extra:
                verb = "applies" if len(extra) == 1 else "apply"
                raise ValueError(
                    f"{', '.join(extra)} {verb} to kind signals or weights, not decision"
                )
            return self
        if self.fn is not None and self.file is not None:
            raise ValueError(f"kind {self.kind} takes fn or file, not both")
        if self.fn is None and self.file is None:
            raise ValueError(f"kind {self.kind} needs fn ('pkg.mod:func') or file (a parquet file)")
        if self.size is not None and self.kind != "signals":
            raise ValueError("size applies to kind signals only (weights size themselves)")
        if self.column is not None and self.file is None:
            raise ValueError("column applies to a file only (fn returns symbol, value)")
        if self.file is not None:
            spec_dir = (info.context or {}).get("spec_dir")
            self._path = _find_file(self.file, spec_dir)
        return self

    @property
    def plain(self) -> bool:
        """Whether this is a plain strategy (signals or weights), not the decision chain."""
        return self.kind != "decision"

    @property
    def value_column(self) -> str:
        """The file's value column: ``column``, else ``signal`` or ``weight`` by kind."""
        return self.column or ("signal" if self.kind == "signals" else "weight")

    @property
    def path(self) -> Path | None:
        """``file`` resolved (absolute) when the spec was read; None for ``fn``."""
        if self.file is not None and self._path is None:
            return _find_file(self.file, None)
        return self._path


def _find_file(file: str, spec_dir: Path | None) -> Path:
    """``file`` as is when absolute, else in ``spec_dir``, else in the working directory."""
    path = Path(file).expanduser()
    if path.is_absolute():
        if not path.is_file():
            raise ValueError(f"file {file!r}: no such file")
        return path
    places = ([(Path(spec_dir), "the spec file's folder")] if spec_dir else []) + [
        (Path.cwd(), "the working directory")
    ]
    for folder, _ in places:
        if (folder / path).is_file():
            return (folder / path).resolve()
    looked = " or ".join(f"{folder} ({what})" for folder, what in places)
    raise ValueError(f"file {file!r}: no such file in {looked}")
