"""The HTTP API: a Flask app factory. HTTP only; every decision lives in shared.services."""

from __future__ import annotations

import time
import uuid

import structlog
from flask import Flask, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api.auth import install_token_check
from api.errors import register_error_handlers
from api.http import BackupIdConverter, WaitSlots
from shared.core.errors import BrokerUnavailable
from api.openapi import build_spec
from api.routes import backups, docs, jobs, metrics, schedules, system, targets
from shared.core.logs import configure_logging, get_logger
from shared.core.settings import Settings, get_settings
from shared.services.container import Services, build_services

API_PREFIX = "/api/v1"
API_VERSION = "1.0.0"
log = get_logger("api")


def create_app(settings: Settings | None = None, services: Services | None = None) -> Flask:
    settings = settings or get_settings()
    configure_logging(settings)
    app = Flask(__name__)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = settings.api_max_body_bytes
    app.url_map.converters["backup"] = BackupIdConverter
    app.extensions["flexdb"] = services or build_services(settings)
    app.extensions["flexdb.wait_slots"] = WaitSlots(settings.wait_slots)
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.trusted_proxies, x_proto=settings.trusted_proxies, x_host=settings.trusted_proxies
        )
    for blueprint in (system.bp, targets.bp, backups.bp, jobs.bp, schedules.bp):
        app.register_blueprint(blueprint, url_prefix=API_PREFIX)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(docs.bp)  # /api/docs (Swagger UI) and / (redirects there)
    register_error_handlers(app)
    app.extensions["flexdb.openapi"] = build_spec(app, title="Flexible Database API", version=API_VERSION)
    _install_request_context(app)
    install_token_check(app, settings.api_token)
    _install_declared_schedules(app)
    return app


def _install_declared_schedules(app: Flask) -> None:
    """Beat installs them too; doing it here makes them visible before beat first starts."""
    try:
        app.extensions["flexdb"].schedules.sync_from_settings()
    except BrokerUnavailable as exc:  # Redis down: the API still starts and says so in /health
        log.warning("schedules.not_installed", error=exc.message)


def _install_request_context(app: Flask) -> None:
    @app.before_request
    def bind_request() -> None:
        structlog.contextvars.clear_contextvars()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if 0 < len(incoming) <= 128 and incoming.isprintable() else uuid.uuid4().hex
        g.started = time.monotonic()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def log_request(response):
        response.headers["X-Request-ID"] = g.get("request_id", "")
        log.info(
            "http.request",
            method=request.method,
            path=request.path,
            status=response.status_code,
            duration_ms=round((time.monotonic() - g.get("started", time.monotonic())) * 1000, 1),
        )
        return response
