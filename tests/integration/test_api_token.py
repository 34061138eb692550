"""With FLEXDB_API_TOKEN set, the API answers only requests that carry it (health stays open)."""

from __future__ import annotations

import pytest

from api import create_app
from shared.core.settings import Settings
from tests.conftest import REDIS_URL

TOKEN = "api-token-for-tests-0123456789"


@pytest.fixture
def client(tmp_path):
    settings = Settings.from_env(
        {"FLEXDB_REDIS_URL": REDIS_URL, "FLEXDB_STORAGE_DIR": str(tmp_path), "FLEXDB_API_TOKEN": TOKEN}
    )
    return create_app(settings).test_client()


def test_requests_without_the_token_get_401_problem(client) -> None:
    for path in ("/api/v1/jobs", "/api/v1/backups", "/metrics", "/api/v1/openapi.json"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.content_type == "application/problem+json"
        assert response.json["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in response.get_data(as_text=True)
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_right_token_opens_the_api_and_health_needs_none(client) -> None:
    assert client.get("/api/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert client.get("/api/v1/health").status_code in {200, 503}
