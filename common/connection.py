"""Redis clients built from Settings (hiredis parser when installed, timeouts above BLOCK)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis

from common.settings import Settings


def _options(settings: Settings) -> dict[str, Any]:
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
    if urlsplit(settings.redis_url).scheme == "rediss":
        options["ssl_cert_reqs"] = "required"
        if settings.tls_ca_file:
            options["ssl_ca_certs"] = settings.tls_ca_file
        if settings.tls_cert_file:
            options["ssl_certfile"] = settings.tls_cert_file
            options["ssl_keyfile"] = settings.tls_key_file
    return options


def async_client(settings: Settings) -> aioredis.Redis:
    # A blocking pool: a burst of concurrent requests waits for a free connection instead of
    # failing with "Too many connections".
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.socket_timeout_s,
        **_options(settings),
    )
    return aioredis.Redis(connection_pool=pool)


def sync_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, **_options(settings))


def redact(url: str) -> str:
    """A URL safe to log: the password replaced."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
