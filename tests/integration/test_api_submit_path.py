"""The submit path as a user meets it: the API under gunicorn (configured as shipped) on a Redis
database of its own, first with no worker, so what a submit leaves in Redis can be read before
anything consumes it; then with a real worker, which runs what the API queued."""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from shared.core.errors import BrokerUnavailable
from shared.core.settings import Settings
from shared.domain.jobs import JobStatus
from shared.domain.tasks import QUEUE
from shared.repositories.broker import RedisTaskMessages
from shared.repositories.redis_store import RedisIdempotencyStore, RedisJobRepository
from shared.services.container import build_services
from shared.services.jobs import JobService
from tests.conftest import drop_database, pg_admin, pg_uri, service_env
from tests.support.processes import ApiClient, ManagedProcess, free_port, python_argv, wait_for

SUBMITS = 200


@dataclass
class ApiAlone:
    api: ApiClient
    redis: redis.Redis
    env: dict[str, str]
    tmp: Path
    processes: list[ManagedProcess]

    def queued_messages(self) -> list[dict]:
        """The Celery messages waiting in the queue, decoded."""
        return [json.loads(raw) for raw in self.redis.lrange(QUEUE, 0, -1)]

    def queued_job_ids(self) -> list[str]:
        return [json.loads(message_body(message))[0][0] for message in self.queued_messages()]


def message_body(message: dict) -> str:
    return base64.b64decode(message["body"]).decode()


@pytest.fixture(scope="module")
def scratch_database() -> Iterator[str]:
    name = f"flexdb_submit_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    drop_database(name)


@pytest.fixture(scope="module")
def api_alone(
    tmp_path_factory: pytest.TempPathFactory, own_redis_url: str, scratch_database: str
) -> Iterator[ApiAlone]:
    tmp = tmp_path_factory.mktemp("submit-path")
    targets = {
        "pg": {"engine": "postgresql", "uri": pg_uri(scratch_database)},
        # Nothing listens there: a job for it that a worker runs fails at once.
        "closed": {"engine": "postgresql", "uri": pg_uri("nowhere", port=free_port())},
    }
    port = free_port()
    env = service_env(tmp, targets, redis_url=own_redis_url, FLEXDB_API_PORT=str(port), FLEXDB_API_WORKERS="2")
    # Exactly the command the Docker image and `make run` use.
    api = ManagedProcess(
        "api",
        python_argv("-m", "gunicorn", "--config", "python:api.gunicorn_conf", "api.wsgi:app"),
        env,
        tmp / "api.log",
    )
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1")
    processes = [api]
    try:
        wait_for(lambda: client.get("/targets").status == 200, 60, what="API up")
        yield ApiAlone(client, redis.Redis.from_url(own_redis_url, decode_responses=True), env, tmp, processes)
    finally:
        for process in processes:
            process.stop()


def redis_clients(r: redis.Redis) -> int:
    """Connections to this Redis database (the API's pools, and this test's one)."""
    db = r.connection_pool.connection_kwargs.get("db", 0)
    return sum(1 for client in r.client_list() if int(client["db"]) == db)


def test_many_submits_reuse_the_same_redis_connections(api_alone: ApiAlone) -> None:
    def submit(_: int) -> int:
        return api_alone.api.post("/backups", {"target": "closed"}).status

    settings = Settings.from_env(api_alone.env)
    # Pooled per process: at most one per request thread of each gunicorn worker, plus the few
    # a process opens once (and this test's own), however many requests come.
    bound = settings.api_workers * (settings.api_threads + 3) + 1
    with ThreadPoolExecutor(32) as pool:  # more clients than gunicorn has threads: every one is busy
        for _ in range(4):
            assert set(pool.map(submit, range(SUBMITS))) == {202}
            assert redis_clients(api_alone.redis) <= bound


def test_every_queued_message_has_its_job_record_and_is_a_celery_task(api_alone: ApiAlone) -> None:
    created = api_alone.api.post("/backups", {"target": "closed"})
    assert created.status == 202 and created.headers["Location"] == f"/api/v1/jobs/{created.body['id']}"
    ids = api_alone.queued_job_ids()
    assert created.body["id"] in ids
    for job_id in ids:
        record = api_alone.redis.get(f"flexdb:job:{job_id}")
        assert record is not None and json.loads(record)["status"] == "queued", job_id
    message = api_alone.queued_messages()[ids.index(created.body["id"])]
    assert message["headers"]["task"] == "flexdb.backup"
    assert message["content-type"] == "application/json"
    assert json.loads(message_body(message))[0] == [created.body["id"]], "the job id is the only argument"
    assert "closed" not in json.dumps(message) and "postgresql://" not in json.dumps(message)


def test_a_message_written_for_a_submit_is_the_one_celery_writes(api_alone: ApiAlone, own_redis_url: str) -> None:
    """Byte for byte but for ids and tags: what the API writes in one round trip and what
    Celery's own send_task writes for the same task."""
    settings = Settings.from_env({"FLEXDB_REDIS_URL": own_redis_url, "FLEXDB_TARGETS": "{}"})
    services = build_services(settings)
    events = services.redis.pubsub(ignore_subscribe_messages=True)
    events.subscribe(f"/{services.redis.connection_pool.connection_kwargs['db']}.celeryev/task.sent")  # Flower's
    services.celery.send_task("flexdb.backup", args=["0" * 32], queue=QUEUE)
    celerys = json.loads(services.redis.lpop(QUEUE))
    api_alone.api.post("/backups", {"target": "closed"})
    ours = json.loads(services.redis.lpop(QUEUE))
    sent = []
    deadline = time.monotonic() + 10
    while len(sent) < 2 and time.monotonic() < deadline:
        message = events.get_message(timeout=1)  # None for the subscription's own confirmation
        if message:
            sent.append(json.loads(message["data"]))
    events.close()

    def event_shape(event: dict) -> tuple:
        properties = event["properties"]
        return (
            sorted(event),
            event["content-type"],
            sorted(event["headers"]),
            sorted(properties),
            properties["delivery_info"],
            sorted(json.loads(message_body(event))),
        )

    assert len(sent) == 2 and event_shape(sent[1]) == event_shape(sent[0])
    assert json.loads(message_body(sent[1]))["uuid"] == ours["headers"]["id"]

    def comparable(message: dict) -> dict:
        headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id", "argsrepr", "origin")}
        properties = {
            k: v for k, v in message["properties"].items() if k not in ("correlation_id", "delivery_tag", "reply_to")
        }
        body = json.loads(message_body(message))
        return {**message, "headers": headers, "properties": properties, "body": [len(body[0]), *body[1:]]}

    assert comparable(ours) == comparable(celerys)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"]


def test_an_idempotent_resubmit_queues_nothing_more(api_alone: ApiAlone) -> None:
    key = str(uuid.uuid4())
    first = api_alone.api.post("/backups", {"target": "closed"}, headers={"Idempotency-Key": key})
    queued = api_alone.redis.llen(QUEUE)
    again = api_alone.api.post("/backups", {"target": "closed"}, headers={"Idempotency-Key": key})
    assert (first.status, again.status) == (202, 202)
    assert again.body["id"] == first.body["id"] and again.headers.get("Idempotent-Replayed") == "true"
    assert api_alone.redis.llen(QUEUE) == queued, "a replay sends no second task"
    other = api_alone.api.post("/backups", {"target": "pg"}, headers={"Idempotency-Key": key})
    assert other.status == 422 and other.body["code"] == "idempotency_key_reused"
    assert api_alone.redis.llen(QUEUE) == queued


def test_a_poll_returns_what_the_submit_returned(api_alone: ApiAlone) -> None:
    created = api_alone.api.post("/backups", {"target": "closed", "options": {}})
    polls = [api_alone.api.get(created.headers["Location"]) for _ in range(3)]
    assert [p.status for p in polls] == [200] * 3
    assert all(p.body == created.body for p in polls), (created.body, polls[0].body)
    assert polls[0].headers["Retry-After"] == created.headers["Retry-After"]


def test_callback_secrets_are_kept_beside_the_job_not_in_it_nor_in_the_message(api_alone: ApiAlone) -> None:
    token = "tok-" + secrets.token_hex(8)
    created = api_alone.api.post(
        "/backups",
        {
            "target": "closed",
            "callback_url": f"http://127.0.0.1:9/hook?token={token}",
            "callback_headers": {"X-Receiver-Key": token},
        },
    )
    assert created.status == 202, created.body
    assert token not in created.text and created.body["callback"]["url"].endswith("token=***")
    job_id = created.body["id"]
    assert token in api_alone.redis.get(f"flexdb:job-callback-secrets:{job_id}")
    assert token not in api_alone.redis.get(f"flexdb:job:{job_id}")
    assert all(token not in json.dumps(message) for message in api_alone.queued_messages())


class RedisFailsAfterTheWrite(RedisJobRepository):
    """Redis dying between taking a submit's transaction and answering cannot be staged on
    purpose: this repository (the real one, on the real Redis) raises right after its write
    (or, with ``write=False``, instead of it)."""

    write = True

    def add(self, job, *args, **kwargs) -> None:
        if self.write:
            super().add(job, *args, **kwargs)
        raise BrokerUnavailable("Redis is not answering (ConnectionError).")


@pytest.mark.parametrize("written", [True, False], ids=["written", "not-written"])
def test_a_submit_answered_503_never_runs_and_leaves_no_queued_job(own_redis_url: str, written: bool) -> None:
    targets = {"closed": {"engine": "postgresql", "uri": pg_uri("x", port=free_port())}}
    settings = Settings.from_env({"FLEXDB_REDIS_URL": own_redis_url, "FLEXDB_TARGETS": json.dumps(targets)})
    services = build_services(settings)
    repository = RedisFailsAfterTheWrite(
        services.redis,
        settings.job_ttl_seconds,
        RedisTaskMessages(services.celery, QUEUE, services.redis.connection_pool.connection_kwargs["db"]),
    )
    repository.write = written
    jobs = JobService(
        repository,
        services.targets,
        services.catalog,
        RedisIdempotencyStore(services.redis, settings.idempotency_ttl_seconds),
        services.lease,
        services.recovery,
    )
    known = set(services.redis.zrange("flexdb:jobs", 0, -1))
    queued = services.redis.llen(QUEUE)
    with pytest.raises(BrokerUnavailable):
        jobs.submit_backup("closed")
    new = set(services.redis.zrange("flexdb:jobs", 0, -1)) - known
    assert services.redis.llen(QUEUE) == queued + len(new) == queued + written
    for job_id in new:  # its message is queued: the worker must find it ended
        job = services.jobs.get(job_id)
        assert job.status is JobStatus.FAILED and job.error.code == "broker_unavailable"


def test_a_worker_runs_what_the_api_queued(api_alone: ApiAlone) -> None:
    created = api_alone.api.post("/backups", {"target": "pg"})
    assert created.status == 202
    worker = ManagedProcess(
        "worker",
        python_argv(
            "-m",
            "celery",
            "-A",
            "worker.app",
            "worker",
            "--loglevel",
            "INFO",
            "--hostname",
            f"submit-{secrets.token_hex(3)}@%h",
        ),
        api_alone.env,
        api_alone.tmp / "worker.log",
    )
    api_alone.processes.append(worker)
    job = api_alone.api.wait_job(created.headers["Location"], timeout=120)
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    assert job["backup_id"] and api_alone.api.get(f"/backups/{job['backup_id']}").status == 200
    # The jobs queued by the tests above ran too, each once.
    wait_for(lambda: api_alone.redis.llen(QUEUE) == 0, 120, what="the queue drained")


def test_a_submit_logs_one_line_that_names_its_job(api_alone: ApiAlone) -> None:
    created = api_alone.api.post(
        "/backups", {"target": "closed"}, headers={"X-Request-ID": "submit-" + secrets.token_hex(6)}
    )
    request_id = created.headers["X-Request-ID"]

    def lines_of_the_request() -> list[dict]:
        lines = [json.loads(line) for line in api_alone.processes[0].output().splitlines() if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == request_id]

    lines = wait_for(lines_of_the_request, 10, what="the request's log line")
    assert [line["event"] for line in lines] == ["http.request"]
    assert lines[0]["job_id"] == created.body["id"] and lines[0]["status"] == 202
    assert lines[0]["kind"] == "backup" and lines[0]["target"] == "closed"
