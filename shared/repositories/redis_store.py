"""Redis-backed job records, target locks and worker heartbeats.

Keys: ``flexdb:job:<id>`` (JSON, with TTL), ``flexdb:jobs`` (sorted set by creation time, for
newest-first listing), ``flexdb:lock:<target>``, ``flexdb:worker:<name>`` (TTL heartbeat),
``flexdb:schedules`` (hash: schedule id -> JSON).
A job's state change is also published on ``flexdb:job-events:<id>`` so waiters wake at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import redis

from shared.core.errors import BrokerUnavailable, JobNotFound, ScheduleNotFound, TargetBusy
from shared.domain.jobs import Job, JobFilter, Page, Progress
from shared.domain.ports import JobRepository, ScheduleRepository, TargetLock, WorkerRegistry
from shared.domain.schedules import Schedule

PREFIX = "flexdb"
F = TypeVar("F", bound=Callable[..., Any])


def make_redis(url: str, timeout_seconds: float) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_connect_timeout=timeout_seconds, socket_timeout=timeout_seconds + 30, decode_responses=True
    )


def redis_errors(func: F) -> F:
    """Turn a lost Redis into the one error users see for it."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except redis.RedisError as exc:
            raise BrokerUnavailable(
                f"Redis is not answering ({type(exc).__name__}); job records and the queue are unavailable. "
                "Try again when FLEXDB_REDIS_URL answers."
            ) from None

    return wrapper  # type: ignore[return-value]


class RedisJobRepository(JobRepository):
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds

    @staticmethod
    def _key(job_id: str) -> str:
        return f"{PREFIX}:job:{job_id}"

    @staticmethod
    def events_channel(job_id: str) -> str:
        return f"{PREFIX}:job-events:{job_id}"

    @staticmethod
    def _score(job: Job) -> float:
        return job.created_at.timestamp()

    @redis_errors
    def add(self, job: Job) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(job.id), json.dumps(job.to_dict()), ex=self._ttl)
        pipe.zadd(f"{PREFIX}:jobs", {job.id: self._score(job)})
        pipe.execute()

    @redis_errors
    def get(self, job_id: str) -> Job:
        raw = self._redis.get(self._key(job_id))
        if raw is None:
            raise JobNotFound(f"No job with id {job_id!r} (job records expire after their TTL).")
        return Job.from_dict(json.loads(raw))

    @redis_errors
    def save(self, job: Job) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(job.id), json.dumps(job.to_dict()), ex=self._ttl)
        pipe.publish(self.events_channel(job.id), job.status.value)
        pipe.execute()

    @redis_errors
    def save_progress(self, job_id: str, progress: Progress) -> None:
        raw = self._redis.get(self._key(job_id))
        if raw is None:
            return
        data = json.loads(raw)
        data["progress"] = progress.to_dict()
        self._redis.set(self._key(job_id), json.dumps(data), ex=self._ttl)

    @redis_errors
    def find(self, filters: JobFilter, limit: int, cursor: str | None) -> Page:
        items: list[Job] = []
        for job in self._newest_first(cursor):
            if filters.matches(job):
                items.append(job)
                if len(items) == limit + 1:
                    break
        has_more = len(items) > limit
        items = items[:limit]
        next_cursor = f"{self._score(items[-1])!r}:{items[-1].id}" if has_more and items else None
        return Page(items, next_cursor)

    def _newest_first(self, cursor: str | None, batch: int = 200) -> Iterator[Job]:
        """Walk the index from ``cursor`` (exclusive) down, skipping expired records."""
        max_score, after_id = "+inf", None
        if cursor:
            score, _, after_id = cursor.partition(":")
            max_score = score
        offset = 0
        while True:
            ids_scores = self._redis.zrevrangebyscore(
                f"{PREFIX}:jobs", max_score, "-inf", start=offset, num=batch, withscores=True
            )
            if not ids_scores:
                return
            offset += len(ids_scores)
            raws = self._redis.mget([self._key(job_id) for job_id, _ in ids_scores])
            for (job_id, score), raw in zip(ids_scores, raws):
                if after_id is not None:
                    # Same-score members come in reverse id order; skip up to the cursor's own.
                    if repr(score) == max_score and job_id >= after_id:
                        continue
                if raw is None:
                    self._redis.zrem(f"{PREFIX}:jobs", job_id)
                    offset -= 1
                    continue
                yield Job.from_dict(json.loads(raw))


class RedisTargetLock(TargetLock):
    def __init__(self, client: redis.Redis, ttl_seconds: int, wait_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._wait = wait_seconds

    @contextmanager
    def hold(self, target: str, job_id: str) -> Iterator[None]:
        lock = self._redis.lock(
            f"{PREFIX}:lock:{target}", timeout=self._ttl, blocking=self._wait > 0, blocking_timeout=self._wait or None
        )
        try:
            acquired = lock.acquire(token=job_id)
        except redis.RedisError:
            raise BrokerUnavailable("Redis is not answering; cannot take the target lock.") from None
        if not acquired:
            holder = self.holder(target)
            raise TargetBusy(
                f"Target {target!r} is busy with job {holder}; one backup or restore runs per target at a time. "
                "Submit again when that job has finished."
            )
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass  # expired already: nothing to release


    @redis_errors
    def holder(self, target: str) -> str | None:
        return self._redis.get(f"{PREFIX}:lock:{target}")


class RedisScheduleRepository(ScheduleRepository):
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._key = f"{PREFIX}:schedules"

    @redis_errors
    def save(self, schedule: Schedule) -> None:
        self._redis.hset(self._key, schedule.id, json.dumps(schedule.to_dict()))

    @redis_errors
    def get(self, schedule_id: str) -> Schedule:
        raw = self._redis.hget(self._key, schedule_id)
        if raw is None:
            raise ScheduleNotFound(f"No schedule with id {schedule_id!r}.")
        return Schedule.from_dict(json.loads(raw))

    @redis_errors
    def all(self) -> list[Schedule]:
        schedules = [Schedule.from_dict(json.loads(raw)) for raw in self._redis.hvals(self._key)]
        return sorted(schedules, key=lambda s: (s.target, s.created_at, s.id))

    @redis_errors
    def delete(self, schedule_id: str) -> None:
        self._redis.hdel(self._key, schedule_id)


class RedisWorkerRegistry(WorkerRegistry):
    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds

    def beat(self, worker_name: str) -> None:
        self._redis.set(f"{PREFIX}:worker:{worker_name}", str(time.time()), ex=self._ttl)

    def forget(self, worker_name: str) -> None:
        self._redis.delete(f"{PREFIX}:worker:{worker_name}")

    @redis_errors
    def alive(self) -> list[str]:
        return sorted(key.split(":", 2)[2] for key in self._redis.scan_iter(f"{PREFIX}:worker:*"))
