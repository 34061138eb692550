"""Keep secrets out of everything that leaves the process.

Passwords are registered once (when targets are loaded); :func:`redact` replaces them in any
string, and :func:`mask_uri` hides the password part of a connection URI. The log pipeline and
the error renderer both call :func:`redact`, so a secret that slips into a message is still
masked on the way out.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

MASK = "***"
_lock = threading.Lock()
_secrets: set[str] = set()
# The same, longest first (so a secret containing another one is masked whole), sorted once
# here rather than for every string of every log line.
_secrets_longest_first: tuple[str, ...] = ()
# Secrets shorter than this would mask ordinary words; such passwords are still masked in URIs.
_MIN_SECRET_LEN = 3
_URI_PASSWORD = re.compile(r"(?P<prefix>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^@/\s]*)(?P<at>@)", re.I)
# Query options that carry a secret: libpq takes ?password= and ?sslpassword=; any option named
# like a password, secret or token is treated the same, so a driver added later is covered too.
_SECRET_NAME = r"[a-z_]*(?:password|passwd|pwd|secret|token)[a-z_]*"
_SECRET_OPTION = re.compile(rf"(?P<prefix>[?&]{_SECRET_NAME}=)(?P<value>[^&#\s'\"]*)", re.IGNORECASE)
# ... and "NAME:value" pairs inside an option (MongoDB's authMechanismProperties=AWS_SESSION_TOKEN:...).
_SECRET_PAIR = re.compile(
    rf"(?P<prefix>(?<![a-z_]){_SECRET_NAME}(?::|%3A))(?P<value>[^,&#\s'\"]*?)(?=,|%2C|&|#|\s|$)", re.IGNORECASE
)
# ... and libpq's key=value connection strings ("host=db password=x").
_CONNINFO_PASSWORD = re.compile(
    r"(?P<prefix>(?<![a-z_])(?:ssl)?password\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s'\"&]*)", re.IGNORECASE
)
# What every one of the patterns above needs in a string to match at all: "://" or a secret's
# name. One search instead of four substitutions for the strings that hold neither.
_MAY_HOLD_PATTERN = re.compile(r"://|passw|pwd|secret|token", re.IGNORECASE)


def register_secret(secret: str | None) -> None:
    """Remember a secret so that :func:`redact` masks it wherever it appears."""
    if not secret or len(secret) < _MIN_SECRET_LEN:
        return
    global _secrets_longest_first
    with _lock:
        _secrets.update({secret, quote(secret, safe=""), unquote(secret)})
        _secrets_longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """Mask URI passwords and every registered secret in ``text``."""
    if not text:
        return text
    if _MAY_HOLD_PATTERN.search(text):  # most strings (every field of most log lines) cannot
        text = _URI_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}{m.group('at')}", text)
        text = _mask_secret_options(text)
        text = _CONNINFO_PASSWORD.sub(_masked, text)
    for secret in _secrets_longest_first:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _masked(match: re.Match[str]) -> str:
    return match.group("prefix") + MASK if match.group("value") else match.group(0)


def _mask_secret_options(text: str) -> str:
    return _SECRET_PAIR.sub(_masked, _SECRET_OPTION.sub(_masked, text))


def uri_secrets(uri: str) -> list[str]:
    """Every secret a connection URI carries: the user-info password and the values of secret
    query options (as written and decoded), for :func:`register_secret`."""
    try:
        parts = urlsplit(uri)
        password, query = parts.password, parts.query
    except ValueError:  # e.g. an unclosed "[": what the patterns find is all there is
        match = _URI_PASSWORD.match(uri)
        password, query = (match.group("pw") if match else None), uri.partition("?")[2]
    found = [password] if password else []
    found += [m.group("value") for pattern in (_SECRET_OPTION, _SECRET_PAIR) for m in pattern.finditer("?" + query)]
    found += [unquote(value) for value in found]
    pairs = parse_qsl(query, keep_blank_values=True)
    found += [value for key, value in pairs if re.fullmatch(_SECRET_NAME, key, re.IGNORECASE)]
    return [value for value in dict.fromkeys(found) if value]


def mask_uri(uri: str) -> str:
    """Return ``uri`` with its password and secret query options replaced by ``***`` (user,
    host, path and the other options kept)."""
    # Edited as text, not rebuilt with urlunsplit: that drops "//" from "postgresql:///db" and
    # cannot hold libpq's "host1:5432,host2:5433".
    masked = _URI_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}{m.group('at')}", uri, count=1)
    head, mark, query = masked.partition("?")
    return head + mark + _mask_secret_options(mark + query)[1:] if mark else head


def mask_query(url: str) -> str:
    """Return ``url`` with every query value (and any fragment) replaced by ``***``: webhook
    URLs carry their tokens there (``?token=``, ``?signature=``)."""
    parts = urlsplit(url)
    if not parts.query and not parts.fragment:
        return url
    # A part without "=" may be a bare token itself: masked whole.
    query = "&".join(f"{part.split('=', 1)[0]}={MASK}" if "=" in part else MASK for part in parts.query.split("&") if part)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, MASK if parts.fragment else ""))
