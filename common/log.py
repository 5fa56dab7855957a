"""structlog set-up. Only entry points call `configure`; libraries just `get_logger`."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from facestream.common.settings import ObservabilitySettings


def configure(settings: ObservabilitySettings, stream: Any = None) -> None:
    out = stream if stream is not None else sys.stderr
    level = getattr(logging, settings.log_level.upper())
    as_json = settings.log_format == "json" or (
        settings.log_format == "auto" and not (hasattr(out, "isatty") and out.isatty())
    )
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
