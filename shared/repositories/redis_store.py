"""Redis-backed job records, target leases and worker heartbeats.

Keys: ``flexdb:job:<id>`` (JSON, with TTL), ``flexdb:jobs`` (sorted set by creation time, for
newest-first listing), the lease keys of :class:`RedisTargetLease`, ``flexdb:worker:<name>`` (TTL heartbeat),
``flexdb:schedules`` (hash: schedule id -> JSON).
A job's state change is also published on ``flexdb:job-events:<id>`` so waiters wake at once.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any, TypeVar

import redis

from shared.core.errors import BrokerUnavailable, JobNotFound, ScheduleNotFound
from shared.domain.jobs import Job, JobFilter, JobStatus, Page, Progress
from shared.domain.ports import (
    IdempotencyStore,
    JobRepository,
    LeaseOwner,
    ScheduleRepository,
    TargetLease,
    WorkerRegistry,
)
from shared.domain.schedules import Schedule
from shared.repositories.broker import RedisTaskMessages

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

    def __init__(self, client: redis.Redis, ttl_seconds: int, messages: RedisTaskMessages) -> None:
        self._redis = client
        self._ttl = ttl_seconds
        self._messages = messages
        self._add = client.register_script(_ADD_JOB)

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
    def add(
        self,
        job: Job,
        task_name: str | None = None,
        callback_url: str | None = None,
        callback_headers: dict[str, str] | None = None,
    ) -> None:
        # One script, one round trip, all or nothing: the record, then its task's message.
        message, sent_event = self._messages.render(task_name, [job.id]) if task_name is not None else ("", None)
        keys = [self._key(job.id), f"{PREFIX}:jobs", self._messages.queue, line_key(job.target)]
        args = [
            json.dumps(job.to_dict()),
            self._ttl,
            self._score(job),
            job.id,
            message,
            self._messages.sent_topic,
            sent_event or "",
        ]
        if callback_url is not None:
            keys.append(self._key(job.id, "job-callback-secrets"))
            args.append(json.dumps({"url": callback_url, "headers": callback_headers or {}}))
        self._add(keys=keys, args=args)

    @redis_errors
    def get(self, job_id: str) -> Job:
        job = self._load_many([job_id])[0]
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r} (job records expire after their TTL).")
        return job

    @redis_errors
    def save(self, job: Job) -> None:
        pipe = self._redis.pipeline()
        self._queue_save(pipe, job)
        pipe.execute()

    def _queue_save(self, pipe: Any, job: Job) -> None:
        pipe.set(self._key(job.id), json.dumps(job.to_dict()), ex=self._ttl)
        if job.status.is_terminal:
            pipe.delete(self._key(job.id, "job-progress"))
        else:  # a state change starts its progress afresh (a job put back in the queue, say)
            pipe.set(self._key(job.id, "job-progress"), json.dumps(job.progress.to_dict()), ex=self._ttl)
        if job.status is not JobStatus.RUNNING:  # a hand-back request ends with the attempt it was for
            pipe.delete(self._key(job.id, "job-handback"))
        pipe.publish(self.events_channel(job.id), job.status.value)

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
    def request_handback(self, job_id: str) -> None:
        self._redis.set(self._key(job_id, "job-handback"), "1", ex=self._ttl)

    @redis_errors
    def handback_requested(self, job_id: str) -> bool:
        return bool(self._redis.exists(self._key(job_id, "job-handback")))

    @redis_errors
    def save_if(self, job: Job, expected: JobStatus) -> bool:
        key = self._key(job.id)
        with self._redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                if raw is None or json.loads(raw)["status"] != expected.value:
                    return False
                pipe.multi()
                self._queue_save(pipe, job)
                pipe.execute()
                return True
            except redis.WatchError:  # changed in between: the other writer wins
                return False

    @redis_errors
    def callback_secrets(self, job_id: str) -> tuple[str | None, dict[str, str]]:
        raw = self._redis.get(self._key(job_id, "job-callback-secrets"))
        if raw:
            record = json.loads(raw)
            return record["url"], record["headers"]
        # A job submitted before the URL was kept here: headers only, its record has the URL.
        legacy = self._redis.get(self._key(job_id, "job-callback-headers"))
        return None, json.loads(legacy) if legacy else {}

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


def line_key(target: str) -> str:
    """The sorted set of a target's jobs waiting for it (job id -> submit time)."""
    return f"{PREFIX}:line:{target}"


# Lease scripts run inside Redis, so taking, renewing and giving up a target are atomic.
# KEYS: lease, line (sorted set: job id -> submit time), leased (hash: job id -> target).
# A new job: its callback's secrets (when KEYS[5] is given), its record, its place in the index,
# its place in its target's line, its task's message and the task-sent event ("" for none). A
# script rather than MULTI/EXEC: one command to send and one reply to read instead of six.
# The line is joined at submit, before any worker can see the message: two jobs taken by two
# worker slots at once then still get the target in submit order.
# KEYS: record, index, queue, line[, secrets]  ARGV: record, ttl, score, job id, message, channel, event[, secrets]
_ADD_JOB = """
if KEYS[5] then redis.call('SET', KEYS[5], ARGV[8], 'EX', ARGV[2]) end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[4], 'NX', ARGV[3], ARGV[4])
  redis.call('LPUSH', KEYS[3], ARGV[5])
end
if ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return 1
"""

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[5] then
  local holder = string.match(current, '^[^ ]+')
  if holder ~= ARGV[2] then
    redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[2])
  end
  return holder
end
local head = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if head[1] and head[1] ~= ARGV[2] and tonumber(head[2]) <= tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[2])
  return head[1]
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[6])
return false
"""
_RENEW = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if not current and redis.call('HGET', KEYS[3], ARGV[2]) == ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""
# KEYS: lease, line, leased, woken, unleased. ARGV: job id, owner (or '' for any attempt of the job).
_FORGET = """
local current = redis.call('GET', KEYS[1])
if current and (current == ARGV[2] or (ARGV[2] == '' and string.match(current, '^[^ ]+') == ARGV[1])) then
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
local head = redis.call('ZRANGE', KEYS[2], 0, 0)
return head[1] or false
"""


class RedisTargetLease(TargetLease):
    """Keys: ``flexdb:lease:<target>`` (the owner, with a TTL), ``flexdb:line:<target>`` (the
    waiting jobs by submit time), ``flexdb:leased`` (job -> target of every job holding or
    having held a lease until it gives it up), ``flexdb:line-woken`` and ``flexdb:unleased``
    (the reaper's notes)."""

    def __init__(self, client: redis.Redis, ttl_seconds: float) -> None:
        self._redis = client
        self._ttl_ms = int(ttl_seconds * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._forget = client.register_script(_FORGET)

    @staticmethod
    def _keys(target: str) -> list[str]:
        return [f"{PREFIX}:lease:{target}", line_key(target), f"{PREFIX}:leased"]

    @redis_errors
    def acquire(self, target: str, owner: LeaseOwner, queued_at: float, replacing: LeaseOwner | None = None) -> str | None:
        args = [owner.encode(), owner.job_id, self._ttl_ms, repr(queued_at), replacing.encode() if replacing else "", target]
        ahead = self._acquire(keys=self._keys(target), args=args)
        return ahead or None

    @redis_errors
    def renew(self, target: str, owner: LeaseOwner) -> bool:
        return bool(self._renew(keys=self._keys(target), args=[owner.encode(), owner.job_id, self._ttl_ms, target]))

    @redis_errors
    def release(self, target: str, owner: LeaseOwner) -> str | None:
        return self._forget_keys(target, owner.job_id, owner.encode())

    @redis_errors
    def forget(self, target: str, job_id: str) -> None:
        self._forget_keys(target, job_id, "")

    def _forget_keys(self, target: str, job_id: str, owner: str) -> str | None:
        keys = [*self._keys(target), f"{PREFIX}:line-woken", f"{PREFIX}:unleased"]
        return self._forget(keys=keys, args=[job_id, owner]) or None

    @redis_errors
    def owner(self, target: str) -> LeaseOwner | None:
        return LeaseOwner.decode(self._redis.get(self._keys(target)[0]))

    @redis_errors
    def leased_jobs(self) -> dict[str, str]:
        return self._redis.hgetall(f"{PREFIX}:leased")

    @redis_errors
    def line(self, target: str) -> list[tuple[str, float]]:
        job_ids = self._redis.zrange(self._keys(target)[1], 0, -1)
        woken = self._redis.hmget(f"{PREFIX}:line-woken", job_ids) if job_ids else []
        return [(job_id, float(at or 0)) for job_id, at in zip(job_ids, woken)]

    @redis_errors
    def mark_woken(self, job_id: str) -> None:
        self._redis.hset(f"{PREFIX}:line-woken", job_id, repr(time.time()))

    @redis_errors
    def unleased_notes(self) -> dict[str, float]:
        return {job_id: float(at) for job_id, at in self._redis.hgetall(f"{PREFIX}:unleased").items()}

    @redis_errors
    def note_unleased(self, job_id: str, now: float) -> None:
        self._redis.hsetnx(f"{PREFIX}:unleased", job_id, repr(now))

    @redis_errors
    def clear_unleased(self, job_id: str) -> None:
        self._redis.hdel(f"{PREFIX}:unleased", job_id)

    @redis_errors
    def claim_sweep(self, seconds: float) -> bool:
        return bool(self._redis.set(f"{PREFIX}:reaper", "1", nx=True, px=max(1, int(seconds * 1000))))


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
