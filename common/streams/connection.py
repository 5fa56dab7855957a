"""Redis clients built from connection settings (hiredis, timeouts above BLOCK).

One server or a Redis Cluster, chosen by settings alone (`redis_cluster` or a
`redis+cluster://` URL); callers get a client with the same commands either way.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from facestream.common.settings import ConnectionSettings, MemberSettings
from facestream.common.streams.hotline import Hotline
from facestream.common.streams.types import AsyncClient, AsyncPipeline, SyncClient


def _options(settings: ConnectionSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_connect_timeout_s,
        "socket_keepalive": True,
        "health_check_interval": 30,
        "client_name": f"facestream:{settings.consumer}",
    }
    if settings.redis_username:
        options["username"] = settings.redis_username
    secret = settings.redis_secret()
    if secret:
        options["password"] = secret
    if urlsplit(settings.redis_url).scheme.startswith("rediss"):
        options["ssl_cert_reqs"] = "required"
        if settings.tls_ca_file:
            options["ssl_ca_certs"] = settings.tls_ca_file
        if settings.tls_cert_file:
            options["ssl_certfile"] = settings.tls_cert_file
            options["ssl_keyfile"] = settings.tls_key_file
    return options


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """Seed nodes (host, port) and URL credentials of a cluster URL. redis-py's own URL parser
    takes one host; a comma-separated list lets a client start while one seed is down."""
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a cluster has only database 0: {redact(url)}")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = port, "6379"
        seeds.append((host.strip("[]"), int(port)))
    creds: dict[str, Any] = {}
    if userinfo:
        user, _, password = userinfo.partition(":")
        if user:
            creds["username"] = unquote(user)
        if password:
            creds["password"] = unquote(password)
    if parts.scheme.startswith("rediss"):
        creds["ssl"] = True
    return seeds, creds


def pool_size(settings: ConnectionSettings) -> int:
    # Detectors block one connection per reader (partitions x read lanes) in XREADGROUP, sinks
    # one per partition: room for those and for the writes, lock extensions and housekeeping.
    readers = settings.read_lanes if isinstance(settings, MemberSettings) else 1
    return max(settings.redis_max_connections, settings.partitions * readers + 16)


def _cluster_options(settings: ConnectionSettings) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    seeds, creds = cluster_seeds(settings.redis_url)
    options = creds | _options(settings)  # settings' credentials win over the URL's
    options["max_connections"] = pool_size(settings)  # per node
    return seeds, options


def async_client(settings: ConnectionSettings) -> AsyncClient:
    """An asyncio client: `redis.asyncio.Redis`, or `RedisCluster` on a cluster."""
    if settings.cluster:
        seeds, options = _cluster_options(settings)
        node: Any = aiocluster.ClusterNode  # untyped in redis-py
        nodes = [node(host, port) for host, port in seeds]
        return aiocluster.RedisCluster(startup_nodes=nodes, **options)
    # A blocking pool: a burst of concurrent requests waits for a free connection instead of
    # failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=pool_size(settings),
        timeout=settings.socket_timeout_s,
        **_options(settings),
    )
    return aioredis.Redis(connection_pool=pool)


def sync_client(settings: ConnectionSettings) -> SyncClient:
    """A blocking client: `redis.Redis`, or `redis.cluster.RedisCluster` on a cluster."""
    if settings.cluster:
        seeds, options = _cluster_options(settings)
        node: Any = redis.cluster.ClusterNode  # untyped in redis-py
        nodes = [node(host, port) for host, port in seeds]
        return redis.cluster.RedisCluster(startup_nodes=nodes, **options)
    return redis.Redis.from_url(settings.redis_url, **_options(settings))


def hotline(settings: ConnectionSettings, client: AsyncClient) -> Hotline | None:
    """The hot calls' own connection to `client`'s server, where settings and server allow
    (common/streams/hotline.py)."""
    return Hotline.of(client) if settings.redis_hotline and not settings.cluster else None


def pipeline(client: AsyncClient, hotline: Hotline | None) -> AsyncPipeline:
    """A non-transactional pipeline: the hotline's where there is one, else the client's."""
    return client.pipeline(transaction=False) if hotline is None else hotline.pipeline()


def redact(url: str) -> str:
    """A URL safe to log: the password replaced."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
