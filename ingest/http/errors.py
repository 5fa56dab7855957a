"""Every error the gateway answers has one shape, `{"error": {"code", "message"}}`, whichever
layer raised it: our routes, FastAPI's validation, Starlette's routing (404, 405), the ASGI
fast path (ingest/http/fastpath.py), Redis. Messages are worded for people: no Python object reprs
(Pillow says `cannot identify image file <_io.BytesIO object at 0x...>`)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import redis.exceptions
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import Request

from facestream.common.contract.schema import without_reprs
from facestream.common.log import get_logger
from facestream.common.settings import GatewaySettings
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.ingest.http.request_input import error
from facestream.ingest.publisher import PublishError

if TYPE_CHECKING:
    from fastapi import FastAPI

log = get_logger(__name__)

_UNIDENTIFIED = re.compile(r"cannot identify image file\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")
_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}
UNREACHABLE = "the queue is unreachable; retry later"
OUT_OF_MEMORY = (
    "Redis is out of memory (maxmemory reached, writes refused): nothing was queued; "
    "retry later, or ask the operator to raise maxmemory or drain the streams"
)
OOM_REMEMBERED_S = 5.0  # how long /readyz reports an OOM answer seen on a request


def readable(message: str) -> str:
    """`message` without Python object reprs."""
    message = _UNIDENTIFIED.sub("the bytes are not an image Pillow can read", message)
    return without_reprs(message)


def clean_result(result: dict[str, Any]) -> dict[str, Any]:
    """An error result's message without reprs, in place (a detector words Pillow's errors
    with them; the answer is the result as published otherwise)."""
    problem = result.get("error")
    if isinstance(problem, dict) and isinstance(problem.get("message"), str):
        problem["message"] = readable(problem["message"])
    return result


def is_oom(exc: BaseException) -> bool:
    """Redis refused a write for lack of memory (maxmemory with noeviction, or nothing left
    to evict). In a script or a pipeline redis-py may pass it on as a plain ResponseError."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and "OOM command not allowed" in str(exc)
    )


class RedisTrouble:
    """What to answer for a Redis error, and whether one said out-of-memory lately (the
    gateway's ACL role may not run INFO, so /readyz also remembers what requests saw)."""

    def __init__(self) -> None:
        self.oom_at = float("-inf")

    def answer(self, exc: BaseException) -> tuple[str, str]:
        """(code, message) for a 503."""
        if is_oom(exc):
            self.oom_at = time.monotonic()
            log.warning("redis_out_of_memory", error=str(exc)[:300])
            return "redis_oom", OUT_OF_MEMORY
        log.warning("redis_unavailable", error=str(exc)[:300] or type(exc).__name__)
        return "unavailable", UNREACHABLE

    def oom_lately(self) -> bool:
        return time.monotonic() - self.oom_at < OOM_REMEMBERED_S


@dataclass(frozen=True, slots=True)
class ErrorAnswer:
    """What the gateway answers for an exception a request raised, on every route: the
    FastAPI handlers, the fast path and the drop-in route (which words it in its own shape)
    all ask `answer_for`."""

    status: int
    code: str
    message: str
    retry_after_s: int | None = None

    def headers(self) -> dict[str, str] | None:
        return None if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}


def answer_for(
    exc: BaseException, settings: GatewaySettings, trouble: RedisTrouble, path: str
) -> ErrorAnswer:
    """The one mapping: refusals at the door keep their status and code (503s say when to
    retry), Redis errors are 503 `unavailable` or `redis_oom`, anything else is a bug: logged
    with its traceback and answered 500 `internal` without its details."""
    if isinstance(exc, PublishError):
        retry = getattr(exc, "retry_after_s", settings.retry_after_s) if exc.status == 503 else None
        return ErrorAnswer(exc.status, exc.code, readable(exc.message), retry)
    if isinstance(exc, REDIS_ERRORS):
        code, message = trouble.answer(exc)
        return ErrorAnswer(503, code, message, settings.retry_after_s)
    log.error("request_failed", path=path, exc_info=exc)
    return ErrorAnswer(500, "internal", "internal error; it was logged")


def http_code(status: int) -> str:
    """A status's error code: its reason phrase in snake case where we name none."""
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def add_error_handlers(app: FastAPI, settings: GatewaySettings, trouble: RedisTrouble) -> None:
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        answer = answer_for(exc, settings, trouble, request.url.path)
        return error(answer.status, answer.code, answer.message, headers=answer.headers())

    # Starlette's last resort answers plain text; ours keeps the shape and says no more.
    kinds: tuple[type[Exception], ...] = (PublishError, *REDIS_ERRORS, Exception)
    for kind in kinds:
        app.add_exception_handler(kind, on_error)

    @app.exception_handler(RequestValidationError)
    async def on_bad_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        return error(400, "bad_request", readable(problems))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # Starlette's routing (404, 405 with its Allow header) and anything raising one.
        if exc.status_code == 404:
            message = f"no such path: {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        else:
            message = readable(str(exc.detail))
        return error(exc.status_code, http_code(exc.status_code), message, headers=exc.headers)
