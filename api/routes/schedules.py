from __future__ import annotations

from flask import Blueprint, jsonify, url_for

from api.http import job_headers, parse_body, parse_query, present_job, services
from api.openapi import operation
from api.schemas import (
    JobSchema,
    RetentionPreviewQuerySchema,
    RetentionPreviewSchema,
    ScheduleListQuerySchema,
    ScheduleListSchema,
    ScheduleSchema,
    ScheduleUpdateSchema,
    ScheduleWriteSchema,
)
from shared.core.errors import BrokerUnavailable, ScheduleManagedBySettings, TargetBusy, TargetNotFound
from shared.domain.schedules import Schedule

bp = Blueprint("schedules", __name__)
_schedule = ScheduleSchema()


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
@operation(summary="Schedules, with next and last run", query=ScheduleListQuerySchema, responses={200: ("Schedules", ScheduleListSchema)}, tag="schedules")
def list_schedules():
    query = parse_query(ScheduleListQuerySchema())
    return jsonify({"items": [_present(s) for s in services().schedules.all(query["target"])]})


@bp.post("/schedules")
@operation(
    summary="Create a schedule (cron in a time zone, or an interval) with an optional retention policy",
    body=ScheduleWriteSchema,
    responses={201: ("The schedule; Location: /api/v1/schedules/<id>", ScheduleSchema)},
    errors=(TargetNotFound,),
    tag="schedules",
)
def create_schedule():
    schedule = services().schedules.create(parse_body(ScheduleWriteSchema()))
    location = url_for("schedules.get_schedule", schedule_id=schedule.id)
    return jsonify(_present(schedule)), 201, {"Location": location}


@bp.get("/schedules/<schedule_id>")
@operation(summary="One schedule", responses={200: ("The schedule", ScheduleSchema)}, tag="schedules")
def get_schedule(schedule_id: str):
    return jsonify(_present(services().schedules.get(schedule_id)))


@bp.patch("/schedules/<schedule_id>")
@operation(
    summary="Change a schedule (setting cron clears interval_seconds and the other way round)",
    body=ScheduleUpdateSchema,
    responses={200: ("The schedule", ScheduleSchema)},
    errors=(ScheduleManagedBySettings,),
    tag="schedules",
)
def update_schedule(schedule_id: str):
    changes = parse_body(ScheduleUpdateSchema())
    return jsonify(_present(services().schedules.update(schedule_id, changes)))


@bp.delete("/schedules/<schedule_id>")
@operation(
    summary="Delete a schedule",
    responses={204: ("Deleted", None)},
    errors=(ScheduleManagedBySettings,),
    tag="schedules",
)
def delete_schedule(schedule_id: str):
    services().schedules.delete(schedule_id)
    return "", 204


@bp.post("/schedules/<schedule_id>/run")
@operation(
    summary="Run the schedule's backup now",
    responses={202: ("The queued job", JobSchema)},
    errors=(TargetBusy, BrokerUnavailable),
    tag="schedules",
)
def run_schedule(schedule_id: str):
    job = services().schedules.run_now(schedule_id)
    return jsonify(present_job(job)), 202, job_headers(job)


@bp.get("/retention/preview")
@operation(
    summary="What retention would keep and delete for a target, and why (nothing is deleted)",
    query=RetentionPreviewQuerySchema,
    responses={200: ("The decision per backup", RetentionPreviewSchema)},
    errors=(TargetNotFound,),
    tag="schedules",
)
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
