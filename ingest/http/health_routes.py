"""The routes that say how the gateway is: `/metrics` (Prometheus), `/healthz` (the process
answers) and `/readyz` (Redis reachable and not out of memory, the detectors' group exists,
the reply reader runs)."""

from __future__ import annotations

import redis.exceptions
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from facestream.common.contract.keys import Keys
from facestream.common.settings import GatewaySettings
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.types import AsyncClient
from facestream.ingest.http import metrics
from facestream.ingest.http.errors import RedisTrouble, is_oom
from facestream.ingest.http.state import gateway_of


def add_health_routes(
    app: FastAPI, settings: GatewaySettings, keys: Keys, trouble: RedisTrouble
) -> None:
    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint() -> Response:
        # Several workers (settings.metrics_dir): the sum of every worker's values.
        return Response(metrics.page(settings.metrics_dir), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        client = gateway_of(app).client
        try:
            await client.ping()
            # Partition 0 stands for all: detectors create the group on every partition.
            groups = await client.xinfo_groups(keys.parts[0].images)
        except redis.exceptions.ResponseError:
            groups = []  # no images stream yet
        except REDIS_ERRORS as exc:
            return JSONResponse({"status": "not_ready", "reason": f"redis: {exc}"}, 503)
        if await out_of_memory(client, keys.parts[0].images) or trouble.oom_lately():
            return JSONResponse({"status": "not_ready", "reason": "redis: " + OOM_REASON}, 503)
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
        if not gateway_of(app).replies.healthy:
            return JSONResponse({"status": "not_ready", "reason": "reply reader not running"}, 503)
        return JSONResponse({"status": "ready"})


OOM_REASON = "out of memory (maxmemory reached): writes are refused"


async def out_of_memory(client: AsyncClient, stream: str) -> bool:
    """Would Redis refuse a write for memory now? Asked with an XADD that can never add (id
    0-0, NOMKSTREAM): Redis checks memory before running a write, so the answer is the OOM
    error or the id error, and nothing is written. The gateway's ACL role has XADD on the
    images streams, and not INFO."""
    try:
        await client.xadd(stream, {"probe": "1"}, id="0-0", nomkstream=True)
    except redis.exceptions.ResponseError as exc:
        return is_oom(exc)
    except REDIS_ERRORS:
        return False  # an outage: the ping before this one says so
    return False
