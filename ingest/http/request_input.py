"""What the gateway reads from a request: the image (raw body or multipart, refused past the
limit while reading) and the optional fields. Shared by the FastAPI routes, the drop-in route and
the ASGI fast path, so every door reads the same way."""

from __future__ import annotations

import base64
import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive, Scope

from facestream.common.contract.schema import MAX_META_DEPTH, ImageEvent
from facestream.common.settings import GatewaySettings
from facestream.ingest.publisher import BadRequest, ImageTooLarge, PublishError, make_event

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
REQUEST_BODY = {
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


CROPS_DOC = (
    "also return each face as a 112x112 JPEG aligned to the five-point template (base64 in `crop`)"
)


def error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR}}}


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    return JSONResponse({"error": {"code": code, "message": message}, **extra}, status, headers)


def b64_default(value: object) -> str:
    """bin values (possible inside `meta`) as base64, like `schema.jsonable`."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


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


def limited(receive: Receive, limit: int) -> Receive:
    """`receive` that refuses (ImageTooLarge) once more than `limit` body bytes came in."""
    seen = 0

    async def counting() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise ImageTooLarge(f"the body is over the limit of {limit} bytes")
        return message

    return counting


async def read_request(
    request: Request, settings: GatewaySettings
) -> tuple[bytes, dict[str, str | None]]:
    """The image bytes and the optional fields, from a raw body or a multipart form."""
    limit = settings.max_image_bytes
    fields: dict[str, str | None] = {}
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
            raise ImageTooLarge(f"the body is {length} bytes; the limit is {limit}")
        # A chunked upload has no length to check first: the parser would spool all of it to a
        # temporary file before the image's size is known, so count the bytes as they come.
        counted = Request(request.scope, limited(request.receive, limit + MULTIPART_OVERHEAD))
        try:
            form = await counted.form(max_files=1, max_fields=8, max_part_size=64 * 1024)
        except PublishError:
            raise
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
    except (ValueError, RecursionError):  # RecursionError: nested ~1000 deep
        raise BadRequest(f"meta must be a JSON object (at most {MAX_META_DEPTH} deep)") from None
    if not isinstance(meta, dict):
        raise BadRequest("meta must be a JSON object")
    return meta


def form_event(
    image: bytes,
    form: dict[str, str | None],
    settings: GatewaySettings,
    *,
    event_id: str | None,
    source: str | None,
    meta: str | None,
    reply_to: str | None,
    crops: bool = False,
) -> ImageEvent:
    """The event of a FastAPI route's request: a multipart form's fields win over the query's."""
    return make_event(
        image,
        form.get("id") or event_id,
        source=form.get("source") or source,
        meta=parse_meta(form.get("meta") or meta),
        reply_to=reply_to,
        limits=settings.limits(),
        crops=crops,
    )
