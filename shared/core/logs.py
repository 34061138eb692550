"""One structlog pipeline for our events and for werkzeug/gunicorn/celery/kombu records.

Context (``request_id``, ``job_id``, ``target``, ``engine``) lives in structlog's contextvars,
bound at the edges (HTTP request, Celery task) and merged into every event. Every string is
passed through :func:`shared.core.redaction.redact` last, so no password reaches a log line.

Our own events are rendered by structlog and written straight to the root handler's stream
(under its lock); only libraries' records go through stdlib ``logging`` and its formatter. The
stdlib detour (two ``LogRecord``s and a formatter per line) was most of the cost of the API's
one line per request.
"""

from __future__ import annotations

import logging
import logging.config
import sys
from typing import Any

import structlog
from structlog.stdlib import NAME_TO_LEVEL

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


class _Output:
    """Where our events go: the root handler that :func:`configure_logging` installed last, and
    the lowest level it lets through. Read at every event, so a later configuration (another
    app built in the same process) applies to loggers structlog has already cached."""

    handler: logging.Handler | None = None
    min_level = logging.INFO


def _drop_below_level(_logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    if NAME_TO_LEVEL.get(method, logging.INFO) < _Output.min_level:
        raise structlog.DropEvent
    return event


class _HandlerWriter:
    """structlog's logger: writes a rendered event as one line to the root handler's stream,
    holding the handler's lock so it never interleaves with a library's record."""

    def __init__(self, name: str = "") -> None:
        self.name = name  # shown as "logger" (structlog.stdlib.add_logger_name reads it)

    def write(self, line: str) -> None:
        handler = _Output.handler
        if not isinstance(handler, logging.StreamHandler):  # logging not configured yet
            print(line, file=sys.stderr)
            return
        handler.acquire()
        try:
            handler.stream.write(line + "\n")
            handler.flush()
        finally:
            handler.release()

    debug = info = msg = warning = error = critical = exception = write


# Filled in place by configure_logging: loggers cached on first use hold this very list.
_EVENT_PROCESSORS: list[Any] = []


def configure_logging(settings: Settings) -> None:
    """Our events and stdlib's records as the same lines (JSON or console), redacted."""
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if settings.log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    finishing = [structlog.processors.format_exc_info, _redact_event, renderer]

    _EVENT_PROCESSORS[:] = [_drop_below_level, *shared_processors, *finishing]
    structlog.configure(
        processors=_EVENT_PROCESSORS,
        logger_factory=_HandlerWriter,
        # Every level passes here; _drop_below_level filters by the configured level.
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared_processors, structlog.stdlib.ExtraAdder(), _drop_color_message],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finishing],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
    _Output.handler, _Output.min_level = handler, root.level
    # Libraries log through the root handler, once.
    for name in ("werkzeug", "gunicorn.error", "gunicorn.access", "celery", "kombu", "flower"):
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
