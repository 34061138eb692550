"""The API describes itself: an OpenAPI document that covers every route, Prometheus metrics
that reflect real jobs, and reference docs that name every route and error code."""

from __future__ import annotations

import re
from pathlib import Path

from api.openapi import error_codes
from tests.conftest import Stack

DOCS = Path(__file__).resolve().parents[2] / "docs"


def openapi(stack: Stack) -> dict:
    response = stack.api.get("/openapi.json")
    assert response.status == 200
    return response.body


def test_the_openapi_document_describes_every_route_with_problem_errors(stack: Stack) -> None:
    document = openapi(stack)
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    for path in ("/api/v1/backups", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel", "/api/v1/schedules/{schedule_id}", "/metrics"):
        assert path in paths
    for path, operations in paths.items():
        for method, op in operations.items():
            assert op["summary"] and op["responses"], f"{method} {path}"
            errors = {code: r for code, r in op["responses"].items() if code.startswith(("4", "5"))}
            assert errors, f"{method} {path} documents no error response"
            for code, response in errors.items():
                if (path, code) == ("/api/v1/health", "503"):
                    continue  # health answers its component report, 503 when degraded
                assert list(response["content"]) == ["application/problem+json"], f"{method} {path} {code}"
    backup = paths["/api/v1/backups"]["post"]
    body = backup["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/BackupRequest"}
    assert document["components"]["schemas"]["BackupRequest"]["required"] == ["target"]
    assert any(p["name"] == "Idempotency-Key" for p in backup["parameters"])


def test_every_route_and_error_code_is_in_the_api_reference(stack: Stack) -> None:
    reference = (DOCS / "api.md").read_text()
    for path, operations in openapi(stack)["paths"].items():
        plain = re.sub(r"\{(\w+)\}", r"<\1>", path.removeprefix("/api/v1"))
        for method in operations:
            assert f"`{method.upper()} {plain}" in reference, f"{method.upper()} {plain} missing from docs/api.md"
    for code in error_codes():
        assert f"`{code}`" in reference, f"error code {code} missing from docs/api.md"


def test_metrics_reflect_real_jobs_and_backups(stack: Stack) -> None:
    job = stack.api.wait_job(stack.api.post("/backups", {"target": "pg"}).headers["Location"])
    assert job["status"] == "succeeded"
    response = stack.api.get(stack.api.origin + "/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    jobs = float(re.search(r'^flexdb_jobs\{kind="backup",status="succeeded"\} (\S+)$', text, re.M).group(1))
    assert jobs >= 1
    assert re.search(r'^flexdb_job_duration_seconds_count\{kind="backup"\} [1-9]', text, re.M)
    assert re.search(r'^flexdb_backup_size_bytes_bucket\{engine="postgresql",le="\+Inf"\} [1-9]', text, re.M)
    last = float(re.search(r'^flexdb_last_successful_backup_timestamp_seconds\{target="pg"\} (\S+)$', text, re.M).group(1))
    assert last >= float(stack.api.get(f"/backups/{job['backup_id']}").body["duration_seconds"])  # a real epoch time
    assert last > 1.7e9
    assert re.search(r"^flexdb_queue_depth \d", text, re.M)
    assert re.search(r"^flexdb_workers_alive [1-9]", text, re.M)
