"""What a Redis that is away, or a cluster that is reshaping, raises to facestream's clients.

redis-py's errors are `RedisError`s, except on a cluster the client-side
`RedisClusterException` family: e.g. `SlotNotCoveredError` while a failover leaves a slot with
no primary in the client's map. Services treat both as an outage (back off, keep what is
pending, carry on), never as a crash.
"""

from __future__ import annotations

import redis.exceptions

REDIS_ERRORS: tuple[type[Exception], ...] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
)

# Worth an immediate retry of the same step (a moment later the connection, the node or the
# slot map is back): connection loss, timeouts, and a cluster in the middle of a failover.
TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


def connection_race(exc: BaseException) -> bool:
    """redis-py's asyncio connections can leak the transport's own error when a connection
    that another task (or the peer) closed is written to: AttributeError or TypeError from
    inside `StreamWriter.writelines` instead of a ConnectionError (redis-py issue #4287, seen
    here in a cluster failover test). That is a lost connection, so an outage, not a bug of
    ours: true only when the error was raised inside redis-py's connection code."""
    if not isinstance(exc, AttributeError | TypeError):
        return False
    tb = exc.__traceback__
    while tb is not None:
        path = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if path.endswith("redis/asyncio/connection.py"):
            return True
        tb = tb.tb_next
    return False
