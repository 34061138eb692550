from __future__ import annotations

from flask import Blueprint, jsonify

from api.http import job_headers, page_body, page_limit, parse_body, parse_query, present_job, services
from api.schemas import BackupRequestSchema, JobListQuerySchema, JobSchema, RestoreRequestSchema
from shared.domain.jobs import JobFilter

bp = Blueprint("jobs", __name__)
_job = JobSchema()


def _accepted(job):
    return jsonify(_job.dump(present_job(job))), 202, job_headers(job)


@bp.post("/backups")
def create_backup():
    body = parse_body(BackupRequestSchema())
    return _accepted(services().jobs.submit_backup(body["target"], body["options"]))


@bp.post("/restores")
def create_restore():
    body = parse_body(RestoreRequestSchema())
    return _accepted(
        services().jobs.submit_restore(
            body["backup_id"], body["target"], database=body["database"], drop=body["drop"], options=body["options"]
        )
    )


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    job = services().jobs.get(job_id)
    return jsonify(_job.dump(present_job(job))), 200, job_headers(job)


@bp.get("/jobs")
def list_jobs():
    query = parse_query(JobListQuerySchema())
    filters = JobFilter(status=query["status"], kind=query["kind"], target=query["target"])
    page = services().jobs.find(filters, page_limit(query["limit"]), query["cursor"])
    items = [_job.dump(present_job(job)) for job in page.items]
    return jsonify(
        page_body(
            page,
            items,
            "jobs.list_jobs",
            status=query["status"] and query["status"].value,
            kind=query["kind"] and query["kind"].value,
            target=query["target"],
            limit=query["limit"],
        )
    )
