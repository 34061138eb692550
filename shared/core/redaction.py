"""Keep secrets out of everything that leaves the process.

Passwords are registered once (when targets are loaded); :func:`redact` replaces them in any
string, and :func:`mask_uri` hides the password part of a connection URI. The log pipeline and
the error renderer both call :func:`redact`, so a secret that slips into a message is still
masked on the way out.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
# Secrets shorter than this would mask ordinary words; such passwords are still masked in URIs.
_MIN_SECRET_LEN = 3
_URI_PASSWORD = re.compile(r"(?P<prefix>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@/\s]*)(?P<at>@)", re.I)


def register_secret(secret: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears."""
    if not secret or len(secret) < _MIN_SECRET_LEN:
        return
    with _lock:
        _secrets.update({secret, quote(secret, safe=""), unquote(secret)})


def redact(text: str) -> str:
    """Mask URI passwords and every registered secret in ``text``."""
    if not text:
        return text
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}{m.group('at')}", text)
    # Longest first, so a secret containing another one is masked whole.
    for secret in sorted(_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def mask_uri(uri: str) -> str:
    """Return ``uri`` with its password replaced by ``***`` (user, host, path kept)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username or ''}:{MASK}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
