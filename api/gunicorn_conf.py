"""Gunicorn settings for the API: ``gunicorn --config python:api.gunicorn_conf api.wsgi:app``.

``make run`` (scripts/run_stack.py) and the Docker image start the API with exactly that
command, so everything here comes from the ``FLEXDB_*`` settings rather than from flags.

Besides address, processes and threads, it takes ``FLEXDB_API_TIMEOUT_SECONDS`` (a worker
silent for longer is restarted) and ``FLEXDB_STOP_GRACE_SECONDS`` from the settings.
"""

from __future__ import annotations

import json
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.glogging import Logger

from shared.core.logs import configure_logging
from shared.core.redaction import redact
from shared.core.settings import get_settings

_settings = get_settings()


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class StructlogLogger(Logger):
    """Gunicorn's logger with its records sent through our structlog pipeline.

    Gunicorn's ``Logger.setup`` gives ``gunicorn.error`` a plain-text handler of its own and
    stops propagation; :func:`configure_logging` undoes exactly that, so the arbiter's and the
    workers' lines come out as the same JSON (or console) events as the app's, redacted.
    """

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        configure_logging(_settings)


bind = [_bind_address(_settings.api_host, _settings.api_port)]
workers = _settings.api_workers
threads = _settings.api_threads
worker_class = "gthread"
timeout = _settings.api_timeout_seconds
# One second less than whoever stops us (the supervisor, docker stop) waits before killing.
graceful_timeout = max(1, _settings.stop_grace_seconds - 1)

# The app logs every request itself ("http.request" with request_id and duration).
accesslog = None
errorlog = "-"
loglevel = _settings.log_level.lower()
logger_class = StructlogLogger

# Gunicorn 25.1+ opens a control socket at $XDG_RUNTIME_DIR/gunicorn.ctl or
# $HOME/.gunicorn/gunicorn.ctl by default: two instances on one machine (tests, a second
# checkout, the service itself) would fight over it. Nothing here uses gunicornc.
control_socket_disable = True


# Gunicorn itself refuses some requests before the app sees them (a request line over 4094
# bytes: 414, oversized headers: 431, a malformed request: 400) and writes an HTML page for
# them. The API promises application/problem+json for every error, so each worker writes
# those refusals as problems too (the OpenAPI document lists 414 and 431 with every route).
_PROBLEM_CODES = {500: "internal_error"}


def _problem_error_page(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    code = _PROBLEM_CODES.get(status_int) or "_".join(reason.lower().replace("-", " ").split())
    body = json.dumps(
        {
            "type": f"urn:flexdb:problem:{code}",
            "title": reason,
            "status": status_int,
            "detail": redact(mesg or reason),
            "code": code,
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    gunicorn_util.write_nonblock(sock, head.encode("latin-1") + body)


def post_worker_init(worker: Any) -> None:
    gunicorn_util.write_error = _problem_error_page
