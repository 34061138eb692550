from __future__ import annotations

import hashlib
import json

from flask import Blueprint, jsonify, request

from api.http import job_headers, page_body, page_limit, parse_body, parse_query, present_job, services
from api.schemas import BackupRequestSchema, JobGetQuerySchema, JobListQuerySchema, JobSchema, RestoreRequestSchema
from shared.core.errors import ValidationFailed
from shared.domain.jobs import Job, JobFilter
from shared.services.callbacks import validate_callback

bp = Blueprint("jobs", __name__)
_job = JobSchema()


def _idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key must be 1-255 printable characters (a UUID is a good choice).",
            errors=[{"pointer": "/headers/Idempotency-Key", "detail": "1-255 printable characters"}],
        )
    return key


def _fingerprint(body: dict) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{request.method} {request.path} {canonical}".encode()).hexdigest()


def _submit(body: dict, submit) -> tuple:
    callback = validate_callback(services().settings, body.pop("callback_url"), body.pop("callback_headers"))
    job, replayed = services().jobs.idempotent(
        _idempotency_key(), _fingerprint({**body, "callback": callback and callback.__dict__}), lambda: submit(callback)
    )
    headers = job_headers(job)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return jsonify(_job.dump(present_job(job))), 202, headers


@bp.post("/backups")
def create_backup():
    body = parse_body(BackupRequestSchema())
    return _submit(body, lambda callback: services().jobs.submit_backup(body["target"], body["options"], callback=callback))


@bp.post("/restores")
def create_restore():
    body = parse_body(RestoreRequestSchema())
    return _submit(
        body,
        lambda callback: services().jobs.submit_restore(
            body["backup_id"],
            body["target"],
            database=body["database"],
            drop=body["drop"],
            options=body["options"],
            callback=callback,
        ),
    )


def _job_response(job: Job, status: int = 200):
    return jsonify(_job.dump(present_job(job))), status, job_headers(job)


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    wait = min(parse_query(JobGetQuerySchema())["wait"], services().settings.wait_max_seconds)
    return _job_response(services().jobs.wait(job_id, wait))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str):
    job = services().jobs.cancel(job_id)
    # A queued job is cancelled at once (200); a running one stops at its next progress report (202).
    return _job_response(job, 200 if job.status.is_terminal else 202)


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
