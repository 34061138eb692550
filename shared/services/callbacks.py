"""Job callbacks: POST the finished job to the client's URL, signed, from a task of its own.

Signature: ``X-FlexDB-Signature: sha256=<hex>`` is HMAC-SHA256, keyed with
``FLEXDB_CALLBACK_SECRET``, over ``<X-FlexDB-Timestamp>.<raw body>``; receivers recompute it and
reject stale timestamps. Network errors, 429 and 5xx are retried with exponential backoff; any
other 4xx (n8n answers 404/409/410 for an execution that is gone or already resumed) is final.

Where a callback may go (:class:`CallbackPolicy`): http(s) only, no ``user:password@``, never a
link-local or cloud-metadata address (checked on the address actually connected to, after DNS,
so a name that later resolves there is refused too), and, when ``FLEXDB_CALLBACK_ALLOWED_HOSTS``
is set, only the hosts and networks it lists. A redirect is never followed: a 3xx answer is a
failed delivery (following it would carry the signed body and the secret headers elsewhere).
Through an outbound proxy (``HTTP(S)_PROXY``) the proxy resolves names; the checks on the URL
itself still apply.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from shared.core.errors import BrokerUnavailable, ValidationFailed
from shared.core.hosts import HostAllowList, IPAddress, never_contacted, parse_address
from shared.core.logs import get_logger
from shared.core.redaction import mask_query, redact
from shared.core.settings import Settings
from shared.domain.jobs import Callback, Job
from shared.domain.ports import JobRepository, TaskQueue
from shared.domain.tasks import CALLBACK_TASK
from shared.services.views import job_view

log = get_logger(__name__)
RESERVED_HEADERS = {"content-type", "content-length", "host", "user-agent"}
MAX_HEADERS = 20


class CallbackRetry(Exception):
    """This attempt failed in a way worth trying again (network, 429, 5xx)."""


@dataclass(frozen=True)
class CallbackRequest:
    url: str  # in full: kept with the headers, apart from the job record
    headers: dict[str, str]

    @property
    def shown_url(self) -> str:
        """What the job record shows: the URL with its query values masked."""
        return mask_query(self.url)


class DestinationRefused(OSError):
    """The callback must not be sent there (an OSError, so urllib hands it back as the reason)."""


@dataclass(frozen=True)
class CallbackPolicy:
    """Where callbacks may go: see the module docstring."""

    allowed: HostAllowList

    def refusal_for_url(self, url: str) -> str | None:
        """Why ``url`` is refused as it is written (no DNS), or None."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            return "is not a valid URL"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "must be an http(s) URL with a host"
        if "@" in parts.netloc:
            return "must not carry user:password@ (send credentials in callback_headers, which are kept secret)"
        address = parse_address(parts.hostname)
        if address is not None:
            return self.refusal_for_address(parts.hostname, address)
        if not self.allowed.empty and not self.allowed.admits_name(parts.hostname) and not self.allowed.networks:
            return f"names a host that is not in FLEXDB_CALLBACK_ALLOWED_HOSTS ({self.allowed.describe()})"
        return None

    def refusal_for_address(self, host: str, address: IPAddress) -> str | None:
        """Why connecting to ``address`` (what ``host`` resolved to) is refused, or None."""
        if never_contacted(address):
            return f"reaches {address}, a link-local or cloud-metadata address, which callbacks never go to"
        if self.allowed.empty or self.allowed.admits_name(host) or self.allowed.admits_address(address):
            return None
        return f"reaches {address}, which FLEXDB_CALLBACK_ALLOWED_HOSTS ({self.allowed.describe()}) does not list"


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
    refusal = CallbackPolicy(settings.callback_allowed_hosts).refusal_for_url(url)
    if refusal:
        raise ValidationFailed(f"callback_url {refusal}.", errors=[{"pointer": "/callback_url", "detail": refusal}])
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


class CallbackNotifier:
    """Called when a job ends: hands its callback to a task of its own, so whoever finishes a
    job never waits on a receiver."""

    def __init__(self, queue: TaskQueue, delay_seconds: float) -> None:
        self._queue = queue
        self._delay = delay_seconds

    def __call__(self, job: Job) -> None:
        if job.callback is None:
            return
        try:
            self._queue.enqueue(CALLBACK_TASK, job.id, delay_seconds=self._delay)
        except BrokerUnavailable as exc:
            log.warning("callback.not_queued", job_id=job.id, error=exc.message)


class CallbackService:
    def __init__(self, settings: Settings, jobs: JobRepository) -> None:
        self._settings = settings
        self._jobs = jobs
        self._policy = CallbackPolicy(settings.callback_allowed_hosts)

    def deliver(self, job_id: str, final_attempt: bool) -> None:
        """One attempt. Raises :class:`CallbackRetry` when another attempt should follow."""
        job = self._jobs.get(job_id)
        if job.callback is None or job.callback.status == "delivered":
            return
        callback: Callback = job.callback
        secret_url, secret_headers = self._jobs.callback_secrets(job_id)
        url = secret_url or callback.url
        body = json.dumps(job_view(job, self._settings.base_url)).encode()
        timestamp = str(int(time.time()))
        request = urllib.request.Request(url, data=body, method="POST")
        for name, value in secret_headers.items():
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
            # Checked again at send time: the allow-list may have changed since the submit.
            refusal = self._policy.refusal_for_url(url)
            if refusal:
                raise DestinationRefused(refusal)
            opener = _guarded_opener(self._policy, urlsplit(url).hostname or "")
            with opener.open(request, timeout=self._settings.callback_timeout_seconds) as response:
                callback.status, callback.response_status, callback.last_error = "delivered", response.status, None
        except urllib.error.HTTPError as exc:
            callback.response_status, callback.last_error = exc.code, f"HTTP {exc.code}"
            if 300 <= exc.code < 400:
                callback.last_error += ": a redirect, which callbacks never follow; give the final URL as callback_url"
            retry = exc.code == 429 or exc.code >= 500
            callback.status = "pending" if retry and not final_attempt else "failed"
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            callback.response_status = None
            if isinstance(reason, DestinationRefused):  # final: another attempt would be refused too
                callback.last_error, callback.status = f"refused: callback_url {reason}", "failed"
            else:
                callback.last_error = redact(f"{type(exc).__name__}: {reason}").replace(url, callback.url)
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


# ------------------------------------------------------------------ the guarded HTTP client


def _guarded_connect(
    policy: CallbackPolicy, url_host: str, address: tuple[str, int], timeout: Any, source_address: Any = None
) -> socket.socket:
    """``socket.create_connection`` that checks every address the name resolves to before
    connecting, and connects only to those it checked (no second lookup a DNS rebinding could
    answer differently). A proxy is the operator's own: only the never-contacted ranges apply."""
    host, port = address
    rule = policy if host.lower() == url_host.lower() else CallbackPolicy(HostAllowList())
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        refusal = rule.refusal_for_address(host, parse_address(sockaddr[0]))
        if refusal:
            raise DestinationRefused(refusal)
    last_error: OSError = OSError(f"{host} resolves to no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error


class _GuardedConnection:
    def __init__(self, *args: Any, policy: CallbackPolicy, url_host: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = functools.partial(_guarded_connect, policy, url_host)


class _GuardedHTTPConnection(_GuardedConnection, http.client.HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardedConnection, http.client.HTTPSConnection):
    pass


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: CallbackPolicy, url_host: str) -> None:
        super().__init__()
        self._connection = functools.partial(_GuardedHTTPConnection, policy=policy, url_host=url_host)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: CallbackPolicy, url_host: str) -> None:
        super().__init__()
        self._connection = functools.partial(_GuardedHTTPSConnection, policy=policy, url_host=url_host)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._context)


def _guarded_opener(policy: CallbackPolicy, url_host: str) -> urllib.request.OpenerDirector:
    """An opener with no redirect handler (a 3xx ends as an HTTPError), only http(s), and
    connections checked by :func:`_guarded_connect`. Proxies from the environment still apply."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _GuardedHTTPHandler(policy, url_host),
        _GuardedHTTPSHandler(policy, url_host),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener
