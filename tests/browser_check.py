"""Headless Chromium for tests: open a page, record its requests and console, take a screenshot.

Playwright drives the system Chromium (Debian's ``chromium``, which ``.ci/run``
installs): ``launch(executable_path=...)``, so nothing is downloaded. Every
request a page makes is recorded; one to a host other than 127.0.0.1/localhost
(or a ``file:``, ``data:``, ``blob:`` or ``about:`` URL) is aborted and listed by
:meth:`Visit.external`, so a page that needs a CDN fails the test instead of
waiting on the network.
"""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    Route,
    sync_playwright,
)

LOCAL_SCHEMES = frozenset({"file", "data", "blob", "about", "chrome-error"})
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
VIEWPORT = {"width": 1400, "height": 900}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# the names Debian, Ubuntu and Chrome install the browser under; BROWSER_TEST_CHROMIUM overrides
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed, or did not start (the message says which and why)."""


def is_local(url: str) -> bool:
    """Whether ``url`` stays on this machine (loopback host, or a file/data/blob/about URL)."""
    parts = urlsplit(url)
    return parts.scheme in LOCAL_SCHEMES or (parts.hostname or "") in LOCAL_HOSTS


def chromium_path() -> str:
    """The Chromium to drive: ``$BROWSER_TEST_CHROMIUM``, else the first of CHROMIUM_NAMES."""
    named = os.environ.get("BROWSER_TEST_CHROMIUM")
    if named:
        if not (Path(named).is_file() and os.access(named, os.X_OK)):
            raise BrowserUnavailable(f"BROWSER_TEST_CHROMIUM={named} is not an executable file")
        return named
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserUnavailable(
        f"no Chromium on PATH (looked for {', '.join(CHROMIUM_NAMES)}); "
        "`bash .ci/run` installs Debian's (apt-get install chromium chromium-driver)"
    )


@dataclass
class Visit:
    """What one page did: every request URL, console errors and uncaught exceptions."""

    url: str
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def external(self) -> list[str]:
        """The requests that left this machine (each was aborted)."""
        return [u for u in self.requests if not is_local(u)]

    def problems(self) -> list[str]:
        """Console errors, uncaught exceptions and external requests, one line each."""
        return (
            [f"console error: {m}" for m in self.console_errors]
            + [f"uncaught exception: {m}" for m in self.page_errors]
            + [f"external request: {u}" for u in self.external()]
        )


class Chromium:
    """One headless browser; :meth:`open` gives a fresh 1400 px wide page that records a Visit."""

    def __init__(self, browser: Browser) -> None:
        self._browser = browser

    @property
    def version(self) -> str:
        """The browser's version, e.g. ``150.0.7871.100``."""
        return self._browser.version

    @contextmanager
    def open(self, url: str, timeout_ms: float = 15_000) -> Iterator[tuple[Page, Visit]]:
        """Load ``url`` until the network is idle; yield the page and what it did so far.

        The Visit keeps recording while the caller waits for elements on the page.
        """
        visit = Visit(url)
        context = self._browser.new_context(viewport=VIEWPORT, service_workers="block")
        context.set_default_timeout(timeout_ms)

        def route(r: Route) -> None:
            if is_local(r.request.url):
                r.continue_()
            else:
                r.abort("blockedbyclient")

        context.route("**/*", route)
        page = context.new_page()

        def console(m: ConsoleMessage) -> None:
            if m.type == "error":
                visit.console_errors.append(f"{m.text} ({m.location.get('url', '')})")

        page.on("request", lambda r: visit.requests.append(r.url))
        page.on("websocket", lambda ws: visit.requests.append(ws.url))
        page.on("console", console)
        page.on("pageerror", lambda e: visit.page_errors.append(str(e)))
        try:
            page.goto(url, wait_until="networkidle")
            yield page, visit
        finally:
            context.close()


@contextmanager
def chromium() -> Iterator[Chromium]:
    """Start the system Chromium headless; :class:`BrowserUnavailable` with the exact error."""
    path = chromium_path()
    with sync_playwright() as pw:
        browser = _launch(pw, path)
        try:
            yield Chromium(browser)
        finally:
            browser.close()


def _launch(pw: Playwright, path: str) -> Browser:
    try:
        return pw.chromium.launch(executable_path=path, headless=True, timeout=30_000)
    except Exception as exc:  # Playwright raises its own Error with Chromium's stderr in it
        raise BrowserUnavailable(f"{path} did not start: {type(exc).__name__}: {exc}") from exc


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; ValueError when ``data`` is not a PNG."""
    if data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise ValueError(f"not a PNG (starts with {data[:16]!r})")
    width, height = struct.unpack(">II", data[16:24])
    return width, height
