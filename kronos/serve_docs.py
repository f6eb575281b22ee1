"""The service's FastAPI app with ``/docs`` and ``/redoc`` that work offline.

fastapi-offline serves Swagger UI and ReDoc from packaged assets instead of a
CDN. One request still left the machine: the ReDoc bundle it ships always draws
Redocly's logo from ``cdn.redoc.ly`` in the menu footer, with no option to turn
it off. So ``/redoc`` is ours: the same bundle with that image swapped for an
empty inline SVG, and no Google fonts (tests/test_browser.py fails on any
request that is not to 127.0.0.1).
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import HTMLResponse, Response
from fastapi_offline import FastAPIOffline

REDOC_JS = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_SVG = "data:image/svg+xml,%3Csvg%20xmlns='http://www.w3.org/2000/svg'/%3E"
REDOC_JS_PATH = "/static-kronos/redoc.standalone.js"


def offline_app(title: str, version: str, description: str) -> FastAPI:
    """A FastAPI app whose ``/docs`` and ``/redoc`` load nothing from outside."""
    app = FastAPIOffline(title=title, version=version, description=description, redoc_url=None)
    redoc_js = REDOC_JS.read_text(encoding="utf-8").replace(REDOC_LOGO, BLANK_SVG)

    @app.get(REDOC_JS_PATH, include_in_schema=False)
    def _redoc_js() -> Response:
        return Response(redoc_js, media_type="text/javascript")

    @app.get("/redoc", include_in_schema=False)
    def _redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{REDOC_JS_PATH}",
            with_google_fonts=False,
            redoc_favicon_url=f"{root}/static-offline-docs/favicon.png",
        )

    return app
