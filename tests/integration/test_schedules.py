"""Automatic backups as an operator sets them up: schedules over the API fired by real Celery
beat (RedBeat) and a real worker, retention that keeps the newest good backups."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis

from shared.domain.tasks import QUEUE, RETENTION_TASK
from shared.services.task_queue import make_celery
from shared.core.settings import Settings
from tests.conftest import DECLARED_SCHEDULE, REDIS_URL, Stack
from tests.support.processes import wait_for

TARGET = "pg-sched"
BEAT = ("-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO")


def beat_argv(stack: Stack, name: str) -> tuple[str, ...]:
    return (*BEAT, "--schedule", str(stack.storage_dir.parent / f"{name}-schedule"))


@pytest.fixture(scope="module")
def beat(stack: Stack):
    process = stack.spawn("beat-1", *beat_argv(stack, "beat-1"))
    yield process
    process.stop()


def scheduled_jobs(stack: Stack, schedule_id: str) -> list[dict]:
    jobs = stack.api.get(f"/jobs?kind=backup&target={TARGET}&limit=100").body["items"]
    return [job for job in jobs if job["params"].get("schedule_id") == schedule_id]


def create(stack: Stack, **body) -> dict:
    response = stack.api.post("/schedules", {"target": TARGET, **body})
    assert response.status == 201, response.text
    assert response.headers["Location"] == f"/api/v1/schedules/{response.body['id']}"
    return response.body


def disable(stack: Stack, schedule_id: str) -> None:
    """Stop the schedule and let a run it already sent finish, so the next test finds the target free."""
    assert stack.api.request("PATCH", f"/schedules/{schedule_id}", {"enabled": False}).status == 200
    time.sleep(1.5)

    def idle() -> bool:
        jobs = stack.api.get(f"/jobs?target={TARGET}&limit=20").body["items"]
        return all(job["done"] for job in jobs)

    wait_for(idle, 30, what=f"no unfinished job on {TARGET}")


def retention_after(stack: Stack, job: dict) -> dict:
    """The retention pass a backup triggers: it runs once the backup is recorded as succeeded, so
    a test that goes on as soon as the job is done must wait for it."""

    def finished():
        items = stack.api.get(f"/jobs?kind=retention&target={TARGET}&limit=100").body["items"]
        return next((j for j in items if j["params"].get("trigger") == f"after backup job {job['id']}" and j["done"]), None)

    return wait_for(finished, 20, what=f"the retention pass after backup job {job['id']}")


def test_a_schedule_made_over_the_api_runs_without_restarting_beat_and_stops_when_disabled(stack, beat) -> None:
    schedule = create(stack, interval_seconds=2)
    assert schedule["next_run_at"] and schedule["enabled"] and schedule["source"] == "api"

    wait_for(lambda: len(scheduled_jobs(stack, schedule["id"])) >= 2, 30, what="two scheduled backups")
    wait_for(
        lambda: stack.api.get(f"/schedules/{schedule['id']}").body["last_status"] == "succeeded", 30, what="a good run"
    )
    shown = stack.api.get(f"/schedules/{schedule['id']}").body
    assert shown["last_job_id"] in {job["id"] for job in scheduled_jobs(stack, schedule["id"])}
    assert shown["last_run_at"] and shown["next_run_at"] > shown["last_run_at"]

    disable(stack, schedule["id"])
    settled = len(scheduled_jobs(stack, schedule["id"]))
    time.sleep(5)
    assert len(scheduled_jobs(stack, schedule["id"])) == settled
    assert stack.api.get(f"/schedules/{schedule['id']}").body["next_run_at"] is None


def test_two_beat_processes_never_fire_the_same_run_twice(stack, beat) -> None:
    second = stack.spawn("beat-2", *beat_argv(stack, "beat-2"))
    try:
        time.sleep(2)
        schedule = create(stack, interval_seconds=2)
        time.sleep(11)
        disable(stack, schedule["id"])
        jobs = scheduled_jobs(stack, schedule["id"])
    finally:
        second.stop()
    created = sorted(datetime.fromisoformat(job["created_at"].replace("Z", "+00:00")) for job in jobs)
    assert 3 <= len(created) <= 7
    gaps = [(b - a).total_seconds() for a, b in zip(created, created[1:])]
    assert min(gaps) > 1.5, f"two runs fired together: {gaps}"


def test_a_run_that_finds_the_target_busy_is_recorded_as_skipped(stack, beat) -> None:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    # The lease a running backup of this target holds (written as the lease itself writes it:
    # job id, host, pid, attempt).
    client.set(f"flexdb:lease:{TARGET}", "job-still-running elsewhere 1 attempt", ex=60)
    try:
        schedule = create(stack, interval_seconds=1)
        skipped = wait_for(
            lambda: (s := stack.api.get(f"/schedules/{schedule['id']}").body)["last_status"] == "skipped" and s,
            20,
            what="a skipped run",
        )
        assert "busy with job job-still-running" in skipped["last_message"]
        assert scheduled_jobs(stack, schedule["id"]) == []
        busy = stack.api.post(f"/schedules/{schedule['id']}/run")
        assert busy.status == 409 and busy.body["code"] == "target_busy"
    finally:
        client.delete(f"flexdb:lease:{TARGET}")
    wait_for(lambda: scheduled_jobs(stack, schedule["id"]), 20, what="a run once the target is free")
    disable(stack, schedule["id"])


def test_run_now_starts_a_backup_at_once(stack) -> None:
    schedule = create(stack, cron="0 3 * * *")
    response = stack.api.post(f"/schedules/{schedule['id']}/run")
    assert response.status == 202
    job = stack.api.wait_job(response.headers["Location"])
    assert job["status"] == "succeeded" and job["params"]["schedule_id"] == schedule["id"]
    assert stack.api.get(f"/schedules/{schedule['id']}").body["last_job_id"] == job["id"]
    assert stack.api.request("DELETE", f"/schedules/{schedule['id']}").status == 204
    assert stack.api.get(f"/schedules/{schedule['id']}").status == 404


def test_cron_runs_in_the_schedule_time_zone(stack) -> None:
    schedule = create(stack, cron="30 2 * * *", timezone="America/New_York")
    zone = ZoneInfo("America/New_York")
    now = datetime.now(zone)
    expected = now.replace(hour=2, minute=30, second=0, microsecond=0)
    if expected <= now:
        expected = (now + timedelta(days=1)).replace(hour=2, minute=30, second=0, microsecond=0)
    expected = expected.replace(tzinfo=zone)  # re-resolve the UTC offset on that date (DST)
    shown = datetime.fromisoformat(schedule["next_run_at"].replace("Z", "+00:00"))
    assert shown == expected.astimezone(timezone.utc)
    stack.api.request("DELETE", f"/schedules/{schedule['id']}")


def test_patch_switches_between_cron_and_interval(stack) -> None:
    schedule = create(stack, cron="0 3 * * *", enabled=False)
    changed = stack.api.request("PATCH", f"/schedules/{schedule['id']}", {"interval_seconds": 3600})
    assert changed.status == 200
    assert changed.body["cron"] is None and changed.body["interval_seconds"] == 3600
    assert changed.body["enabled"] is False and changed.body["next_run_at"] is None
    stack.api.request("DELETE", f"/schedules/{schedule['id']}")


@pytest.mark.parametrize(
    ("body", "status", "pointer"),
    [
        ({"cron": "61 * * * *"}, 422, "/cron"),
        ({"cron": "* * *"}, 422, "/cron"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}, 422, "/timezone"),
        ({"interval_seconds": 0}, 422, "/interval_seconds"),
        ({}, 422, "/cron"),
        ({"cron": "0 3 * * *", "interval_seconds": 60}, 422, "/cron"),
        ({"cron": "0 3 * * *", "retention": {"keep_last": -1}}, 422, "/retention/keep_last"),
        ({"cron": "0 3 * * *", "colour": "red"}, 422, "/colour"),
    ],
)
def test_bad_schedules_are_refused_with_a_pointer(stack, body, status, pointer) -> None:
    response = stack.api.post("/schedules", {"target": TARGET, **body})
    assert response.status == status, response.text
    assert response.body["code"] == "validation_failed"
    assert pointer in [error["pointer"] for error in response.body["errors"]]


def test_a_schedule_for_an_unknown_target_is_404(stack) -> None:
    response = stack.api.post("/schedules", {"target": "nope", "cron": "0 3 * * *"})
    assert response.status == 404 and response.body["code"] == "target_not_found"


def test_schedules_declared_in_settings_are_listed_and_read_only(stack) -> None:
    listed = {s["id"]: s for s in stack.api.get(f"/schedules?target={TARGET}").body["items"]}
    declared = listed[DECLARED_SCHEDULE["id"]]
    assert declared["source"] == "settings" and declared["cron"] == DECLARED_SCHEDULE["cron"]
    assert declared["timezone"] == "Europe/Berlin" and declared["next_run_at"]
    refused = stack.api.request("PATCH", f"/schedules/{DECLARED_SCHEDULE['id']}", {"enabled": False})
    assert refused.status == 409 and refused.body["code"] == "schedule_managed_by_settings"
    assert stack.api.request("DELETE", f"/schedules/{DECLARED_SCHEDULE['id']}").status == 409


def test_retention_after_each_backup_keeps_the_policy_and_records_what_it_deleted(stack) -> None:
    schedule = create(stack, cron="0 3 * * *", enabled=False, retention={"keep_last": 2})
    for _ in range(4):
        job = stack.api.wait_job(stack.api.post(f"/schedules/{schedule['id']}/run").headers["Location"])
        assert job["status"] == "succeeded"
    retention_after(stack, job)
    # a schedule's policy governs the backups that schedule made (other tests' stay)
    backups = [b for b in stack.api.get(f"/backups?target={TARGET}&limit=100").body["items"] if b["schedule_id"] == schedule["id"]]
    assert len(backups) == 2
    assert backups[0]["id"] == job["backup_id"]

    retention_jobs = stack.api.get(f"/jobs?kind=retention&target={TARGET}").body["items"]
    assert retention_jobs[0]["status"] == "succeeded"
    assert retention_jobs[0]["params"]["trigger"] == f"after backup job {job['id']}"
    deleted = [item for j in retention_jobs for item in j["result"]["deleted"]]
    assert len(deleted) >= 2 and all(item["reasons"] == [] for item in deleted)
    for item in deleted:
        assert stack.api.get(f"/backups/{item['backup_id']}").status == 404
        assert not (stack.storage_dir / item["backup_id"]).exists()

    preview = stack.api.get(f"/retention/preview?target={TARGET}").body
    assert preview["delete_count"] == 0
    own = {b["id"] for b in backups}
    assert [item["reasons"] for item in preview["items"] if item["backup_id"] in own] == [["min_keep", "keep_last"], ["keep_last"]]
    stack.api.request("DELETE", f"/schedules/{schedule['id']}")


def test_the_daily_retention_task_runs_on_the_worker(stack) -> None:
    schedule = create(stack, cron="0 3 * * *", enabled=False, retention={"keep_last": 1})
    retention_after(stack, stack.api.wait_job(stack.api.post(f"/schedules/{schedule['id']}/run").headers["Location"]))
    before = {j["id"] for j in stack.api.get(f"/jobs?kind=retention&target={TARGET}&limit=100").body["items"]}

    producer = make_celery(Settings.from_env({"FLEXDB_REDIS_URL": REDIS_URL}))
    producer.send_task(RETENTION_TASK, queue=QUEUE)

    def new_retention_job():
        jobs = stack.api.get(f"/jobs?kind=retention&target={TARGET}&limit=100").body["items"]
        return [j for j in jobs if j["id"] not in before]

    fresh = wait_for(new_retention_job, 20, what="a retention job from the daily task")
    assert fresh[0]["params"]["trigger"] == "daily retention pass"
    backups = stack.api.get(f"/backups?target={TARGET}&limit=100").body["items"]
    assert len([b for b in backups if b["schedule_id"] == schedule["id"]]) == 1
    stack.api.request("DELETE", f"/schedules/{schedule['id']}")
