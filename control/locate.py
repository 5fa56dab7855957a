"""Which Redis a client command talks to, said before it talks to it.

A command's Redis comes from FACESTREAM_REDIS_URL, else from a running `facestream up` in the
stack directory (common/stackfile.py), else the default URL; the default is used only when
the Redis there holds facestream's keys, because a Redis with none of them (another
application's, on the usual port) would take published images and never answer them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from facestream.common import stackfile
from facestream.common.contract.keys import Keys
from facestream.common.settings import Settings
from facestream.common.streams.connection import redact
from facestream.common.streams.errors import REDIS_ERRORS
from facestream.common.streams.types import SyncClient


class NotFound(RuntimeError):
    """No facestream to talk to: the message says why and what to do."""


def add_dir_option(parser: argparse.ArgumentParser) -> None:
    """`--dir`: which running `facestream up` to talk to when FACESTREAM_REDIS_URL is unset."""
    parser.add_argument(
        "--dir",
        default=None,
        help="the directory of a running `facestream up` to talk to when FACESTREAM_REDIS_URL "
        "is unset (default .facestream under the current directory; FACESTREAM_STACK_DIR)",
    )


def running_stack(settings: Settings) -> stackfile.StackFile | None:
    """The running `facestream up` these settings found their Redis through, if any."""
    return stackfile.read(Path(settings.stack_file).parent) if settings.stack_file else None


def describe(settings: Settings) -> str:
    """The one line each client command prints on stderr."""
    return f"facestream: redis {redact(settings.redis_url)} ({settings.redis_origin})"


def holds_facestream(settings: Settings, client: SyncClient) -> bool:
    """Any of the keys a facestream deployment has once a detector or publisher ran. One key
    per call: on a cluster they live in different slots."""
    keys = Keys(settings.prefix, settings.partitions)
    names = [keys.serving(settings.detector_group)]
    for part in keys.parts:
        names += [part.images, part.results]
    return any(client.exists(name) for name in names)


def check(settings: Settings, client: SyncClient) -> None:
    """Raise NotFound when the Redis is unreachable, or when it is only the default URL and
    holds no facestream keys."""
    url = redact(settings.redis_url)
    explicit = "redis_url" in settings.model_fields_set
    try:
        if explicit or holds_facestream(settings, client):
            client.ping()
            return
    except REDIS_ERRORS as exc:
        if explicit:
            raise NotFound(
                f"cannot reach Redis at {url} ({settings.redis_origin}): {exc}"
            ) from None
        raise NotFound(_nothing_here(settings, f"nothing answers at {url}")) from None
    raise NotFound(
        _nothing_here(
            settings, f"the Redis at {url} holds no facestream keys (prefix {settings.prefix!r})"
        )
    )


def _nothing_here(settings: Settings, what: str) -> str:
    return (
        f"no facestream found: FACESTREAM_REDIS_URL is unset, no `facestream up` is running "
        f"in {settings.stack_dir}/, and {what}.\n"
        "Start a stack here with `facestream up` (then run this from the same directory, or "
        "pass --dir), or set FACESTREAM_REDIS_URL to facestream's Redis."
    )
