"""What one gateway process holds while it serves, typed: made once at start-up (the app's
lifespan, ingest/http/app.py) and read by every route, the fast path included, through
`gateway_of`, instead of untyped `app.state` attributes.

`Gateway.answer` is the one way a waiting request becomes an answer, whatever the route
(`/v1/detect?wait=true` in FastAPI or the fast path, `/v1/draw`, the drop-in
`/face-detection`): refused at once when no detector is alive, else from the cache at the door
or through the detectors (ingest/http/cache_answers.py), a new photo refused at once when it
would wait past its deadline (ingest/http/admission.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import ImageEvent
from facestream.common.log import get_logger
from facestream.common.settings import GatewaySettings
from facestream.common.streams.connection import async_client
from facestream.common.streams.types import AsyncClient
from facestream.ingest.http.admission import Admission
from facestream.ingest.http.cache_answers import CacheAnswers, answer_or_wait
from facestream.ingest.http.errors import RedisTrouble
from facestream.ingest.http.liveness import Liveness
from facestream.ingest.http.reply_router import ReplyRouter
from facestream.ingest.publisher import AsyncPublisher

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Gateway:
    client: AsyncClient
    replies: ReplyRouter
    publisher: AsyncPublisher
    liveness: Liveness
    answers: CacheAnswers
    admission: Admission

    @property
    def reply_stream(self) -> str:
        """Where this process's waiting requests are answered (the events' `reply_to`)."""
        return self.replies.stream

    async def answer(self, event: ImageEvent, timeout_s: float) -> dict[str, Any] | None:
        """The result for a waiting request, or None when `timeout_s` passes first. Raises
        NoDetector (503 `no_detector`) when no detector is alive, Overloaded (503 `overloaded`)
        when its new photo would wait past `timeout_s`: nothing is published then."""
        await self.liveness.require()
        return await answer_or_wait(
            self.answers, self.replies, self.publisher, event, timeout_s, self.admission
        )


def gateway_of(app: Starlette) -> Gateway:
    """The gateway state of a running app (set by its lifespan)."""
    gateway: Gateway = app.state.gateway
    return gateway


def trouble_of(app: Starlette) -> RedisTrouble:
    """The Redis errors seen by this process's requests (set when the app is made)."""
    trouble: RedisTrouble = app.state.trouble
    return trouble


def gateway_lifespan(
    settings: GatewaySettings, keys: Keys
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The app's lifespan: the Gateway made at start-up (the Redis client, the reply reader
    started, the publisher, liveness and cache answers), closed at shutdown."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = async_client(settings)
        replies = ReplyRouter.of(client, keys, settings)
        liveness = Liveness(settings, client)
        # Results the gateway answers from the cache name it as their producer.
        answers = CacheAnswers(settings, client, "gateway:" + replies.stream.rsplit(":", 1)[-1])
        gateway = Gateway(
            client=client,
            replies=replies,
            # The XADDs of new photos share the cache look-ups' hotline: neither call blocks.
            publisher=AsyncPublisher(settings, client, replies.stream, answers.scripts.hotline),
            liveness=liveness,
            answers=answers,
            admission=Admission(settings, client, liveness),
        )
        app.state.gateway = gateway
        await replies.start()
        log.info("gateway_ready", reply_stream=replies.stream, cache_answers=settings.gateway_hits)
        try:
            yield
        finally:
            await gateway.admission.close()
            await replies.stop()
            gateway.answers.scripts.close()  # and with it the publisher's hotline
            await client.aclose()

    return lifespan
