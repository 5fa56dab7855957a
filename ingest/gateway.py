"""HTTP gateway (FastAPI on uvicorn): images in over HTTP, events onto the images stream.

`POST /v1/detect` answers 202 with the id at once, or with `?wait=true` 200 with the result once
a detector has answered (504 when `timeout_ms` passes first). Waiting uses the event's
`reply_to`: one reply stream and one blocking reader per process (ingest/replies.py).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import redis.exceptions
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.datastructures import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common import metrics
from common.connection import async_client
from common.errors import REDIS_ERRORS
from common.keys import Keys
from common.log import get_logger
from common.settings import Settings
from ingest.compat import add_compat_routes
from ingest.publisher import (
    AsyncPublisher,
    BadRequest,
    ImageTooLarge,
    PublishError,
    make_event,
)
from ingest.replies import ReplyRouter

log = get_logger(__name__)
MULTIPART_OVERHEAD = 64 * 1024  # field headers and small fields around the image part

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
_BODY = {
    "required": True,
    "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "image/webp": {"schema": {"type": "string", "format": "binary"}},
        "image/bmp": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "id": {"type": "string", "maxLength": 128},
                    "source": {"type": "string", "maxLength": 256},
                    "meta": {"type": "string", "description": "a JSON object"},
                },
            }
        },
    },
}


def _error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def b64_default(value: object) -> str:
    """bin values (possible inside `meta`) as base64, like `common.schema.jsonable`."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status, headers)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """A raw request body, refused past `limit` bytes: from Content-Length before reading, or
    while reading a chunked upload. Shared by the FastAPI route and the ASGI fast path."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise ImageTooLarge(f"the body is {value.decode()} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:  # chunked uploads carry no length: count as they come
            raise ImageTooLarge(f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def read_request(request: Request, settings: Settings) -> tuple[bytes, dict[str, str | None]]:
    """The image bytes and the optional fields, from a raw body or a multipart form."""
    limit = settings.max_image_bytes
    fields: dict[str, str | None] = {}
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
            raise ImageTooLarge(f"the body is {length} bytes; the limit is {limit}")
        try:
            form = await request.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except Exception as exc:  # the multipart parser raises several types on bad input
            raise BadRequest(f"bad multipart body: {exc}") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart body needs a file field named 'image'")
        if upload.size is not None and upload.size > limit:
            raise ImageTooLarge(f"the image is {upload.size} bytes; the limit is {limit}")
        image = await upload.read(limit + 1)
        if len(image) > limit:
            raise ImageTooLarge(f"the image is over the limit of {limit} bytes")
        for name in ("id", "source", "meta"):
            value = form.get(name)
            if isinstance(value, str):
                fields[name] = value
        return image, fields
    return await read_body(request.scope, request.receive, limit), fields


def parse_meta(raw: str | None) -> dict[str, Any] | None:
    if raw is None or raw == "":
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        raise BadRequest("meta must be a JSON object") from None
    if not isinstance(meta, dict):
        raise BadRequest("meta must be a JSON object")
    return meta


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


def create_app(settings: Settings) -> FastAPI:
    keys = Keys(settings.prefix, settings.partitions)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(settings)
        app.state.client = client
        app.state.publisher = AsyncPublisher(settings, client)
        app.state.replies = ReplyRouter(client, keys, settings.reply_ttl_s)
        await app.state.replies.start()
        log.info("gateway_ready", reply_stream=app.state.replies.stream)
        try:
            yield
        finally:
            await app.state.replies.stop()
            await client.aclose()

    app = FastAPI(
        title="facestream gateway",
        version="1",
        description="Face detection over Redis Streams: publish an image, optionally wait "
        "for its faces. Result fields are those of the v1 result contract (docs/contract.md).",
        lifespan=lifespan,
    )

    @app.exception_handler(PublishError)
    async def on_publish_error(request: Request, exc: PublishError) -> JSONResponse:
        headers = (
            {"Retry-After": str(getattr(exc, "retry_after_s", 1))} if exc.status == 503 else None
        )
        return error(exc.status, exc.code, exc.message, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def on_bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error(400, "bad_request", problems)

    async def on_redis_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("redis_unavailable", error=str(exc))
        return error(
            503,
            "unavailable",
            "the queue is unreachable; retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
        )

    for kind in REDIS_ERRORS:
        app.add_exception_handler(kind, on_redis_down)

    @app.post(
        "/v1/detect",
        openapi_extra={"requestBody": _BODY},
        responses={
            200: {"description": "the result (with wait=true)"},
            202: {"description": "accepted; the result goes to the results stream"},
            400: _error_doc("bad request"),
            413: _error_doc("image too large"),
            415: _error_doc("not an image"),
            503: _error_doc("overloaded or Redis unreachable; see Retry-After"),
            504: _error_doc("no result within timeout_ms (the image is still processed)"),
        },
    )
    async def detect(
        request: Request,
        wait: bool = False,
        timeout_ms: int | None = Query(None, ge=1, le=settings.max_wait_timeout_ms),
        id: str | None = Query(None, min_length=1, max_length=128),
        source: str | None = Query(None, max_length=256),
        meta: str | None = Query(None, description="a JSON object, echoed in the result"),
    ) -> Response:
        image, form = await read_request(request, settings)
        event = make_event(
            image,
            form.get("id") or id,
            source=form.get("source") or source,
            meta=parse_meta(form.get("meta") or meta),
            reply_to=app.state.replies.stream if wait else None,
            limits=settings.limits(),
        )
        publisher: AsyncPublisher = app.state.publisher
        if not wait:
            entry = await publisher.publish(event)
            return JSONResponse({"id": event.id, "sha256": event.sha256, "entry": entry}, 202)
        router: ReplyRouter = app.state.replies
        timeout_s = (timeout_ms or settings.wait_timeout_ms) / 1000
        result = await router.publish_and_wait(publisher, event, timeout_s)
        if result is None:
            return error(
                504, "timeout", "no result in time; it will still be published", id=event.id
            )
        return Response(orjson.dumps(result, default=b64_default), media_type="application/json")

    add_compat_routes(app, settings)
    app.add_middleware(MetricsMiddleware)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        if settings.metrics_dir:  # several workers: the sum of every worker's values
            registry = CollectorRegistry()
            collector: Any = MultiProcessCollector  # untyped in prometheus-client
            collector(registry, path=settings.metrics_dir)
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        client = app.state.client
        try:
            await client.ping()
            # Partition 0 stands for all: detectors create the group on every partition.
            groups = await client.xinfo_groups(keys.parts[0].images)
        except redis.exceptions.ResponseError:
            groups = []  # no images stream yet
        except REDIS_ERRORS as exc:
            return JSONResponse({"status": "not_ready", "reason": f"redis: {exc}"}, 503)
        names = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"] for g in groups}
        if settings.detector_group not in names:
            return JSONResponse(
                {
                    "status": "not_ready",
                    "reason": f"no consumer group {settings.detector_group!r}"
                    " on the images stream (no detector has started)",
                },
                503,
            )
        if not app.state.replies.healthy:
            return JSONResponse({"status": "not_ready", "reason": "reply reader not running"}, 503)
        return JSONResponse({"status": "ready"})

    return app


def app_factory() -> ASGIApp:
    """uvicorn's factory: each worker process is an entry point with its own Settings."""
    from common.log import configure
    from ingest.fastpath import FastDetect

    settings = Settings()
    configure(settings)
    return FastDetect(create_app(settings), settings)
