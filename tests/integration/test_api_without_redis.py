"""When Redis is down the API still answers, with 503 problems instead of 500s."""

from __future__ import annotations

import pytest

from api import create_app
from shared.core.settings import Settings
from tests.support.processes import free_port


@pytest.fixture
def client(tmp_path):
    settings = Settings.from_env(
        {
            "FLEXDB_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "FLEXDB_STORAGE_DIR": str(tmp_path),
            "FLEXDB_CONNECT_TIMEOUT_SECONDS": "1",
            "FLEXDB_TARGETS": '{"pg": {"engine": "postgresql", "uri": "postgresql://postgres@127.0.0.1:5432/postgres"}}',
        }
    )
    return create_app(settings).test_client()


def test_submitting_a_backup_with_redis_down_answers_503(client) -> None:
    response = client.post("/api/v1/backups", json={"target": "pg"})
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert response.json["code"] == "broker_unavailable"
    assert "FLEXDB_REDIS_URL" in response.json["detail"]
    assert response.headers["Retry-After"]


def test_health_says_which_component_is_down(client) -> None:
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    components = response.json["components"]
    assert components["redis"]["ok"] is False and components["workers"]["ok"] is False
    assert components["targets"]["pg"]["ok"] is True
