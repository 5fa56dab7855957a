"""The Redis-facing tests with every service as its own generated ACL user (`make test-acl`).

With FACESTREAM_TEST_ACL=1 each detector, gateway and sink a test starts (in-process or as a
process) logs in as the role `facestream acl` generates for it, so a command a service sends
that its role lacks fails the test that exercised it. The tests' own clients stay the default
user (they set up and inspect state as an operator would). Roles are made per key prefix (each
test has its own): `facestream-<role>-<prefix>`, with `control/acl.py`'s rules for that prefix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import redis.exceptions

from facestream.common.settings import Settings
from facestream.common.streams.connection import sync_client
from facestream.control.acl import setuser_args, user_name

ON = os.environ.get("FACESTREAM_TEST_ACL") == "1"
_SECRETS = Path(tempfile.mkdtemp(prefix="facestream-acl-"))
_made: dict[tuple[str, str], str] = {}  # (server, user) -> the role whose rules it has


def login(settings: Settings, role: str) -> dict[str, str]:
    """Settings fields that log a service of `role` in as its generated user ({} when off)."""
    if not ON:
        return {}
    # A sink's role names its group's consumer keys: one user per prefix and group.
    group = f"-{settings.sink_group}" if role.startswith("sink-") and settings.sink_group else ""
    name = f"{user_name(role)}-{settings.prefix}{group}"
    if (settings.redis_url, name) not in _made:
        admin = sync_client(Settings(redis_url=settings.redis_url))
        try:
            native = _has_native_bloom(admin)
            users = {
                args[0]: args for args in setuser_args(settings, _SECRETS, native_bloom=native)
            }
            if user_name(role) not in users and role.startswith("sink-"):
                role = "sink-jsonl"  # a test's own sink kind: a sink's rules all the same
            args = users[user_name(role)]
            _setuser(admin, [name, *args[1:]])
        except redis.exceptions.ConnectionError:
            return {}  # a test of a Redis that is not there: nothing to log in to
        finally:
            admin.close()
        _made[(settings.redis_url, name)] = role
    role = _made[(settings.redis_url, name)]
    return {"redis_username": name, "redis_password_file": str(_SECRETS / user_name(role))}


def as_role(settings: Settings, role: str) -> Settings:
    extra = login(settings, role)
    return settings.model_copy(update=extra) if extra else settings


def env_for(settings: Settings, role: str) -> dict[str, str]:
    """The same as environment variables, for a service started as a process."""
    return {f"FACESTREAM_{k.upper()}": v for k, v in login(settings, role).items()}


def role_of(args: list[str]) -> str | None:
    """The role of a service process from its command line (`-m facestream.<service>`)."""
    if "-m" not in args:
        return None
    module = args[args.index("-m") + 1]
    rest = args[args.index("-m") + 2 :]
    if module == "facestream.detector":
        return "detector"
    if module == "facestream.ingest":
        return "gateway"
    if module == "facestream.sink" and rest:
        return f"sink-{rest[0]}"
    return None


def _setuser(admin: object, args: list[str]) -> None:
    from redis.cluster import RedisCluster

    if isinstance(admin, RedisCluster):
        admin.execute_command("ACL", "SETUSER", *args, target_nodes=RedisCluster.ALL_NODES)
    else:
        admin.execute_command("ACL", "SETUSER", *args)  # type: ignore[attr-defined]


def _has_native_bloom(admin: object) -> bool:
    try:
        admin.execute_command("BF.MEXISTS", "facestream-acl-probe", "x")  # type: ignore[attr-defined]
    except Exception:
        return False
    return True
