"""Optional bearer-token authentication for the API (``FLEXDB_API_TOKEN``).

Health stays open so load balancers and container health checks need no secret; without the
token it shows statuses only.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from shared.core.errors import Unauthorized

OPEN_ENDPOINTS = {"system.health", "static"}


def install_token_check(app: Flask, token: str) -> None:
    if not token:
        return

    @app.before_request
    def require_token() -> None:
        if request.endpoint in OPEN_ENDPOINTS:
            return
        if not carries_token(token):
            raise Unauthorized("Send the API token as 'Authorization: Bearer <token>' (FLEXDB_API_TOKEN).")


def carries_token(token: str) -> bool:
    """True when the current request is authenticated: no token is set, or it carries it."""
    if not token:
        return True
    given = request.headers.get("Authorization", "").encode()
    return hmac.compare_digest(given, f"Bearer {token}".encode())
