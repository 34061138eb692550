from __future__ import annotations

from flask import Blueprint, jsonify, url_for

from api.http import job_headers, parse_body, parse_query, present_job, services
from api.schemas import (
    JobSchema,
    RetentionPreviewQuerySchema,
    ScheduleListQuerySchema,
    ScheduleSchema,
    ScheduleWriteSchema,
)
from shared.domain.schedules import Schedule

bp = Blueprint("schedules", __name__)
_schedule = ScheduleSchema()
_job = JobSchema()


def _present(schedule: Schedule) -> dict:
    data = services().schedules.describe(schedule)
    data["links"] = {
        "self": url_for("schedules.get_schedule", schedule_id=schedule.id, _external=True),
        "run": url_for("schedules.run_schedule", schedule_id=schedule.id, _external=True),
    }
    if schedule.last_job_id:
        data["links"]["last_job"] = url_for("jobs.get_job", job_id=schedule.last_job_id, _external=True)
    return _schedule.dump(data)


@bp.get("/schedules")
def list_schedules():
    query = parse_query(ScheduleListQuerySchema())
    return jsonify({"items": [_present(s) for s in services().schedules.all(query["target"])]})


@bp.post("/schedules")
def create_schedule():
    schedule = services().schedules.create(parse_body(ScheduleWriteSchema()))
    location = url_for("schedules.get_schedule", schedule_id=schedule.id)
    return jsonify(_present(schedule)), 201, {"Location": location}


@bp.get("/schedules/<schedule_id>")
def get_schedule(schedule_id: str):
    return jsonify(_present(services().schedules.get(schedule_id)))


@bp.patch("/schedules/<schedule_id>")
def update_schedule(schedule_id: str):
    changes = parse_body(ScheduleWriteSchema(), partial=True)
    return jsonify(_present(services().schedules.update(schedule_id, changes)))


@bp.delete("/schedules/<schedule_id>")
def delete_schedule(schedule_id: str):
    services().schedules.delete(schedule_id)
    return "", 204


@bp.post("/schedules/<schedule_id>/run")
def run_schedule(schedule_id: str):
    job = services().schedules.run_now(schedule_id)
    return jsonify(_job.dump(present_job(job))), 202, job_headers(job)


@bp.get("/retention/preview")
def preview_retention():
    target = parse_query(RetentionPreviewQuerySchema())["target"]
    policies, decisions = services().retention.plan(target)
    items = [
        {**d.to_dict(), "links": {"backup": url_for("backups.get_backup", backup_id=d.backup.id, _external=True)}}
        for d in decisions
    ]
    return jsonify(
        {
            "target": target,
            "policies": [p.to_dict() for p in policies],
            "delete_count": sum(not d.keep for d in decisions),
            "items": items,
        }
    )
