"""The hot request, `POST /v1/detect` with a raw image body, served as plain ASGI.

Measured on the published scenario, FastAPI's routing, parameter parsing and response classes
were the largest share of the gateway's CPU per request. This wrapper answers the raw-body
case itself, with the same checks, errors and answers as the FastAPI route (which stays: it
serves multipart forms and documents the API in OpenAPI); everything else passes through.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.types import Receive, Scope, Send

from facestream.common.contract.schema import MAX_ID_CHARS
from facestream.common.log import get_logger
from facestream.common.settings import GatewaySettings
from facestream.ingest.http import hit_clock, metrics
from facestream.ingest.http.errors import answer_for, clean_result
from facestream.ingest.http.headers import NOSNIFF
from facestream.ingest.http.request_input import b64_default, parse_meta, read_body
from facestream.ingest.http.state import gateway_of, trouble_of
from facestream.ingest.publisher import BadRequest, make_event

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_JSON = [(b"content-type", b"application/json"), NOSNIFF]
log = get_logger(__name__)


class FastDetect:
    def __init__(self, app: Any, settings: GatewaySettings) -> None:
        self.app = app  # the FastAPI app: its state holds the gateway (ingest/http/state.py)
        self.settings = settings
        # Read by the server's protocol (ingest/http/timeouts.py), which sees only the app.
        self.http_timeouts = (settings.http_header_timeout_s, settings.http_body_timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/v1/detect"
            and not _is_multipart(scope)
        ):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            status, body, headers = await self._detect(scope, receive, started)
        except Exception as exc:  # the mapping FastAPI's handlers use (ingest/http/errors.py)
            answer = answer_for(exc, self.settings, trouble_of(self.app), scope["path"])
            status, body = answer.status, _error(answer.code, answer.message)
            headers = [
                (k.lower().encode(), v.encode()) for k, v in (answer.headers() or {}).items()
            ]
        headers = [*_JSON, (b"content-length", str(len(body)).encode()), *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        metrics.HTTP.labels("/v1/detect", str(status)).inc()
        metrics.HTTP_LATENCY.labels("/v1/detect").observe(time.perf_counter() - started)

    async def _detect(
        self, scope: Scope, receive: Receive, received: float
    ) -> tuple[int, bytes, list[Any]]:
        query = _query(scope)
        wait = _flag(query.get("wait", "false"))
        crops = _flag(query.get("crops", "false"), "crops")
        timeout_ms = self.settings.wait_timeout_ms
        if "timeout_ms" in query:
            raw = query["timeout_ms"]
            if not raw.isdigit() or not 1 <= int(raw) <= self.settings.max_wait_timeout_ms:
                raise BadRequest(f"timeout_ms must be 1..{self.settings.max_wait_timeout_ms}")
            timeout_ms = int(raw)
        event_id = query.get("id")
        if event_id is not None and not 0 < len(event_id) <= MAX_ID_CHARS:
            raise BadRequest(f"id must be 1..{MAX_ID_CHARS} characters")
        source = query.get("source")  # its length is checked by make_event
        meta = parse_meta(query.get("meta"))
        image = await read_body(scope, receive, self.settings.max_image_bytes)
        gateway = gateway_of(self.app)
        event = make_event(
            image,
            event_id,
            source=source,
            meta=meta,
            reply_to=gateway.reply_stream if wait else None,
            limits=self.settings.limits(),
            crops=crops,
        )
        if not wait:
            entry = await gateway.publisher.publish(event)
            accepted = {"id": event.id, "sha256": event.sha256, "entry": entry}
            return 202, orjson.dumps(await gateway.liveness.accepted_body(accepted)), []
        clock = hit_clock.HitClock(received, time.perf_counter())
        hit_clock.start(event, clock)
        try:
            result = await gateway.answer(event, timeout_ms / 1000)
        finally:
            hit_clock.stop(event)
        if result is None:
            body = orjson.dumps(
                {
                    "error": {
                        "code": "timeout",
                        "message": "no result in time; it will still be published",
                    },
                    "id": event.id,
                }
            )
            return 504, body, []
        body = orjson.dumps(clean_result(result), default=b64_default)
        if clock.hit:  # answered from the cache at the door: where its time went
            clock.observe()
        return 200, body, []


def _is_multipart(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value).startswith(b"multipart/form-data")
    return False


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _flag(raw: str, name: str = "wait") -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name} must be a boolean, not {raw!r}")


def _error(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})
