"""Least-privilege Redis users, one per role: the ACL lines `facestream acl` prints or writes.

Each role gets the commands its code sends and the key patterns it touches, nothing more.
Commands that Lua scripts call are checked against the calling user too, so a role that runs a
script also needs what the script does. Passwords live in files (one per user, as Docker and
Kubernetes secrets are) and only their SHA-256 goes into the ACL file.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings

SINK_KINDS = ("jsonl", "webhook", "stdout")
# A cluster client also reads the slot map (CLUSTER SLOTS) at start and after a MOVED, and
# the command table (COMMAND) to find each command's keys.
_CONNECT = ["ping", "client|setname", "client|id", "info", "select", "cluster|slots", "command"]
# Running the scripts of common/lua (redis-py loads a script the server lacks).
_SCRIPTS = ["evalsha", "eval", "script|load", "script|exists"]
# What common/lua/lock_*.lua and the consumer-name claim do.
_CLAIMS = ["set", "get", "del", "pexpire", "pttl"]
_GROUP_MEMBER = [
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "xgroup|create",
    "xgroup|createconsumer",
    "xinfo|groups",
    "xinfo|consumers",
]


def user_name(role: str) -> str:
    return f"facestream-{role}"


def roles(settings: Settings, native_bloom: bool = False) -> dict[str, list[str]]:
    """user -> ACL rules (without the password)."""
    k = Keys(settings.prefix, settings.partitions)
    images = [f"~{part.images}" for part in k.parts]
    results = [f"~{part.results}" for part in k.parts]
    dlqs = [f"~{part.dlq}" for part in k.parts]
    p = settings.prefix
    bloom = ["bf.mexists", "bf.insert"] if native_bloom else []
    out = {
        # Publishers and the gateway: add images, read what backpressure needs (the group's
        # lag, the stream length) and their own reply streams; never results or the cache.
        user_name("ingest"): [
            *images,
            f"~{p}:reply:*",
            *(
                f"+{c}"
                for c in [
                    *_CONNECT,
                    "xadd",
                    "xinfo|groups",
                    "xlen",
                    "xread",
                    "pexpire",
                    "xtrim",
                    "del",
                ]
            ),
        ],
        user_name("detector"): [
            *images,
            *results,
            *dlqs,
            f"~{p}:face:*",
            f"~{p}:lock:*",
            f"~{p}:bloom:*",
            f"~{p}:consumer:*",
            f"~{p}:reply:*",
            *(
                f"+{c}"
                for c in [
                    *_CONNECT,
                    *_SCRIPTS,
                    *_CLAIMS,
                    *_GROUP_MEMBER,
                    "xadd",
                    "xdel",
                    "xtrim",
                    "hmget",
                    "hset",
                    "exists",
                    "getbit",
                    "setbit",
                    *bloom,
                ]
            ),
        ],
        # Operators see everything under the prefix and repair it; no server administration.
        user_name("ops"): [
            f"~{p}:*",
            "+@all",
            "-@dangerous",
            "+info",
            "+memory|usage",
            "+scan",
            "+type",
        ],
    }
    for kind in SINK_KINDS:
        out[user_name(f"sink-{kind}")] = [
            *results,
            *dlqs,
            f"~{p}:consumer:*",
            *(f"+{c}" for c in [*_CONNECT, *_SCRIPTS, *_CLAIMS, *_GROUP_MEMBER, "xadd"]),
        ]
    return out


def passwords(users: list[str], secrets_dir: Path) -> dict[str, str]:
    """Each user's password from secrets_dir/<user>, created (random, mode 600) if missing."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for user in users:
        path = secrets_dir / user
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
        out[user] = path.read_text().strip()
    return out


def acl_lines(
    settings: Settings, secrets_dir: Path | None, native_bloom: bool = False
) -> list[str]:
    rules = roles(settings, native_bloom)
    pw = passwords(list(rules), secrets_dir) if secrets_dir else {}
    lines = ["user default off"]
    for user, user_rules in rules.items():
        # Without secrets, no password works (resetpass): the lines document the rules.
        auth = f"#{hashlib.sha256(pw[user].encode()).hexdigest()}" if user in pw else "resetpass"
        lines.append(" ".join(["user", user, "on", auth, "resetchannels", "-@all", *user_rules]))
    return lines
