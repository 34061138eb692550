"""Redis-backed job records, target locks and worker heartbeats.

Keys: ``flexdb:job:<id>`` (JSON, with TTL), ``flexdb:jobs`` (sorted set by creation time, for
newest-first listing), ``flexdb:lock:<target>``, ``flexdb:worker:<name>`` (TTL heartbeat),
``flexdb:schedules`` (hash: schedule id -> JSON).
A job's state change is also published on ``flexdb:job-events:<id>`` so waiters wake at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import redis

from shared.core.errors import BrokerUnavailable, JobNotFound, ScheduleNotFound, TargetBusy
from shared.domain.jobs import Job, JobFilter, Page, Progress
from shared.domain.ports import IdempotencyStore, JobRepository, ScheduleRepository, TargetLock, WorkerRegistry
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
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # not a bad command: a lost server
            raise BrokerUnavailable(
                f"Redis is not answering ({type(exc).__name__}); job records and the queue are unavailable. "
                "Try again when FLEXDB_REDIS_URL answers."
            ) from None

    return wrapper  # type: ignore[return-value]


class RedisJobRepository(JobRepository):
    """A job is a JSON record; its live progress and a cancel request sit in keys of their own,
    so the worker's frequent progress writes never race a state change made by the API."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds

    @staticmethod
    def _key(job_id: str, part: str = "job") -> str:
        return f"{PREFIX}:{part}:{job_id}"

    @staticmethod
    def events_channel(job_id: str) -> str:
        return f"{PREFIX}:job-events:{job_id}"

    @staticmethod
    def _score(job: Job) -> float:
        return job.created_at.timestamp()

    def _hydrate(self, raw: str, progress: str | None, cancel: str | None) -> Job:
        job = Job.from_dict(json.loads(raw))
        if progress is not None and not job.status.is_terminal:
            job.progress = Progress.from_dict(json.loads(progress))
        job.cancel_requested = cancel is not None
        return job

    def _load_many(self, job_ids: list[str]) -> list[Job | None]:
        keys = [self._key(i, part) for i in job_ids for part in ("job", "job-progress", "job-cancel")]
        raws = self._redis.mget(keys) if keys else []
        return [
            self._hydrate(raws[n], raws[n + 1], raws[n + 2]) if raws[n] is not None else None
            for n in range(0, len(raws), 3)
        ]

    @redis_errors
    def add(self, job: Job) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(job.id), json.dumps(job.to_dict()), ex=self._ttl)
        pipe.zadd(f"{PREFIX}:jobs", {job.id: self._score(job)})
        pipe.execute()

    @redis_errors
    def get(self, job_id: str) -> Job:
        job = self._load_many([job_id])[0]
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r} (job records expire after their TTL).")
        return job

    @redis_errors
    def save(self, job: Job) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(job.id), json.dumps(job.to_dict()), ex=self._ttl)
        if job.status.is_terminal:
            pipe.delete(self._key(job.id, "job-progress"))
        pipe.publish(self.events_channel(job.id), job.status.value)
        pipe.execute()

    @redis_errors
    def save_progress(self, job_id: str, progress: Progress) -> None:
        self._redis.set(self._key(job_id, "job-progress"), json.dumps(progress.to_dict()), ex=self._ttl)

    @redis_errors
    def request_cancel(self, job_id: str) -> None:
        pipe = self._redis.pipeline()
        pipe.set(self._key(job_id, "job-cancel"), "1", ex=self._ttl)
        pipe.publish(self.events_channel(job_id), "cancel-requested")
        pipe.execute()

    @redis_errors
    def cancel_requested(self, job_id: str) -> bool:
        return bool(self._redis.exists(self._key(job_id, "job-cancel")))

    @redis_errors
    def save_callback_headers(self, job_id: str, headers: dict[str, str]) -> None:
        self._redis.set(self._key(job_id, "job-callback-headers"), json.dumps(headers), ex=self._ttl)

    @redis_errors
    def callback_headers(self, job_id: str) -> dict[str, str]:
        raw = self._redis.get(self._key(job_id, "job-callback-headers"))
        return json.loads(raw) if raw else {}

    @redis_errors
    def wait_for_change(self, job_id: str, seen: str, timeout_seconds: float) -> Job:
        """The job once its status differs from ``seen``, or as it is after the timeout."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            # Subscribe first, then read: a change between the two is not missed.
            pubsub.subscribe(self.events_channel(job_id))
            deadline = time.monotonic() + timeout_seconds
            while True:
                job = self.get(job_id)
                remaining = deadline - time.monotonic()
                if job.status.value != seen or remaining <= 0:
                    return job
                pubsub.get_message(timeout=min(remaining, 1.0))
        finally:
            pubsub.close()

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

    @redis_errors
    def iter_jobs(self) -> Iterator[Job]:
        return iter(list(self._newest_first(None)))

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
            jobs = self._load_many([job_id for job_id, _ in ids_scores])
            for (job_id, score), job in zip(ids_scores, jobs):
                if after_id is not None:
                    # Same-score members come in reverse id order; skip up to the cursor's own.
                    if repr(score) == max_score and job_id >= after_id:
                        continue
                if job is None:
                    self._redis.zrem(f"{PREFIX}:jobs", job_id)
                    offset -= 1
                    continue
                yield job


class RedisIdempotencyStore(IdempotencyStore):
    """``flexdb:idem:<sha256 of the key>`` -> {fingerprint, job_id}; the key itself is the
    client's and may be anything, so only its hash is stored."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self._redis = client
        self._ttl = ttl_seconds

    @staticmethod
    def _key(key: str) -> str:
        return f"{PREFIX}:idem:{hashlib.sha256(key.encode()).hexdigest()}"

    @redis_errors
    def reserve(self, key: str, fingerprint: str) -> tuple[str, str | None] | None:
        record = json.dumps({"fingerprint": fingerprint, "job_id": None})
        if self._redis.set(self._key(key), record, nx=True, ex=self._ttl):
            return None
        raw = self._redis.get(self._key(key))
        if raw is None:  # expired in between: take it
            return self.reserve(key, fingerprint)
        data = json.loads(raw)
        return data["fingerprint"], data["job_id"]

    @redis_errors
    def complete(self, key: str, fingerprint: str, job_id: str) -> None:
        self._redis.set(self._key(key), json.dumps({"fingerprint": fingerprint, "job_id": job_id}), ex=self._ttl)

    @redis_errors
    def release(self, key: str) -> None:
        self._redis.delete(self._key(key))


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
