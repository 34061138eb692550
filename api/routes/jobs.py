from __future__ import annotations

import hashlib
import json

import structlog
from flask import Blueprint, jsonify, request

from api.http import job_headers, page_body, page_limit, parse_body, parse_query, present_job, services, wait_slots
from api.openapi import operation
from api.schemas import (
    BackupRequestSchema,
    JobGetQuerySchema,
    JobListQuerySchema,
    JobPageSchema,
    JobSchema,
    RestoreRequestSchema,
)
from shared.core.errors import (
    BackupNotFound,
    BrokerUnavailable,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    JobFinished,
    SystemDatabaseRefused,
    TargetNotFound,
    ValidationFailed,
)
from shared.domain.jobs import Job, JobFilter
from shared.services.callbacks import validate_callback

bp = Blueprint("jobs", __name__)
# Built once: a schema costs more to build than to load a small body with (submits, polls).
_backup_request = BackupRequestSchema()
_restore_request = RestoreRequestSchema()
_job_query = JobGetQuerySchema()


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
    key = _idempotency_key()
    # The fingerprint only matters with a key (it tells a replay from a different request).
    fingerprint = _fingerprint({**body, "callback": callback and callback.__dict__}) if key is not None else ""
    job, replayed = services().jobs.idempotent(key, fingerprint, lambda: submit(callback))
    # The request's one log line (http.request) names the job it queued.
    structlog.contextvars.bind_contextvars(job_id=job.id, kind=job.kind.value, target=job.target, engine=job.engine)
    headers = job_headers(job)
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return jsonify(present_job(job)), 202, headers


_SUBMIT_HEADERS = {"Idempotency-Key": "Same key and body: the same job again (Idempotent-Replayed: true)"}
_SUBMIT_ERRORS = (IdempotencyKeyInUse, IdempotencyKeyReused, BrokerUnavailable)


@bp.post("/backups")
@operation(
    summary="Start a backup of a target",
    body=BackupRequestSchema,
    headers=_SUBMIT_HEADERS,
    responses={202: ("The queued job; Location: /api/v1/jobs/<id>", JobSchema)},
    errors=(TargetNotFound, *_SUBMIT_ERRORS),
)
def create_backup():
    body = parse_body(_backup_request)
    return _submit(body, lambda callback: services().jobs.submit_backup(body["target"], body["options"], callback=callback))


@bp.post("/restores")
@operation(
    summary="Restore a backup into its own target, another one, or another database",
    body=RestoreRequestSchema,
    headers=_SUBMIT_HEADERS,
    responses={202: ("The queued job; Location: /api/v1/jobs/<id>", JobSchema)},
    errors=(BackupNotFound, TargetNotFound, SystemDatabaseRefused, *_SUBMIT_ERRORS),
)
def create_restore():
    body = parse_body(_restore_request)
    return _submit(
        body,
        lambda callback: services().jobs.submit_restore(
            body["backup_id"],
            body["target"],
            database=body["database"],
            drop=body["drop"],
            options=body["options"],
            callback=callback,
            allow_system_database=body["allow_system_database"],
        ),
    )


def _job_response(job: Job, status: int = 200):
    return jsonify(present_job(job)), status, job_headers(job)


@bp.get("/jobs/<job_id>")
@operation(
    summary="One job; with ?wait=N held until its status changes (when a wait slot is free); Retry-After while unfinished",
    query=JobGetQuerySchema,
    responses={200: ("The job", JobSchema)},
)
def get_job(job_id: str):
    # A plain poll (no query string) holds nothing: no query to parse, no wait slot to take.
    wait = min(parse_query(_job_query)["wait"], services().settings.wait_max_seconds) if request.args else 0
    if not wait:
        return _job_response(services().jobs.get(job_id))
    with wait_slots().slot() as granted:
        return _job_response(services().jobs.wait(job_id, wait if granted else 0))


@bp.post("/jobs/<job_id>/cancel")
@operation(
    summary="Cancel a job: a queued one never starts, a running one stops and leaves no partial archive",
    responses={
        200: ("Cancelled (it was queued or waiting, or its worker is gone)", JobSchema),
        202: ("Stopping (it was running)", JobSchema),
    },
    errors=(JobFinished,),
)
def cancel_job(job_id: str):
    job = services().jobs.cancel(job_id)
    # A queued job, or one whose worker is gone, is cancelled at once (200); a running one
    # stops at its next progress report (202).
    return _job_response(job, 200 if job.status.is_terminal else 202)


@bp.get("/jobs")
@operation(summary="Jobs, newest first, filtered by status, kind and target", query=JobListQuerySchema, responses={200: ("A page of jobs", JobPageSchema)})
def list_jobs():
    query = parse_query(JobListQuerySchema())
    filters = JobFilter(status=query["status"], kind=query["kind"], target=query["target"])
    page = services().jobs.find(filters, page_limit(query["limit"]), query["cursor"])
    items = [present_job(job) for job in page.items]
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
