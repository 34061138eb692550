"""Job callbacks: POST the finished job to the client's URL, signed, from a task of its own.

Signature: ``X-FlexDB-Signature: sha256=<hex>`` is HMAC-SHA256, keyed with
``FLEXDB_CALLBACK_SECRET``, over ``<X-FlexDB-Timestamp>.<raw body>``; receivers recompute it and
reject stale timestamps. Network errors, 429 and 5xx are retried with exponential backoff; any
other 4xx (n8n answers 404/409/410 for an execution that is gone or already resumed) is final.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from shared.core.errors import ValidationFailed
from shared.core.logs import get_logger
from shared.core.redaction import redact
from shared.core.settings import Settings
from shared.domain.jobs import Callback
from shared.domain.ports import JobRepository
from shared.services.views import job_view

log = get_logger(__name__)
RESERVED_HEADERS = {"content-type", "content-length", "host", "user-agent"}
MAX_HEADERS = 20


class CallbackRetry(Exception):
    """This attempt failed in a way worth trying again (network, 429, 5xx)."""


@dataclass(frozen=True)
class CallbackRequest:
    url: str
    headers: dict[str, str]


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def validate_callback(settings: Settings, url: str | None, headers: dict[str, str] | None) -> CallbackRequest | None:
    if url is None:
        if headers:
            raise ValidationFailed(
                "callback_headers needs a callback_url.", errors=[{"pointer": "/callback_headers", "detail": "needs callback_url"}]
            )
        return None
    if not settings.callback_secret:
        raise ValidationFailed(
            "Callbacks are off: set FLEXDB_CALLBACK_SECRET so that callbacks can be signed.",
            errors=[{"pointer": "/callback_url", "detail": "callbacks need FLEXDB_CALLBACK_SECRET on the server"}],
        )
    headers = dict(headers or {})
    bad = [name for name in headers if name.lower() in RESERVED_HEADERS or name.lower().startswith("x-flexdb-")]
    if bad or len(headers) > MAX_HEADERS:
        raise ValidationFailed(
            f"callback_headers may hold up to {MAX_HEADERS} headers and not set {', '.join(sorted(bad)) or 'reserved ones'}.",
            errors=[{"pointer": f"/callback_headers/{name}", "detail": "reserved header"} for name in bad]
            or [{"pointer": "/callback_headers", "detail": f"at most {MAX_HEADERS} headers"}],
        )
    return CallbackRequest(url, headers)


class CallbackService:
    def __init__(self, settings: Settings, jobs: JobRepository) -> None:
        self._settings = settings
        self._jobs = jobs

    def deliver(self, job_id: str, final_attempt: bool) -> None:
        """One attempt. Raises :class:`CallbackRetry` when another attempt should follow."""
        job = self._jobs.get(job_id)
        if job.callback is None or job.callback.status == "delivered":
            return
        callback: Callback = job.callback
        body = json.dumps(job_view(job, self._settings.base_url)).encode()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(callback.url, data=body, method="POST")
        for name, value in self._jobs.callback_headers(job_id).items():
            request.add_header(name, value)
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "flexdb-callback/1")
        request.add_header("X-FlexDB-Event", f"job.{job.status.value}")
        request.add_header("X-FlexDB-Job-Id", job.id)
        request.add_header("X-FlexDB-Timestamp", timestamp)
        request.add_header("X-FlexDB-Signature", sign(self._settings.callback_secret, timestamp, body))
        callback.attempts += 1
        retry = False
        try:
            with urllib.request.urlopen(request, timeout=self._settings.callback_timeout_seconds) as response:
                callback.status, callback.response_status, callback.last_error = "delivered", response.status, None
        except urllib.error.HTTPError as exc:
            callback.response_status, callback.last_error = exc.code, f"HTTP {exc.code}"
            retry = exc.code == 429 or exc.code >= 500
            callback.status = "pending" if retry and not final_attempt else "failed"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            callback.response_status, callback.last_error = None, redact(f"{type(exc).__name__}: {reason}")
            retry = True
            callback.status = "failed" if final_attempt else "pending"
        self._jobs.save(job)
        log.info(
            "callback.attempted",
            job_id=job.id,
            attempt=callback.attempts,
            outcome=callback.status,
            response_status=callback.response_status,
            error=callback.last_error,
        )
        if retry and not final_attempt:
            raise CallbackRetry(callback.last_error or "retry")
