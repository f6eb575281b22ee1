"""What the notebooks show: styled tables, links to files, a data-quality summary.

:func:`table` turns a polars or pandas frame (or rows of dicts) into a
:class:`Table`: numbers formatted (thousands separators, ``digits``
significant digits, percentages where asked), no dtype row, no quoted strings,
a caption. In a notebook it renders through pandas' Styler as HTML with inline
CSS only (no web font, no script, no external link: it reads offline and in
the executed HTML copy); its text form is an aligned plain-text table.

:func:`file_link` shows a file (a backtest report, an executed notebook) as a
link relative to the notebook, which JupyterLab opens in its own viewer.
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import polars as pl

if TYPE_CHECKING:
    import pandas as pd

    from kronos.data.quality import QAReport

MISSING = "\u2014"  # an em dash
# a formatted number: what a right-aligned column holds (also "12.5%", "1.2e-05", "3.00x / yr")
_NUMERIC_TEXT = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?(%|x / yr|x)?$")
_CSS = [
    {"selector": "", "props": "border-collapse: collapse; font-size: 12px; margin: 4px 0 10px 0;"},
    {
        "selector": "caption",
        "props": "caption-side: top; text-align: left; font-weight: 600; padding: 2px 0 4px 0;",
    },
    {
        "selector": "th",
        "props": "text-align: left; padding: 3px 10px; border-bottom: 1px solid #888;"
        " font-weight: 600; white-space: nowrap;",
    },
    {
        "selector": "td",
        "props": "padding: 2px 10px; white-space: nowrap; font-variant-numeric: tabular-nums;",
    },
    {"selector": "tbody tr:nth-child(even)", "props": "background: rgba(127, 127, 127, 0.08);"},
]

Formatter = Callable[[Any], str]


def format_number(value: float, digits: int = 4) -> str:
    """``digits`` significant digits with thousands separators; integers past that in full."""
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}"


def format_cell(value: Any, *, percent: bool = False, digits: int = 4) -> str:
    """The text of one cell: numbers formatted, dates in ISO form, missing values as a dash."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:.2%}" if percent else f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return MISSING
        if percent:
            return f"{value:,.2%}" if math.isfinite(value) else "n/a"
        return format_number(value, digits)
    if isinstance(value, datetime):
        zone = f" {value.tzname()}" if value.tzinfo else ""
        return f"{value:%Y-%m-%d %H:%M}{zone}"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return f"{value.total_seconds():,.1f} s"
    return str(value)


@dataclass(frozen=True)
class Table:
    """A formatted table: cell texts, the columns to right-align, a caption and a note."""

    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    right: frozenset[str]
    caption: str = ""
    note: str = ""  # below the table, e.g. "first 60 of 1,234 rows"

    def to_html(self) -> str:
        """HTML with inline CSS (pandas Styler); nothing it references lies outside the page."""
        import pandas as pd

        frame = pd.DataFrame(list(self.rows), columns=list(self.columns))
        uuid = hashlib.sha1(repr((self.columns, self.rows, self.caption)).encode()).hexdigest()
        styler = frame.style
        styler.set_uuid(uuid[:10])
        styler = (
            styler.hide(axis="index")
            .format(escape="html")
            .format_index(escape="html", axis=1)
            .set_table_styles(_CSS)
        )
        right = {
            c: [{"selector": sel, "props": "text-align: right;"} for sel in ("td", "th")]
            for c in self.columns
            if c in self.right
        }
        if right and len(set(self.columns)) == len(self.columns):
            styler = styler.set_table_styles(right, overwrite=False)
        if self.caption:
            styler = styler.set_caption(html.escape(self.caption))
        body = styler.to_html()
        if self.note:
            body += f'<div style="font-size: 11px; opacity: 0.7;">{html.escape(self.note)}</div>'
        return body

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_text(self) -> str:
        """An aligned plain-text table (the notebook's text/plain form)."""
        widths = [
            max([len(c), *(len(r[i]) for r in self.rows)]) for i, c in enumerate(self.columns)
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                cell.rjust(w) if name in self.right else cell.ljust(w)
                for cell, w, name in zip(cells, widths, self.columns, strict=True)
            ).rstrip()

        lines = [self.caption] if self.caption else []
        lines += [line(self.columns), "  ".join("-" * w for w in widths)]
        lines += [line(r) for r in self.rows]
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.to_text()


def _as_polars(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pl.DataFrame):
        return frame
    if isinstance(frame, pl.Series):
        return frame.to_frame()
    if hasattr(frame, "to_dict") and hasattr(frame, "columns"):  # pandas, without importing it
        pdf: pd.DataFrame = frame
        if not (pdf.index.name is None and pdf.index.equals(type(pdf.index)(range(len(pdf))))):
            pdf = pdf.reset_index()
        return pl.DataFrame({str(c): pdf[c].tolist() for c in pdf.columns}, strict=False)
    if isinstance(frame, Mapping):
        return pl.DataFrame(dict(frame), strict=False)
    return pl.DataFrame(list(frame), strict=False, infer_schema_length=None)


def table(
    frame: pl.DataFrame | pd.DataFrame | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
    caption: str = "",
    *,
    percent: Sequence[str] = (),
    digits: int = 4,
    formats: Mapping[str, Formatter] | None = None,
    max_rows: int = 60,
) -> Table:
    """A styled, formatted table of ``frame`` for a notebook.

    ``percent`` names the columns of fractions shown as percentages (0.0123 ->
    1.23%); ``formats`` maps a column to a function of its value; every other
    number gets ``digits`` significant digits and thousands separators. Only the
    first ``max_rows`` rows are shown, with a note saying how many there are.
    """
    data = _as_polars(frame)
    if unknown := (set(percent) | set(formats or {})) - set(data.columns):
        raise KeyError(f"table: no column {sorted(unknown)} in {data.columns}")
    shown = data.head(max_rows)
    custom = dict(formats or {})
    columns = []
    for name in shown.columns:
        fmt = custom.get(name)
        is_percent = name in percent
        values = shown[name].to_list()
        if fmt is not None:
            columns.append([MISSING if v is None else fmt(v) for v in values])
        else:
            columns.append([format_cell(v, percent=is_percent, digits=digits) for v in values])
    right = frozenset(
        name
        for name, cells in zip(shown.columns, columns, strict=True)
        if data.schema[name].is_numeric()
        or (cells and all(c in (MISSING, "n/a") or _NUMERIC_TEXT.match(c) for c in cells))
    )
    rows = tuple(zip(*columns, strict=True)) if columns else ()
    note = f"first {max_rows:,} of {data.height:,} rows" if data.height > max_rows else ""
    if data.height == 0:
        note = "no rows"
    return Table(tuple(shown.columns), rows, right, caption, note)


@dataclass(frozen=True)
class FileLink:
    """A link to a file, relative to the notebook showing it (JupyterLab opens it)."""

    href: str  # relative to the notebook's folder, URL-quoted
    label: str  # the path as the reader should read it
    path: Path  # absolute
    title: str = ""

    def _repr_html_(self) -> str:
        lead = f"<strong>{html.escape(self.title)}</strong>: " if self.title else ""
        return (
            f'{lead}<a href="{html.escape(self.href)}" title="{html.escape(str(self.path))}">'
            f"{html.escape(self.label)}</a>"
        )

    def __repr__(self) -> str:
        return f"{self.title}: {self.path}" if self.title else str(self.path)


def file_link(
    path: str | os.PathLike[str],
    title: str = "",
    *,
    notebook_dir: str | os.PathLike[str] | None = None,
    project_root: str | os.PathLike[str] | None = None,
) -> FileLink:
    """A link to ``path`` relative to the notebook's folder.

    The folder is ``notebook_dir``, else the one JupyterLab names for this kernel
    (``JPY_SESSION_NAME``, the notebook's path), else ``<project_root>/notebooks``
    (the source notebooks; ``project_root`` defaults to the current directory,
    where :func:`kronos.config.chdir_project` puts a notebook). The label is the
    path relative to the project root when it lies inside it.
    """
    root = Path(project_root or Path.cwd()).resolve()
    target = Path(path).resolve()
    session = os.environ.get("JPY_SESSION_NAME", "")
    if notebook_dir is not None:
        base = Path(notebook_dir).resolve()
    elif session.endswith(".ipynb") and Path(session).is_absolute():
        base = Path(session).parent
    else:
        base = root / "notebooks"
    href = quote(Path(os.path.relpath(target, base)).as_posix())
    label = target.relative_to(root).as_posix() if target.is_relative_to(root) else str(target)
    return FileLink(href, label, target, title)


def qa_summary(report: QAReport) -> tuple[Table, Table | None]:
    """The data-quality verdict as a one-row summary, and a table of the failures only.

    A check is one (symbol, rule); a warning is a check that passed with offending
    rows under its threshold (``extreme_moves``).
    """
    checks = [r for s in report.symbols for r in s.rules.values()]
    failed = [r for r in checks if not r.passed]
    summary = table(
        [
            {
                "symbols": len(report.symbols),
                "rows": sum(s.rows for s in report.symbols),
                "checks": len(checks),
                "passed": len(checks) - len(failed),
                "failed": len(failed),
                "warnings": sum(1 for r in checks if r.passed and r.count),
                "verdict": "passed" if report.passed else "FAILED",
            }
        ],
        "Data quality: one check per (symbol, rule)",
    )
    if not failed:
        return summary, None
    failures = table(
        [
            {
                "symbol": symbol,
                "rule": rule,
                "rows": res.count,
                "first": res.first,
                "detail": res.detail,
            }
            for symbol, rule, res in report.failures()
        ],
        "Failed checks",
    )
    return summary, failures


class StatusLine:
    """A progress callback that rewrites one output line in place (no log dump).

    Interactively the line follows the work; an executed notebook keeps the last
    message only.
    """

    def __init__(self) -> None:
        self._handle: Any = None
        self.last = ""

    def __call__(self, message: str) -> None:
        """Show ``message`` in place of the previous one."""
        from IPython.display import Pretty, display

        self.last = message
        if self._handle is None:
            self._handle = display(Pretty(message), display_id=True)
        else:
            self._handle.update(Pretty(message))
