"""What people look at: `POST /v1/draw` (the photo back as a JPEG with its faces drawn),
`GET /v1/status` (are detectors alive, how far behind are they) and the try-it page at `/`.

`/v1/draw` goes through exactly the path of `/v1/detect?wait=true` (the gateway's cache
answers, else the stream and the detectors); only the answer is drawn here, from the result's
coordinates. The page is static files from the package that call the public API only.
"""

from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import redis.exceptions
from fastapi import Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from facestream.common.contract.keys import Keys
from facestream.common.imaging.drawing import draw_faces
from facestream.common.imaging.photo import PhotoError
from facestream.common.settings import GatewaySettings
from facestream.common.streams.serving import live_detectors
from facestream.ingest.http.draw_budget import DrawBudget, give_back, header_pixels
from facestream.ingest.http.errors import readable
from facestream.ingest.http.request_input import (
    REQUEST_BODY,
    error,
    error_doc,
    form_event,
    read_request,
)
from facestream.ingest.http.state import gateway_of

if TYPE_CHECKING:
    from fastapi import FastAPI

# The page's files, served from the package (no build step, nothing fetched from elsewhere).
STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "draw.js": "text/javascript; charset=utf-8",
    "present.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Errors a result can carry, as the HTTP status /v1/draw answers them with: the image's fault
# is the client's (422), a failed model call is the service's and worth a retry (503).
_RETRY = {"inference_failed", "max_deliveries"}
_STATUS_DOC = {
    "type": "object",
    "properties": {
        "detectors": {"type": "integer", "description": "detectors alive (fresh heartbeat)"},
        "models": {"type": "array", "items": {"type": "string"}},
        "lag": {"type": "integer", "description": "images not yet read by any detector"},
        "pending": {"type": "integer", "description": "images read, not yet answered"},
    },
}


def static_file(name: str) -> bytes:
    return (resources.files("facestream.ingest.http") / "static" / name).read_bytes()


def add_ui_routes(app: FastAPI, settings: GatewaySettings, keys: Keys) -> None:
    pages = {name: static_file(name) for name in STATIC}  # read once: a handful of KiB
    draws = DrawBudget(settings.draw_max_pixels)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(pages["index.html"])

    @app.get("/ui/{name}", include_in_schema=False)
    async def ui_file(name: str) -> Response:
        if name not in pages or name == "index.html":
            return error(404, "not_found", "no such file")
        return Response(pages[name], media_type=STATIC[name])

    @app.get(
        "/v1/status",
        summary="Detectors alive and their lag",
        responses={
            200: {
                "description": "status",
                "content": {"application/json": {"schema": _STATUS_DOC}},
            },
            503: error_doc("Redis unreachable"),
        },
    )
    async def status() -> JSONResponse:
        client = gateway_of(app).client
        alive = live_detectors(await client.hgetall(keys.serving(settings.detector_group)))
        lag = pending = 0
        for part in keys.parts:
            try:
                groups = await client.xinfo_groups(part.images)
            except redis.exceptions.ResponseError:
                continue  # no images stream yet: nothing waits
            for g in groups:
                name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                if name == settings.detector_group:
                    lag += int(g.get("lag") or 0)
                    pending += int(g.get("pending") or 0)
        return JSONResponse(
            {
                "detectors": len(alive),
                "models": sorted(set(alive.values())),
                "lag": lag,
                "pending": pending,
                "cache_answers": settings.gateway_hits,
            }
        )

    @app.post(
        "/v1/draw",
        summary="The photo as a JPEG with its faces drawn",
        description="Same input as /v1/detect (raw body or multipart `image`) and the same path "
        "through the cache and the detectors; answers the photo, same size, with boxes, the "
        "five landmarks and scores drawn. Headers: X-Facestream-Faces, X-Facestream-Cached, "
        "X-Facestream-Id.",
        openapi_extra={"requestBody": REQUEST_BODY},
        responses={
            200: {
                "description": "the photo with its faces drawn",
                "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            },
            400: error_doc("bad request"),
            413: error_doc("image too large"),
            415: error_doc("not an image"),
            422: error_doc("the detector could not read the image"),
            503: error_doc(
                "no detector alive, overloaded, Redis unreachable or inference failed; "
                "see Retry-After"
            ),
            504: error_doc("no result within timeout_ms"),
        },
    )
    async def draw(
        request: Request,
        timeout_ms: int | None = Query(None, ge=1, le=settings.max_wait_timeout_ms),
        id: str | None = Query(None, min_length=1, max_length=128),
        source: str | None = Query(None, max_length=256),
        meta: str | None = Query(None, description="a JSON object, echoed in the result"),
    ) -> Response:
        started = time.perf_counter()
        image, form = await read_request(request, settings)
        gateway = gateway_of(app)
        event = form_event(
            image,
            form,
            settings,
            event_id=id,
            source=source,
            meta=meta,
            reply_to=gateway.reply_stream,
        )
        timeout_s = (timeout_ms or settings.wait_timeout_ms) / 1000
        await gateway.liveness.require()  # none alive: 503 no_detector at once, before the budget
        pixels = header_pixels(image)
        if not draws.admit(pixels):  # ingest/http/draw_budget.py
            return error(
                503,
                "overloaded",
                f"draws of {draws.in_flight} pixels are in progress (limit "
                f"{settings.draw_max_pixels}); retry later",
                headers={"Retry-After": str(settings.retry_after_s)},
            )
        try:
            result = await gateway.answer(event, timeout_s)
            if result is None:
                return error(504, "timeout", "no result in time; it will still be published")
            return await _drawn(result, image, settings, started)
        finally:
            draws.release(pixels)


def _draw(image: bytes, faces: list[dict[str, Any]], settings: GatewaySettings) -> bytes:
    try:
        return draw_faces(image, faces, settings.max_pixels, settings.max_jpeg_scans)
    finally:
        give_back(header_pixels(image))  # a large draw's memory back to the system


async def _drawn(
    result: dict[str, Any], image: bytes, settings: GatewaySettings, started: float
) -> Response:
    if "error" in result:
        code = str(result["error"].get("code", "error"))
        if code in _RETRY:
            headers = {"Retry-After": str(settings.retry_after_s)}
            return error(
                503, code, readable(str(result["error"].get("message", ""))), headers=headers
            )
        return error(422, code, readable(str(result["error"].get("message", ""))))
    faces = result.get("faces") or []
    try:
        # Decoding and encoding a large photo takes tens of ms: off the event loop.
        drawn = await asyncio.to_thread(_draw, image, faces, settings)
    except PhotoError as exc:
        return error(422, str(exc.code), readable(str(exc)))
    headers = {
        "X-Facestream-Faces": str(len(faces)),
        "X-Facestream-Cached": "true" if result.get("cached") else "false",
        "X-Facestream-Id": quote(str(result.get("id", ""))),  # headers are latin-1 only
        "Server-Timing": f"total;dur={(time.perf_counter() - started) * 1000:.1f}",
    }
    return Response(drawn, media_type="image/jpeg", headers=headers)
