"""Crashes never leave a job or a target stuck: real workers are killed (a pool process, the
whole worker), stopped with SIGTERM, and the jobs are followed through the API.

Each test runs a stack of its own with a 2 s lease (FLEXDB_LEASE_SECONDS), so "within two
leases" is seconds. A table lock held by the test keeps pg_dump waiting, so a job stays
`running` exactly as long as needed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.crash_stack import LEASE_SECONDS, PrivateStack, kill_group, private_stack
from tests.support.processes import wait_for

# Every kill lands at the same point (the dump blocked on the test's table lock), so further rounds
# repeat one scenario and differ only in where the kill falls in the reaper's sweep cycle; 5 show
# that spread, and each dead-worker round costs a reap (seconds). FLEXDB_TEST_KILLS=20 soaks longer.
KILLS = int(os.environ.get("FLEXDB_TEST_KILLS", "5"))
# Two leases, plus the time the API and Redis take to show it on a loaded machine.
REAP_BOUND = 2 * LEASE_SECONDS + 3


@pytest.fixture
def stack(tmp_path: Path, own_redis_url: str):
    with private_stack(tmp_path, own_redis_url) as stack:
        stack.start_api()
        yield stack


def test_a_killed_pool_process_never_leaves_the_job_or_the_target_stuck(stack: PrivateStack) -> None:
    """Celery hands the task of a dead pool process to another at once; that attempt takes
    over the job's own lease instead of failing target_busy."""
    worker = stack.start_worker()
    stack.wait_workers(1)
    outcomes, delays = [], []
    for _ in range(KILLS):
        with stack.table_locked():
            job = stack.submit()
            stack.wait_dumping(job["id"])
            killed_at = time.monotonic()
            os.kill(stack.lease_pid(), signal.SIGKILL)
            stack.wait_dumping(job["id"], attempts=2)
            delays.append(time.monotonic() - killed_at)
        outcomes.append(stack.wait_job(job["id"]))
    print(f"\n{KILLS} pool processes killed: second attempt dumping after {_figures(delays)}")
    assert worker.alive()
    assert [(j["status"], j["attempts"]) for j in outcomes] == [("succeeded", 2)] * KILLS, outcomes
    # a job reports its end before its worker gives the target up (retention runs in between)
    wait_for(lambda: stack.redis.get("flexdb:lease:pg") is None, LEASE_SECONDS, what="the target free")
    assert stack.leftovers() == [], "no dead attempt left a partial archive"
    listed = {b["id"] for b in stack.api.get("/backups?limit=100").body["items"]}
    assert {j["backup_id"] for j in outcomes} <= listed


def test_a_dead_worker_s_backup_is_retried_by_another_within_two_leases(stack: PrivateStack) -> None:
    """The whole worker dies (SIGKILL to its process group, as when a machine or container
    dies): nothing redelivers its task for hours, so the reaper of a living worker acts."""
    workers = [stack.start_worker(), stack.start_worker()]
    stack.wait_workers(2)
    delays = []
    for round_ in range(KILLS):
        with stack.table_locked():
            job = stack.submit()
            stack.wait_dumping(job["id"])
            owner_pid = stack.lease_pid()
            victim = next(w for w in workers if w.alive() and _is_ancestor(w.proc.pid, owner_pid))
            killed_at = time.monotonic()
            kill_group(victim)
            wait_for(lambda: stack.job(job["id"])["attempts"] == 2, REAP_BOUND + 10, what="the retry")
            delays.append(time.monotonic() - killed_at)
            workers[workers.index(victim)] = stack.start_worker()  # the next round has two again
            stack.wait_dumping(job["id"], attempts=2)
            assert stack.leftovers() == [] or len(stack.leftovers()) == 1  # only the running attempt's
        final = stack.wait_job(job["id"])
        assert (final["status"], final["attempts"]) == ("succeeded", 2), (round_, final)
    print(f"\n{KILLS} workers killed: retried by the other worker after {_figures(delays)} (bound {REAP_BOUND:g} s)")
    assert max(delays) <= REAP_BOUND, delays
    assert stack.leftovers() == []
    wait_for(lambda: stack.redis.get("flexdb:lease:pg") is None, LEASE_SECONDS, what="the target free")


def test_a_dead_worker_s_restore_fails_worker_lost_and_is_never_replayed(stack: PrivateStack) -> None:
    worker = stack.start_worker()
    stack.wait_workers(1)
    backup = stack.wait_job(stack.submit()["id"])
    # pg_restore waits on the lock too: --clean drops lock_me first.
    with stack.table_locked():
        restore = stack.submit("restores", backup_id=backup["backup_id"], drop=True)
        wait_for(lambda: stack.job(restore["id"])["progress"]["stage"] == "restoring", 30, what="the restore running")
        kill_group(worker)
        started = time.monotonic()
        stack.start_worker()
        final = stack.wait_job(restore["id"], timeout=REAP_BOUND + 30)
    assert final["status"] == "failed" and final["error"]["code"] == "worker_lost", final
    assert "not run again" in final["error"]["message"]
    assert time.monotonic() - started <= REAP_BOUND + 10
    time.sleep(LEASE_SECONDS * 2)
    assert stack.job(restore["id"])["status"] == "failed", "never replayed"
    assert stack.job(restore["id"])["attempts"] == 1


def test_cancel_ends_an_orphaned_job(stack: PrivateStack) -> None:
    worker = stack.start_worker()
    stack.wait_workers(1)
    with stack.table_locked():
        job = stack.submit()
        stack.wait_dumping(job["id"])
        kill_group(worker)
        # Its lease lapses (no worker is left to renew it, nor to reap the job).
        wait_for(lambda: stack.redis.get("flexdb:lease:pg") is None, LEASE_SECONDS + 5, what="the lease lapsed")
        response = stack.api.post(f"/jobs/{job['id']}/cancel")
    assert response.status == 200 and response.body["status"] == "cancelled", response.text
    assert stack.leftovers() == []
    assert stack.redis.get("flexdb:lease:pg") is None


def test_warm_shutdown_hands_running_jobs_back_and_the_next_worker_finishes_them(stack: PrivateStack) -> None:
    worker = stack.start_worker()
    stack.wait_workers(1)
    with stack.table_locked():
        job = stack.submit()
        stack.wait_dumping(job["id"])
        os.kill(worker.proc.pid, signal.SIGTERM)  # what docker stop and make run's Ctrl-C send
        handed_back = wait_for(
            lambda: (j := stack.job(job["id"]))["status"] == "queued" and j, 15, what="the job handed back"
        )
        assert handed_back["progress"]["stage"] == "handed back at worker shutdown"
        assert worker.proc.wait(15) == 0, "the worker stopped cleanly"
        assert stack.leftovers() == []
        assert stack.redis.get("flexdb:lease:pg") is None
    stack.start_worker()
    final = stack.wait_job(job["id"])
    assert (final["status"], final["attempts"]) == ("succeeded", 2), final


def _figures(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    return f"min {ordered[0]:.1f} s, median {ordered[len(ordered) // 2]:.1f} s, max {ordered[-1]:.1f} s"


def _is_ancestor(ancestor: int, pid: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False
