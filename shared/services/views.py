"""How a job looks to clients, in API responses and in callbacks alike."""

from __future__ import annotations

from typing import Any

from shared.domain.jobs import Job

API_PREFIX = "/api/v1"


def job_path(job_id: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


# The fields of a job's view, in the order api/schemas.py's JobSchema documents them (a unit
# test keeps the two equal); the worker's own bookkeeping (work_backup_id) is left out.
_VIEW_FIELDS = (
    "id", "kind", "status", "done", "target", "engine", "params", "created_at", "started_at", "finished_at",
    "duration_seconds", "progress", "backup_id", "result", "error", "callback", "cancel_requested", "attempts", "links",
)  # fmt: skip


def job_view(job: Job, base_url: str) -> dict[str, Any]:
    """The job with ``done``, its duration and absolute links (``base_url`` has no trailing /):
    the body of API responses and callbacks, built without a schema (it is on every submit and
    poll)."""
    data = job.to_dict()
    data["done"] = job.status.is_terminal
    data["duration_seconds"] = job.duration_seconds
    links = {"self": base_url + job_path(job.id)}
    if not job.status.is_terminal:
        links["cancel"] = base_url + job_path(job.id) + "/cancel"
    if job.backup_id:
        links["backup"] = f"{base_url}{API_PREFIX}/backups/{job.backup_id}"
    data["links"] = links
    return {name: data[name] for name in _VIEW_FIELDS}
