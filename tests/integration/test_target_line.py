"""A busy target means "wait your turn", not failure: jobs for a busy target wait in submit
order without holding a worker slot, and fail target_busy only after FLEXDB_LOCK_WAIT_SECONDS."""

from __future__ import annotations

import secrets
from pathlib import Path

from tests.conftest import drop_database, pg_admin
from tests.support.crash_stack import private_stack
from tests.support.processes import wait_for

SUBMITS = 20


def test_twenty_submits_in_a_row_all_succeed_one_at_a_time_in_submit_order(tmp_path: Path, own_redis_url: str) -> None:
    with private_stack(tmp_path, own_redis_url) as stack:
        stack.start_api()
        stack.start_worker(concurrency=2)
        stack.wait_workers(1)
        with stack.table_locked():
            jobs = [stack.submit() for _ in range(SUBMITS)]
            stack.wait_dumping(jobs[0]["id"])
            waiting = wait_for(
                lambda: all(stack.job(j["id"])["progress"]["stage"] == "waiting for target" for j in jobs[1:]) and jobs,
                30,
                what="the others waiting in line",
            )
            shown = stack.job(waiting[5]["id"])
            assert shown["status"] == "queued" and shown["done"] is False and shown["progress"]["current"]
            assert "Retry-After" in stack.api.get(f"/jobs/{waiting[5]['id']}").headers
        finals = [stack.wait_job(j["id"], timeout=120) for j in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * SUBMITS, [f["error"] for f in finals]
    started = [f["started_at"] for f in finals]
    assert started == sorted(started), "served in submit order"
    for earlier, later in zip(finals, finals[1:]):
        assert earlier["finished_at"] <= later["started_at"], "one at a time"


def test_a_waiting_job_holds_no_worker_slot(tmp_path: Path, own_redis_url: str) -> None:
    """Two worker slots: while a job holds target pg in one and five more wait for it, a job
    for another target still gets the second slot (a waiting job gives its slot back)."""
    other = f"flexdb_line_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{other}"')
    try:
        with private_stack(tmp_path, own_redis_url, extra_targets={"other": other}) as stack:
            stack.start_api()
            stack.start_worker(concurrency=2)
            stack.wait_workers(1)
            with stack.table_locked():
                first = stack.submit()
                stack.wait_dumping(first["id"])
                waiting = [stack.submit() for _ in range(5)]
                elsewhere = stack.submit(target="other")
                done = stack.wait_job(elsewhere["id"], timeout=30)
                assert done["status"] == "succeeded"
                assert all(stack.job(j["id"])["status"] == "queued" for j in waiting)
            assert all(stack.wait_job(j["id"])["status"] == "succeeded" for j in [first, *waiting])
    finally:
        drop_database(other)


def test_a_job_that_waits_longer_than_the_setting_fails_target_busy(tmp_path: Path, own_redis_url: str) -> None:
    with private_stack(tmp_path, own_redis_url, FLEXDB_LOCK_WAIT_SECONDS="3") as stack:
        stack.start_api()
        stack.start_worker()
        stack.wait_workers(1)
        with stack.table_locked():
            first = stack.submit()
            stack.wait_dumping(first["id"])
            late = stack.submit()
            final = stack.wait_job(late["id"], timeout=20)
            assert final["status"] == "failed" and final["error"]["code"] == "target_busy", final
            assert first["id"] in final["error"]["message"] and "FLEXDB_LOCK_WAIT_SECONDS" in final["error"]["message"]
        assert stack.wait_job(first["id"])["status"] == "succeeded"


def test_cancelling_a_waiting_job_takes_it_out_of_line(tmp_path: Path, own_redis_url: str) -> None:
    with private_stack(tmp_path, own_redis_url) as stack:
        stack.start_api()
        stack.start_worker()
        stack.wait_workers(1)
        with stack.table_locked():
            first = stack.submit()
            stack.wait_dumping(first["id"])
            second, third = stack.submit(), stack.submit()
            wait_for(lambda: stack.job(second["id"])["progress"]["stage"] == "waiting for target", 20)
            response = stack.api.post(f"/jobs/{second['id']}/cancel")
            assert response.status == 200 and response.body["status"] == "cancelled"
        assert stack.wait_job(third["id"])["status"] == "succeeded"
        assert stack.job(second["id"])["started_at"] is None
