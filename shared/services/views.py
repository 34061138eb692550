"""How a job looks to clients, in API responses and in callbacks alike."""

from __future__ import annotations

from typing import Any

from shared.domain.jobs import Job

API_PREFIX = "/api/v1"


def job_path(job_id: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}"


def job_view(job: Job, base_url: str) -> dict[str, Any]:
    """The job with ``done``, its duration and absolute links (``base_url`` has no trailing /)."""
    data = job.to_dict()
    del data["work_backup_id"]  # the worker's own bookkeeping
    data["done"] = job.status.is_terminal
    data["duration_seconds"] = job.duration_seconds
    links = {"self": base_url + job_path(job.id)}
    if not job.status.is_terminal:
        links["cancel"] = base_url + job_path(job.id) + "/cancel"
    if job.backup_id:
        links["backup"] = f"{base_url}{API_PREFIX}/backups/{job.backup_id}"
    data["links"] = links
    return data
