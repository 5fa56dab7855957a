"""`/docs` (Swagger UI) served from an installed package, so the API docs load with no
network beyond the gateway (FastAPI's own page fetches Swagger UI from a CDN).

The files come from `fastapi-offline`: Swagger UI 5, which reads the OpenAPI 3.1 documents
FastAPI writes (`swagger-ui-bundle` ships Swagger UI 4, which refuses them). Only its static
files are used, from our own routes, so the page keeps this gateway's security headers
(ingest/http/headers.py). The page starts the viewer with one inline script: the
Content-Security-Policy allows that script by its hash, no other. No `/redoc`: the package's
ReDoc fetches its vendor's logo from a CDN at run time.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources
from typing import TYPE_CHECKING

from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response

from facestream.ingest.http.request_input import error

if TYPE_CHECKING:
    from fastapi import FastAPI

ASSETS = "/docs/assets"
_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
_INLINE = re.compile(rb"<script>(.*?)</script>", re.S)


def _asset(name: str) -> bytes:
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


def inline_hashes(html: bytes) -> list[str]:
    """CSP source expressions allowing exactly the inline scripts of `html`."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE.findall(html)
    ]


def docs_csp(swagger_html: bytes) -> str:
    """The docs page's policy: everything from this gateway; the inline start-up script by
    hash; inline styles and data: images, which Swagger UI draws with."""
    scripts = " ".join(["'self'", *inline_hashes(swagger_html)])
    return (
        f"default-src 'self'; script-src {scripts}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def add_docs_routes(app: FastAPI, title: str) -> str:
    """Adds /docs and its assets; returns the page's Content-Security-Policy."""
    openapi = app.openapi_url or "/openapi.json"
    swagger = get_swagger_ui_html(
        openapi_url=openapi,
        title=f"{title}: API",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon.png",
        oauth2_redirect_url=None,
    ).body
    assets: dict[str, bytes] = {}  # read on first use: ~1.7 MB the API clients never ask for

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(swagger)

    @app.get(ASSETS + "/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in _TYPES:
            return error(404, "not_found", f"no such file: {name}")
        if name not in assets:
            assets[name] = _asset(name)
        return Response(
            assets[name],
            media_type=_TYPES[name],
            headers={"Cache-Control": "public, max-age=86400"},
        )

    return docs_csp(bytes(swagger))
