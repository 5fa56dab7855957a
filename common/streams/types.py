"""The Redis boundary's types: one name for each kind of client and pipeline facestream uses.

A service talks to one server or to a cluster through the same code (common/streams/connection.py
picks the class from the settings), so every signature takes the union, and mypy checks each
call against both of redis-py's classes.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.cluster
import redis.client
import redis.cluster

from facestream.common.streams.hotline import HotlinePipeline

AsyncClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
SyncClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncRedisPipeline: TypeAlias = (
    redis.asyncio.client.Pipeline | redis.asyncio.cluster.ClusterPipeline
)
# Where a look-up or write step queues its commands: a redis-py pipeline, or a hotline's
# (common/streams/hotline.py: the hot calls on one server).
AsyncPipeline: TypeAlias = AsyncRedisPipeline | HotlinePipeline
SyncPipeline: TypeAlias = redis.client.Pipeline | redis.cluster.ClusterPipeline

# A stream entry as redis-py returns it: (entry id, field -> value), both as bytes.
Entry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


class CommandQueue(Protocol):
    """What a script call needs of a pipeline: queue a raw command and count what is queued.

    Sync and asyncio pipelines, plain and cluster, all have it, so the scripts' typed wrappers
    (common/streams/scripts.py) serve every one of them."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any: ...

    def __len__(self) -> int: ...
