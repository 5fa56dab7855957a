"""Least-privilege Redis users, one per role: the ACL lines `facestream acl` prints or writes.

Each role gets the commands its code sends on the keys it sends them to, nothing more (Redis 7
selectors tie each command set to its key set). Commands that Lua scripts call are checked
against the calling user too, so a role that runs a script also needs what the script does.
tests/control/test_security.py checks every role against docs/reliability.md's table.

Passwords live in files (one per user, as Docker and Kubernetes secrets are) and only their
SHA-256 goes into the ACL file.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings

SINK_KINDS = ("jsonl", "webhook", "stdout")
# What every service's client sends that touches no key: PING (health), HELLO (the server's
# version, for IDMP), the connection's name and id; a cluster client also reads the slot map
# (CLUSTER SLOTS) at start and after a MOVED, and the command table (COMMAND) to find each
# command's keys. Not INFO (server internals) nor SELECT: the services use database 0.
_CONNECT = ["ping", "hello", "client|setname", "client|id", "cluster|slots", "command"]
# Calling the scripts of common/streams/lua and common/cache/lua by their SHA1 (redis-py loads
# one the server lacks).
# Never EVAL: an arbitrary script that writes and then loops cannot be killed (docs/reliability.md,
# "What each role can do", for what SCRIPT LOAD still allows).
_SCRIPTS = ["evalsha", "script|load", "script|exists"]
# The consumer-name claim and the single-flight locks: a token key (common/streams/locks.py).
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
# Whole-server operations an operator does not need and must not do by mistake: emptying the
# script cache breaks every service's next call; EVAL can freeze the server. No script or
# function of the operator's own at all: a looping one answers BUSY to every service (a
# function persists and replicates, so it comes back after a restart), and `facestream ops`
# runs none (facestream uses no functions). SCRIPT KILL stays, to stop another's script.
_OPS_DENIED = [
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "script|load",
    "script|flush",
    "function",
    "fcall",
    "fcall_ro",
]


def user_name(role: str) -> str:
    return f"facestream-{role}"


def _selector(keys: list[str], commands: list[str]) -> str:
    """One ACL selector (Redis >= 7): these commands on these keys only. A user's root rules
    grant commands on all of its keys; selectors tie each command set to its own key set."""
    return "(" + " ".join([*keys, *(f"+{c}" for c in commands)]) + ")"


def roles(settings: Settings, native_bloom: bool = False) -> dict[str, list[str]]:
    """user -> ACL rules (without the password). Key permissions: `~` read and write, `%R~`
    read only, `%W~` write only. Commands inside scripts are checked against the caller's
    rules too, so each selector also covers what the role's scripts do with those keys."""
    k = Keys(settings.prefix, settings.partitions)
    images = [f"~{part.images}" for part in k.parts]
    results = [f"~{part.results}" for part in k.parts]
    dlqs = [f"~{part.dlq}" for part in k.parts]
    p = settings.prefix
    connect = [f"+{c}" for c in _CONNECT]
    # BF.EXISTS: lookup_or_lock.lua asks the filter itself on one server.
    bloom = ["bf.exists", "bf.mexists", "bf.insert"] if native_bloom else []
    detector_claim = f"~{k.consumer_claim(settings.detector_group, '*')}"
    cache = [f"~{p}:face:*", f"~{p}:lock:*"]
    gateway_bloom = ["bf.exists", "bf.mexists"] if native_bloom else []
    # Publishers: add to the images stream (write only: they cannot read other publishers'
    # images, nor trim, delete or expire queued work), read the lag and the stream's size
    # (backpressure) and which detectors hold its pending entries (the summary of XPENDING:
    # the gateway's admission control), read reply streams (names carry 128 random bits), and
    # read which detectors are alive (the CLI's check before publishing, the gateway's status
    # and the model whose cache it answers from: common/streams/serving.py).
    ingest = [
        *connect,
        _selector([f"%W{i}" for i in images], ["xadd"]),
        _selector([f"%R{i}" for i in images], ["xinfo|groups", "xlen", "memory|usage", "xpending"]),
        _selector([f"%R~{p}:reply:gw-*"], ["xread", "memory|usage"]),
        _selector([f"%R~{p}:serving:*"], ["hgetall"]),
    ]
    out = {
        user_name("ingest"): ingest,
        # The gateway: a publisher that also answers cache hits itself
        # (ingest/http/cache_answers.py). It reads the cache, the Bloom filter and which model
        # the detectors serve, and adds the results of its hits; it writes no cache entry, lock
        # or filter bit.
        user_name("gateway"): [
            *ingest,
            _selector([f"%W{r}" for r in results], ["xadd"]),
            _selector([f"~{p}:face:*", f"~{p}:bloom:*"], ["hmget", "getbit", *gateway_bloom]),
            # cached_answers.lua reads the cache and the filter and adds hits' results.
            _selector([f"~{p}:face:*", f"~{p}:bloom:*", *results], _SCRIPTS),
        ],
        user_name("detector"): [
            *connect,
            _selector(
                images, [*_GROUP_MEMBER, "xdel", "xlen"]
            ),  # read, answer, delete once answered
            _selector(results, ["xadd", "xtrim", "xinfo|groups", "xpending", "xlen"]),
            _selector(dlqs, ["xadd", "xlen"]),
            _selector(cache, ["hmget", "hset", "exists", *_CLAIMS]),
            _selector([f"~{p}:bloom:*"], ["getbit", "setbit", "pexpire", "pttl", *bloom]),
            _selector([detector_claim], _CLAIMS),
            # The model it serves, told to the gateways (common/streams/serving.py).
            _selector([f"~{p}:serving:{settings.detector_group}"], ["hgetall", "hset", "hdel"]),
            _selector([f"%W~{p}:reply:*"], ["xadd", "pexpire"]),  # replies, never reads
            _selector(
                [*images, *results, *dlqs, *cache, f"~{p}:bloom:*", detector_claim], _SCRIPTS
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
            *(f"-{c}" for c in _OPS_DENIED),
        ],
    }
    for kind in SINK_KINDS:
        claim = f"~{k.consumer_claim(settings.sink_group_of(kind), '*')}"
        out[user_name(f"sink-{kind}")] = [
            *connect,
            # Read and acknowledge results; never add one (every other group would read it).
            _selector(results, _GROUP_MEMBER),
            _selector([f"%W{d}" for d in dlqs], ["xadd"]),  # dead letters in, nothing out
            _selector([claim], _CLAIMS),  # its own group's names only
            # EVALSHA's keys count as read and written; what the script does with them is
            # checked command by command against the selectors above.
            _selector([*results, *dlqs, claim], _SCRIPTS),
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


def setuser_args(
    settings: Settings, secrets_dir: Path | None, native_bloom: bool = False
) -> list[list[str]]:
    """Each user's `ACL SETUSER` arguments (a selector is one argument), for rolling the users
    out on a running server or every node of a cluster; the default user is not among them."""
    rules = roles(settings, native_bloom)
    pw = passwords(list(rules), secrets_dir) if secrets_dir else {}
    out = []
    for user, user_rules in rules.items():
        # Without secrets, no password works (resetpass): the lines document the rules.
        auth = f"#{hashlib.sha256(pw[user].encode()).hexdigest()}" if user in pw else "resetpass"
        out.append([user, "reset", "on", auth, "resetchannels", "-@all", *user_rules])
    return out


def acl_lines(
    settings: Settings, secrets_dir: Path | None, native_bloom: bool = False
) -> list[str]:
    lines = ["user default off"]
    for name, *rules in setuser_args(settings, secrets_dir, native_bloom):
        lines.append(" ".join(["user", name, *(r for r in rules if r != "reset")]))
    return lines
