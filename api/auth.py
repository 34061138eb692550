"""Optional bearer-token authentication for the API (``FLEXDB_API_TOKEN``).

Health stays open so load balancers and container health checks need no secret.
"""

from __future__ import annotations

import hmac

from flask import Flask, request

from shared.core.errors import Unauthorized

OPEN_ENDPOINTS = {"system.health", "static"}


def install_token_check(app: Flask, token: str) -> None:
    if not token:
        return
    expected = f"Bearer {token}".encode()

    @app.before_request
    def require_token() -> None:
        if request.endpoint in OPEN_ENDPOINTS:
            return
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized("Send the API token as 'Authorization: Bearer <token>' (FLEXDB_API_TOKEN).")
