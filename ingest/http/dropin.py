"""`POST /face-detection`: the HTTP API of the Flask + Redis service facestream replaces, so
its clients switch by changing a URL. It goes through the same stream, cache, lock and detector
as `/v1/detect?wait=true`; only the request and answer shapes are the old ones."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse

from facestream.common.settings import GatewaySettings
from facestream.ingest.http.errors import answer_for, readable
from facestream.ingest.http.request_input import read_request
from facestream.ingest.http.state import gateway_of, trouble_of
from facestream.ingest.publisher import make_event

if TYPE_CHECKING:
    from fastapi import FastAPI

_OLD_ANSWER = {
    "type": "object",
    "properties": {
        "boxes": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        },
        "keypoints": {
            "type": "array",
            "items": {"type": "array", "items": {"type": "number"}, "minItems": 10, "maxItems": 10},
        },
        "scores": {"type": "array", "items": {"type": "number"}},
    },
}
_OLD_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}


def old_shape(result: dict[str, Any]) -> dict[str, list[Any]]:
    """The old service's answer: boxes, 10 keypoint numbers per face, scores."""
    faces = result.get("faces") or []
    return {
        "boxes": [f["box"] for f in faces],
        "keypoints": [[v for point in f["kps"] for v in point] for f in faces],
        "scores": [f["score"] for f in faces],
    }


def old_error(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s else None
    return JSONResponse({"error": message}, status, headers)


def add_dropin_routes(app: FastAPI, settings: GatewaySettings) -> None:

    @app.post(
        "/face-detection",
        tags=["compatibility"],
        summary="Compatibility endpoint of the Flask service facestream replaces",
        description="Multipart field `image` (or the raw body). Answers "
        '`{"boxes": [[x1, y1, x2, y2]], "keypoints": [[10 numbers]], "scores": []}` in '
        'original-image pixels, or `{"error": "..."}` with 400 (bad request, not an image, '
        "too large, undecodable), 503 (no detector running, overloaded or Redis unavailable; "
        "Retry-After) or 504 (no answer in time). "
        "Same stream, cache, lock and detector as /v1/detect?wait=true.",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image"],
                            "properties": {"image": {"type": "string", "format": "binary"}},
                        }
                    },
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
        responses={
            200: {
                "description": "the faces",
                "content": {"application/json": {"schema": _OLD_ANSWER}},
            },
            400: {
                "description": "bad request",
                "content": {"application/json": {"schema": _OLD_ERROR}},
            },
            503: {
                "description": "no detector running, overloaded, or Redis unavailable",
                "content": {"application/json": {"schema": _OLD_ERROR}},
            },
            504: {
                "description": "no answer in time",
                "content": {"application/json": {"schema": _OLD_ERROR}},
            },
        },
    )
    async def face_detection(request: Request) -> JSONResponse:
        try:
            image, _ = await read_request(request, settings)
            gateway = gateway_of(app)
            event = make_event(image, reply_to=gateway.reply_stream, limits=settings.limits())
            result = await gateway.answer(event, settings.wait_timeout_ms / 1000)
        except Exception as exc:  # the gateway's one mapping, worded in the old shape
            answer = answer_for(exc, settings, trouble_of(app), request.url.path)
            # The old service answered 400 for every refusal of the input itself.
            status = answer.status if answer.status >= 500 else 400
            return old_error(status, answer.message, answer.retry_after_s)
        if result is None:
            return old_error(504, "timeout")
        if "error" in result:
            return old_error(400, readable(str(result["error"]["message"])))
        return JSONResponse(old_shape(result))
