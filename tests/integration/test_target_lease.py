"""The target lease against a real Redis: who gets the target, who waits, in which order, and
what a lapsed or dead owner leaves behind."""

from __future__ import annotations

import os
import secrets
import subprocess
import time

import pytest
import redis

from shared.domain.ports import LeaseOwner
from shared.repositories.redis_store import RedisTargetLease
from shared.services.recovery import HOST, dead_here


@pytest.fixture
def lease(redis_client: redis.Redis) -> RedisTargetLease:
    return RedisTargetLease(redis_client, ttl_seconds=1.0)


def owner(job_id: str, pid: int | None = None) -> LeaseOwner:
    return LeaseOwner(job_id, HOST, pid or os.getpid(), secrets.token_hex(4))


def target() -> str:
    return "t-" + secrets.token_hex(4)


def test_one_job_holds_a_target_and_the_others_wait_in_submit_order(lease: RedisTargetLease) -> None:
    name = target()
    first, late, early = owner("job-a"), owner("job-c"), owner("job-b")
    assert lease.acquire(name, first, queued_at=1.0) is None
    assert lease.holder(name) == "job-a"
    assert lease.acquire(name, late, queued_at=3.0) == "job-a"
    assert lease.acquire(name, early, queued_at=2.0) == "job-a"
    assert [job for job, _ in lease.line(name)] == ["job-b", "job-c"]
    assert lease.release(name, first) == "job-b", "the release names the oldest waiting job"
    # The free target still goes to the head of the line, not to a newer job that asks first.
    assert lease.acquire(name, owner("job-d"), queued_at=4.0) == "job-b"
    assert lease.acquire(name, late, queued_at=3.0) == "job-b"
    assert lease.acquire(name, early, queued_at=2.0) is None
    assert lease.leased_jobs()[early.job_id] == name


def test_a_second_delivery_of_a_running_job_neither_runs_nor_queues(lease: RedisTargetLease) -> None:
    name = target()
    running = owner("job-a")
    assert lease.acquire(name, running, queued_at=1.0) is None
    assert lease.acquire(name, owner("job-a"), queued_at=1.0) == "job-a"
    assert lease.line(name) == []


def test_a_dead_attempt_s_lease_is_taken_over_by_the_next_attempt(lease: RedisTargetLease) -> None:
    name = target()
    child = subprocess.Popen(["true"])
    child.wait()  # a pid that no longer exists
    dead = owner("job-a", pid=child.pid)
    assert dead_here(dead) and not dead_here(owner("job-a"))
    assert not dead_here(LeaseOwner("job-a", "another-host", child.pid, "x")), "nothing is proven about another host"
    assert lease.acquire(name, dead, queued_at=1.0) is None
    assert lease.acquire(name, owner("job-a"), queued_at=1.0, replacing=dead) is None
    assert lease.owner(name) != dead


def test_a_lease_lapses_unless_renewed_and_a_lapsed_one_is_retaken_only_if_nobody_took_it(lease: RedisTargetLease) -> None:
    name = target()
    holder = owner("job-a")
    assert lease.acquire(name, holder, queued_at=1.0) is None
    time.sleep(0.6)
    assert lease.renew(name, holder)
    time.sleep(0.6)
    assert lease.holder(name) == "job-a", "renewed"
    time.sleep(1.1)
    assert lease.holder(name) is None, "lapsed"
    assert lease.renew(name, holder), "retaken: nobody took it meanwhile (a Redis outage, say)"
    time.sleep(1.1)
    assert lease.acquire(name, owner("job-b"), queued_at=2.0) is None
    assert not lease.renew(name, holder), "lost: another job holds it now"


def test_forgetting_a_dead_job_frees_its_target_and_its_place(lease: RedisTargetLease) -> None:
    name = target()
    assert lease.acquire(name, owner("job-a"), queued_at=1.0) is None
    assert lease.acquire(name, owner("job-b"), queued_at=2.0) == "job-a"
    lease.forget(name, "job-a")
    assert lease.holder(name) is None and "job-a" not in lease.leased_jobs()
    lease.forget(name, "job-b")
    assert lease.line(name) == []
