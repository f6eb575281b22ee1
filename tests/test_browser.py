"""What a researcher opens, loaded in headless Chromium: the report, the service's docs, a notebook.

Each page must load with no console error, no uncaught exception and no request
leaving the machine (every request is recorded; external ones are aborted and
listed), and show its key panels. Screenshots of the report, ``/docs`` and the
notebook go to ``data/reports/screenshots/`` (1400 px wide, up to 2400 px tall).

Needs the system Chromium (``bash .ci/run`` installs Debian's). Where it is
missing or cannot start, the tests skip with the exact error, unless
``BROWSER_TEST_REQUIRED=1`` (set by ``.ci/run``), where they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml
from browser_check import VIEWPORT, BrowserUnavailable, Chromium, chromium, png_size
from fakes.notebooks import write_notebook
from PIL import Image

from kronos.backtest.report import PANEL_IDS, write_report
from kronos.backtest.run import run_backtest
from kronos.backtest.spec import parse_spec
from kronos.data import loaders
from kronos.data.store import Store

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "data" / "reports" / "screenshots"
# a screenshot keeps the top of a long page (the whole report takes ~10x as long to encode)
SHOT_MAX_HEIGHT = 2400
SERVICE_PATHS = ("/forecast", "/health", "/version")
PRINTED = "kronos browser check: printed line"
# a small real walk-forward run: 8 synthetic names, the ~6 months of 2002 the store holds
SPEC = {
    "name": "browser_ewma",
    "universe": {"source": "synthetic"},
    "dates": {"start": "2002-01-02", "end": "2002-12-31"},
    "forecaster": {"name": "ewma"},
    "splits": {"train_sessions": 250, "retrain": "quarterly"},
    "rebalance": {"every": "weekly", "weekday": 2},
    "costs": {"commission_bps": 2.0, "slippage_bps": 5.0, "volume_share": 0.05},
    "decision": {
        "strategy": {"strat_reco_topk": 6, "strat_min_market_cap": 0, "strat_min_dollar_vol": 0},
        "policy": {"policy_min_abs_dev": 0, "policy_min_sigma_z": 0},
    },
}
NOTEBOOK_CELLS = (
    f"print({PRINTED!r})",
    "import pandas as pd\n"
    "pd.DataFrame({'symbol': ['AAA', 'BBB', 'CCC'][:rows], 'weight': [0.5, 0.3, 0.2][:rows]})",
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(4, 2))\n"
    "ax.plot([1, 3, 2, 4])\n"
    "plt.show()",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Chromium]:
    """The system Chromium, headless; skips (or fails under BROWSER_TEST_REQUIRED=1) if absent."""
    with ExitStack() as stack:
        try:
            started = stack.enter_context(chromium())
        except BrowserUnavailable as exc:
            if os.environ.get("BROWSER_TEST_REQUIRED") == "1":
                pytest.fail(f"BROWSER_TEST_REQUIRED=1 but {exc}")
            pytest.skip(str(exc))
        yield started


@pytest.fixture(scope="module")
def synth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic store: 8 names, 2.5 years of bars."""
    path = tmp_path_factory.mktemp("browser-store") / "k.duckdb"
    with Store.open(path) as store:
        loaders.load_synthetic(store, n_symbols=8, years=2.5, seed=11)
    return path


@pytest.fixture(scope="module")
def report(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``report.html`` of a small real backtest on the synthetic store."""
    with Store.open(synth_db, read_only=True) as store:
        result = run_backtest(parse_spec(SPEC), store)
    out = tmp_path_factory.mktemp("browser-report")
    return write_report(result, out, yaml.safe_dump(SPEC))["report.html"]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A notebook executed by papermill, exported by the runner's HTML export."""
    import papermill

    from kronos.runner.base import KERNEL
    from kronos.runner.execute import notebook_html

    root = tmp_path_factory.mktemp("browser-notebook")
    source = write_notebook(root / "check.ipynb", "rows = 1", *NOTEBOOK_CELLS)
    papermill.execute_notebook(
        str(source),
        str(root / "check.out.ipynb"),
        parameters={"rows": 3},
        kernel_name=KERNEL,
        execution_timeout=60,
        progress_bar=False,
        cwd=str(root),
    )
    return notebook_html(root / "check.out.ipynb")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def service(synth_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``kronos serve`` (ewma fallback) on a free 127.0.0.1 port; yields its base URL.

    Yields once ``/openapi.json`` answers: the docs pages need no model, so the
    fallback fit may still run (``/health`` says ``loading`` meanwhile).
    """
    root = tmp_path_factory.mktemp("browser-serve")
    db = root / "k.duckdb"
    shutil.copy(synth_db, db)  # the service takes the store's lock; the report test reads it
    port = _free_port()
    args = ["serve", "--port", str(port), "--db", str(db), "--model", "ewma"]
    args += ["--source", "synthetic", "--model-dir", str(root / "models")]
    server = subprocess.Popen(
        [sys.executable, "-m", "kronos", *args],
        cwd=root,
        env={**os.environ, "NO_COLOR": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"kronos serve exited: {server.communicate()[0]}"
            try:
                if httpx.get(f"{base}/openapi.json", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "kronos serve did not answer in 60 s"
            time.sleep(0.05)
        yield base
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def _screenshot(page, name: str) -> Path:
    """A PNG of ``page`` (1400 px wide, its top 2400 px) in :data:`SCREENSHOTS`, checked."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    height = min(page.evaluate("document.documentElement.scrollHeight"), SHOT_MAX_HEIGHT)
    page.screenshot(
        path=path,
        full_page=True,
        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height},
    )
    data = path.read_bytes()
    assert png_size(data) == (VIEWPORT["width"], height), (path, png_size(data), height)
    assert height >= VIEWPORT["height"], (path, height)
    with Image.open(path) as img:
        grey = img.convert("L")
        levels = grey.getcolors(maxcolors=256) or []
    # a blank or one-colour page has a handful of grey levels; rendered text and plots have many
    assert len(levels) >= 32 and len(data) > 20_000, (path, len(levels), len(data))
    return path


def _broken_images(page) -> list[str]:
    return page.evaluate(
        "Array.from(document.images)"
        ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 80))"
    )


def test_report_loads_offline_with_every_panel(browser: Chromium, report: Path):
    with browser.open(report.as_uri()) as (page, visit):
        missing = [p for p in PANEL_IDS if page.locator(f"[id='{p}']").count() != 1]
        assert missing == [], f"panels missing from {report}: {missing} (PANEL_IDS {PANEL_IDS})"
        assert _broken_images(page) == []
        # every plotly figure drew its SVG (a script that failed offline leaves an empty div)
        blank = page.evaluate(
            "Array.from(document.querySelectorAll('.plotly-graph-div'))"
            ".filter(d => !d.querySelector('svg.main-svg')).map(d => d.id)"
        )
        assert blank == [], f"plotly figures not drawn in {report}: {blank}"
        _screenshot(page, "report.png")
    assert visit.problems() == [], visit.problems()
    assert visit.requests[0] == report.as_uri()


def test_service_docs_and_redoc_load_offline(browser: Chromium, service: str):
    title = httpx.get(f"{service}/openapi.json", timeout=10).json()["info"]["title"]
    with browser.open(f"{service}/docs") as (page, visit):
        page.locator(".opblock-summary-path", has_text="/forecast").first.wait_for()
        shown = set(page.locator(".opblock-summary-path").all_inner_texts())
        assert {p.replace("\u200b", "") for p in shown} >= set(SERVICE_PATHS), shown
        _screenshot(page, "docs.png")
    assert visit.problems() == [], visit.problems()
    assert f"{service}/openapi.json" in visit.requests
    with browser.open(f"{service}/redoc") as (page, visit):
        page.locator("h1", has_text=title).first.wait_for()
        page.locator("text=/forecast").first.wait_for()
    assert visit.problems() == [], visit.problems()


def test_executed_notebook_html_shows_its_outputs(browser: Chromium, notebook: Path):
    with browser.open(notebook.as_uri()) as (page, visit):
        outputs = page.locator(".jp-OutputArea-output")
        assert outputs.count() == len(NOTEBOOK_CELLS), outputs.all_inner_texts()
        assert PRINTED in outputs.nth(0).inner_text()
        cells = page.locator(".jp-OutputArea-output table td").all_inner_texts()
        assert {"AAA", "BBB", "CCC"} <= set(cells), cells
        plot = outputs.nth(2).locator("img")
        assert plot.count() == 1 and plot.evaluate("i => i.naturalWidth") > 100
        assert _broken_images(page) == []
        _screenshot(page, "notebook.png")
    assert visit.problems() == [], visit.problems()
