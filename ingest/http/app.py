"""HTTP gateway (FastAPI on uvicorn): images in over HTTP, events onto the images stream.

`POST /v1/detect` answers 202 with the id at once, or with `?wait=true` 200 with the result once
a detector has answered (504 when `timeout_ms` passes first; 503 `no_detector` at once when no
detector is alive). Waiting uses the event's `reply_to`: one reply stream and one blocking
reader per process (ingest/http/reply_router.py). Errors: ingest/http/errors.py.
"""

from __future__ import annotations

import time

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facestream.common.contract.keys import Keys
from facestream.common.heap import freeze_startup_heap
from facestream.common.log import get_logger
from facestream.common.settings import GatewaySettings
from facestream.ingest.http import metrics
from facestream.ingest.http.apidocs import add_docs_routes
from facestream.ingest.http.dropin import add_dropin_routes
from facestream.ingest.http.errors import RedisTrouble, add_error_handlers, clean_result
from facestream.ingest.http.headers import SecurityHeaders
from facestream.ingest.http.health_routes import add_health_routes
from facestream.ingest.http.request_input import (
    CROPS_DOC,
    REQUEST_BODY,
    b64_default,
    error,
    error_doc,
    form_event,
    read_request,
)
from facestream.ingest.http.state import gateway_lifespan, gateway_of
from facestream.ingest.http.ui_routes import add_ui_routes

log = get_logger(__name__)


class MetricsMiddleware:
    """Counts requests by status and times them: a plain ASGI wrapper, cheaper than a
    BaseHTTPMiddleware on the hot path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] == "/v1/detect" else "other"
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.HTTP.labels(path, str(status)).inc()
            metrics.HTTP_LATENCY.labels(path).observe(time.perf_counter() - started)


def create_app(settings: GatewaySettings) -> FastAPI:
    """The gateway's application: its state made by the lifespan (ingest/http/state.py), one
    error mapping, the routes, the security headers and the request metrics."""
    keys = Keys(settings.prefix, settings.partitions)

    app = FastAPI(
        title="facestream gateway",
        version="1",
        description="Face detection over Redis Streams: publish an image, optionally wait "
        "for its faces. Result fields are those of the v1 result contract (docs/contract.md).",
        lifespan=gateway_lifespan(settings, keys),
        # Served from an installed package by ingest/http/apidocs.py instead of a CDN.
        docs_url=None,
        redoc_url=None,
    )
    # Redis errors seen by requests, shared with the fast path and /readyz.
    app.state.trouble = trouble = RedisTrouble()
    add_error_handlers(app, settings, trouble)

    add_detect_route(app, settings)
    add_dropin_routes(app, settings)
    add_ui_routes(app, settings, keys)
    docs_csp = add_docs_routes(app, "facestream gateway")
    app.add_middleware(SecurityHeaders, docs_csp=docs_csp)
    app.add_middleware(MetricsMiddleware)

    add_health_routes(app, settings, keys, trouble)
    return app


def add_detect_route(app: FastAPI, settings: GatewaySettings) -> None:
    """`POST /v1/detect` through FastAPI: multipart forms (a raw body takes the fast path,
    ingest/http/fastpath.py, with the same answers)."""

    @app.post(
        "/v1/detect",
        openapi_extra={"requestBody": REQUEST_BODY},
        responses={
            200: {"description": "the result (with wait=true)"},
            202: {
                "description": "accepted; the result goes to the results stream. Body: `id`, "
                "`sha256`, `entry` (its images-stream entry), `detectors` (how many are alive) "
                "and, when none is, `warning` (it is answered once one starts)"
            },
            400: error_doc("bad request"),
            413: error_doc("image too large"),
            415: error_doc("not an image"),
            503: error_doc(
                "no detector alive (`no_detector`, wait=true only), overloaded (`overloaded`), "
                "Redis out of memory (`redis_oom`) or unreachable (`unavailable`); see "
                "Retry-After"
            ),
            504: error_doc("no result within timeout_ms (the image is still processed)"),
        },
    )
    async def detect(
        request: Request,
        wait: bool = False,
        timeout_ms: int | None = Query(None, ge=1, le=settings.max_wait_timeout_ms),
        id: str | None = Query(None, min_length=1, max_length=128),
        source: str | None = Query(None, max_length=256),
        meta: str | None = Query(None, description="a JSON object, echoed in the result"),
        crops: bool = Query(False, description=CROPS_DOC),
    ) -> Response:
        image, form = await read_request(request, settings)
        gateway = gateway_of(app)
        reply_to = gateway.reply_stream if wait else None
        event = form_event(
            image,
            form,
            settings,
            event_id=id,
            source=source,
            meta=meta,
            reply_to=reply_to,
            crops=crops,
        )
        if not wait:
            entry = await gateway.publisher.publish(event)
            accepted = {"id": event.id, "sha256": event.sha256, "entry": entry}
            return JSONResponse(await gateway.liveness.accepted_body(accepted), 202)
        result = await gateway.answer(event, (timeout_ms or settings.wait_timeout_ms) / 1000)
        if result is None:
            return error(
                504, "timeout", "no result in time; it will still be published", id=event.id
            )
        clean_result(result)
        return Response(orjson.dumps(result, default=b64_default), media_type="application/json")


def app_factory() -> ASGIApp:
    """uvicorn's factory: each worker process is an entry point with its own GatewaySettings."""
    from facestream.common.log import configure
    from facestream.ingest.http.fastpath import FastDetect

    settings = GatewaySettings()
    configure(settings)
    app = FastDetect(create_app(settings), settings)
    # The worker's imports are done: what is alive now stays alive (common/heap.py).
    log.info("gateway_heap_frozen", objects=freeze_startup_heap())
    return app
