"""One structlog pipeline for our events and for werkzeug/gunicorn/celery/kombu records.

Context (``request_id``, ``job_id``, ``target``, ``engine``) lives in structlog's contextvars,
bound at the edges (HTTP request, Celery task) and merged into every event. Every string is
passed through :func:`shared.core.redaction.redact` last, so no password reaches a log line.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any

import structlog

from shared.core.redaction import redact
from shared.core.settings import Settings

get_logger = structlog.get_logger


def _redact_event(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


def _drop_color_message(_logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
    event.pop("color_message", None)
    return event


def configure_logging(settings: Settings) -> None:
    """Route stdlib and structlog through one formatter (JSON lines or console)."""
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
    ]
    renderer: Any
    if settings.log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()

    structlog.configure(
        processors=[
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    # Libraries log through the root handler, once.
    for name in ("werkzeug", "gunicorn.error", "gunicorn.access", "celery", "kombu", "flower"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
