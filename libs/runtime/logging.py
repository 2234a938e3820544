"""structlog: JSON lines off a TTY, a console renderer on one; contextvars carry cluster and event ids."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure_logging(
    level: str = "info", log_format: Literal["auto", "json", "console"] = "auto", *, service: str | None = None
) -> None:
    as_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=_current_stderr_logger,
        cache_logger_on_first_use=False,
    )
    if service:
        structlog.contextvars.bind_contextvars(service=service)


def _current_stderr_logger(*_args: object) -> structlog.PrintLogger:
    # sys.stderr as it is now, not as it was when logging was configured: whoever swapped it since
    # (pytest's capture per test, closed after it) would otherwise get writes to a closed file.
    return structlog.PrintLogger(file=sys.stderr)
