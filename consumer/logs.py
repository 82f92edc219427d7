"""structlog set-up: JSON lines in Cloud Logging's shape off a terminal, readable colour output on one.

Request id, intent and trading mode travel in contextvars, bound once per message by the dispatcher, so every
line an intent logs (ours, and the standard-library loggers of ib_insync and the Google clients) carries them.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

# Cloud Logging reads `severity`; Python's level names mostly match its LogSeverity values.
_SEVERITY = {"warn": "WARNING", "exception": "ERROR", "critical": "CRITICAL"}


def _cloud_logging_shape(_: Any, method: str, event: EventDict) -> EventDict:
    level = event.pop("level", method)
    event["severity"] = _SEVERITY.get(level, level.upper())
    event["message"] = event.pop("event", "")
    return event


def configure(log_format: str = "auto", level: str = "INFO", stream: Any = None) -> None:
    stream = stream or sys.stderr
    as_json = log_format == "json" or (log_format == "auto" and not stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: list[Processor]
    if as_json:
        renderer = [
            structlog.processors.format_exc_info,
            _cloud_logging_shape,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(colors=stream.isatty())]

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # ib_insync logs every wrapper event at INFO and the gRPC stack is chatty; keep their warnings only.
    for noisy in ("ib_insync", "google", "grpc", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)
