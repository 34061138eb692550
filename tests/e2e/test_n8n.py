"""The n8n workflows of docs/n8n, imported into and run by a real n8n against the real stack.

n8n itself comes from tests/support/n8n.py: the version pinned in tests/e2e/n8n/package.json,
installed once into the user's cache (minutes the first time, nothing afterwards), run with a
private user folder for this module. The shipped files are imported unchanged (as a user would
import them); the copies that run get only what a user edits: the Config node's ``baseUrl``
(this stack's API), ``target`` and ``restoreDatabase``, plus a workflow id so the CLI can run
them (one copy also long-polls for 1 s instead of 10, to see the polling loop go round).

Headless, with no editor and no REST login (``n8n execute --file`` is gone in 2.x):

- backup-and-poll and the restore drill (from its "Run drill now" Manual Trigger) run to the
  end inside ``n8n execute --id=<id> --rawOutput``; their Wait nodes are short (2 s, under n8n's
  65 s threshold), so n8n keeps the execution in the CLI process, which prints it as JSON.
- backup-with-callback waits on a webhook: ``n8n execute`` runs it up to the Wait node, where
  n8n saves it as ``waiting`` in its database and the CLI returns. ``n8n start`` on a loopback
  port (``WEBHOOK_URL`` = that port, so ``$execution.resumeUrl`` points at it) shares the
  database; when the service POSTs the finished job to the resume URL, the server resumes the
  execution and runs it to the end. The test reads the result from n8n's database.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from tests.conftest import Stack, drop_database
from tests.support.n8n import N8n, N8nInstall
from tests.support.processes import REPO, wait_for

WORKFLOWS_DIR = REPO / "docs" / "n8n"
SHIPPED = {
    "backup-and-poll.json": "FlexDB: backup and poll",
    "backup-with-callback.json": "FlexDB: backup with callback",
    "nightly-restore-drill.json": "FlexDB: nightly restore drill",
}
# Workflow ids of the configured copies (n8n allows up to 21 characters). The random part keeps
# the POSTs' Idempotency-Key ("<workflow id>-<execution id>-backup") unique across test runs,
# since every run's n8n numbers its executions from 1.
_RUN = secrets.token_hex(3)
POLL, POLL_DOWN, POLL_SLOW = f"flexdbPoll{_RUN}", f"flexdbPollDown{_RUN}", f"flexdbPollSlow{_RUN}"
CALLBACK, DRILL = f"flexdbCallback{_RUN}", f"flexdbDrill{_RUN}"

pytestmark = [
    pytest.mark.e2e,
    # The first run on a machine installs n8n (npm ci, a few minutes); every step below has its
    # own bound (npm ci, each CLI call, each wait), so this only lifts the suite's 300 s default.
    pytest.mark.timeout(1800),
]


@pytest.fixture(scope="module")
def n8n(n8n_install: N8nInstall, tmp_path_factory: pytest.TempPathFactory) -> N8n:
    return N8n(n8n_install, tmp_path_factory.mktemp("n8n"))


def _configured(name: str, workflow_id: str, **config: str) -> dict:
    """A shipped workflow as a user would set it up: the Config node's fields edited."""
    workflow = copy.deepcopy(json.loads((WORKFLOWS_DIR / name).read_text()))
    workflow["id"] = workflow_id
    (node,) = [n for n in workflow["nodes"] if n["name"] == "Config"]
    fields = {a["name"]: a for a in node["parameters"]["assignments"]["assignments"]}
    for key, value in config.items():
        assert key in fields, f"{name}: the Config node has no field {key!r}"
        fields[key]["value"] = value
    return workflow


@pytest.fixture(scope="module")
def drill_database() -> Iterator[str]:
    name = f"flexdb_it_drill_{secrets.token_hex(4)}"
    yield name
    drop_database(name)


@pytest.fixture(scope="module")
def imported(n8n: N8n, stack: Stack, drill_database: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Imports the shipped files unchanged, then the configured copies; returns id -> name."""
    n8n.import_workflows_from_dir(WORKFLOWS_DIR)
    base = stack.api.base_url
    copies = [
        _configured("backup-and-poll.json", POLL, baseUrl=base, target="pg"),
        _configured("backup-and-poll.json", POLL_DOWN, baseUrl=base, target="pg-down"),
        _configured("backup-with-callback.json", CALLBACK, baseUrl=base, target="pg"),
        _configured("nightly-restore-drill.json", DRILL, baseUrl=base, target="pg", restoreDatabase=drill_database),
    ]
    copies[1]["name"] += " (pg-down)"
    # The loop test's copy long-polls for 1 s instead of 10, so that a job held up for a few
    # seconds makes "Done?" answer false and the workflow go round again, quickly.
    slow = _configured("backup-and-poll.json", POLL_SLOW, baseUrl=base, target="pg")
    slow["name"] += " (1 s long-poll)"
    (poll,) = [n for n in slow["nodes"] if n["name"] == "Get job"]
    (wait_arg,) = poll["parameters"]["queryParameters"]["parameters"]
    assert wait_arg == {"name": "wait", "value": "10"}, wait_arg
    wait_arg["value"] = "1"
    copies.append(slow)
    path = tmp_path_factory.mktemp("n8n-workflows") / "configured.json"
    path.write_text(json.dumps(copies))
    n8n.import_workflows(path)
    # Jobs of earlier tests end first: a backup of "pg" must not meet another one holding the target.
    wait_for(lambda: all(job["done"] for job in stack.api.get("/jobs?limit=100").body["items"]), 60, what="stack idle")
    return n8n.workflows()


def _job(stack: Stack, job_id: str) -> dict:
    response = stack.api.get(f"/jobs/{job_id}")
    assert response.status == 200, response.text
    return response.body


def _listed_backup_ids(stack: Stack, target: str) -> set[str]:
    response = stack.api.get(f"/backups?target={target}&limit=100")
    assert response.status == 200, response.text
    return {item["id"] for item in response.body["items"]}


def _require_long_poll(stack: Stack) -> None:
    # Strict query schemas: an API without long-poll refuses ?wait with 422; one with it
    # validates the argument and then does not find this job (404).
    response = stack.api.get("/jobs/n8n-probe-no-such-job?wait=1")
    if response.status == 422:
        pytest.skip("long-poll not in this API yet (GET /jobs/<id>?wait=1 answers 422)")
    assert response.status == 404, response.text


def _require_callbacks(stack: Stack) -> None:
    # callback_url is validated before the target is looked up: 404 means it was accepted.
    response = stack.api.post(
        "/backups", {"target": "n8n-probe-no-such-target", "callback_url": "http://127.0.0.1:9/probe"}
    )
    if response.status == 422:
        pytest.skip(f"callbacks not in this API yet (POST /backups with callback_url answers 422: {response.text})")
    assert response.status == 404, response.text


def test_the_shipped_workflows_import_into_n8n(imported: dict[str, str]) -> None:
    names = list(imported.values())
    for name in SHIPPED.values():
        assert names.count(name) == 2, (
            f"{name!r} imported {names.count(name)} times, expected the shipped file and its configured copy: {imported}"
        )
    assert {POLL, POLL_DOWN, POLL_SLOW, CALLBACK, DRILL} <= set(imported), imported


def test_backup_and_poll_ends_at_backup_succeeded_with_a_real_backup(n8n: N8n, stack: Stack, imported: dict) -> None:
    _require_long_poll(stack)
    execution = n8n.execute(POLL)
    assert execution.status == "success", execution.summary()
    assert execution.last_node == "Backup succeeded", execution.summary()
    (submitted,) = execution.output("Start backup")
    (finished,) = execution.output("Backup succeeded")
    assert finished["id"] == submitted["id"] and finished["status"] == "succeeded", finished
    # Every poll asked about the job the POST started.
    assert all(
        item["id"] == submitted["id"]
        for run in range(execution.runs("Get job"))
        for item in execution.output("Get job", run)
    )

    job = _job(stack, submitted["id"])
    assert job["kind"] == "backup" and job["target"] == "pg" and job["status"] == "succeeded", job
    assert job["backup_id"] == finished["backup_id"]
    assert job["backup_id"] in _listed_backup_ids(stack, "pg")


@contextmanager
def dump_held_up(stack: Stack, seconds: float) -> Iterator[None]:
    """The next backup of "pg" runs, but its pg_dump waits on an ACCESS EXCLUSIVE lock until
    ``seconds`` after the job turned ``running``."""
    uri = f"postgresql://postgres@127.0.0.1:5432/{stack.databases['source']}"
    with psycopg.connect(uri, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS n8n_e2e_lock (id int)")
    conn = psycopg.connect(uri)
    conn.execute("LOCK TABLE n8n_e2e_lock IN ACCESS EXCLUSIVE MODE")

    def release() -> None:
        try:
            wait_for(lambda: stack.api.get("/jobs?status=running&target=pg").body["items"], 60, what="a running backup")
            time.sleep(seconds)
        finally:
            conn.rollback()

    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    try:
        yield
    finally:
        releaser.join()
        conn.close()
        with psycopg.connect(uri, autocommit=True) as cleanup:
            cleanup.execute("DROP TABLE IF EXISTS n8n_e2e_lock")


def test_backup_and_poll_goes_round_the_loop_until_the_job_is_done(n8n: N8n, stack: Stack, imported: dict) -> None:
    _require_long_poll(stack)
    with dump_held_up(stack, 3.5):
        execution = n8n.execute(POLL_SLOW)
    assert execution.status == "success", execution.summary()
    assert execution.last_node == "Backup succeeded", execution.summary()
    # Polled while the dump waited on the lock ("Done?" false, back to "Wait 2 s"), then once more.
    assert execution.runs("Get job") >= 2 and execution.runs("Wait 2 s") >= 2, execution.summary()
    assert execution.output("Get job", run=0)[0]["status"] == "running"
    assert execution.output("Get job", run=-1)[0]["status"] == "succeeded"
    (submitted,) = execution.output("Start backup")
    assert _job(stack, submitted["id"])["backup_id"] in _listed_backup_ids(stack, "pg")


def test_backup_and_poll_ends_at_backup_failed_when_the_backup_fails(n8n: N8n, stack: Stack, imported: dict) -> None:
    _require_long_poll(stack)
    execution = n8n.execute(POLL_DOWN)
    # "Backup failed" is a Stop and Error node: the execution fails, so n8n's error workflow fires.
    assert execution.status == "error", execution.summary()
    assert execution.last_node == "Backup failed", execution.summary()
    (submitted,) = execution.output("Start backup")
    job = _job(stack, submitted["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "target_unreachable", job
    assert job["id"] in execution.error["message"] and "target_unreachable" in execution.error["message"], (
        execution.error
    )


def test_backup_with_callback_resumes_on_the_signed_callback(n8n: N8n, stack: Stack, imported: dict) -> None:
    _require_callbacks(stack)
    # The dump is held up for a second so that the callback cannot arrive before n8n has saved
    # the execution as waiting: n8n answers 409 "is running already" until then, and the
    # service takes every 4xx but 429 as final, so such a callback would never be retried.
    with n8n.server() as server, dump_held_up(stack, 1.0):
        waiting = n8n.execute(CALLBACK)
        # The CLI returns as soon as n8n has saved the execution at the Wait node.
        assert waiting.status == "waiting" and waiting.last_node == "Wait for callback", waiting.summary()
        assert waiting.id is not None
        (submitted,) = waiting.output("Start backup")
        execution = n8n.wait_execution(waiting.id, timeout=60)
        assert execution.status == "success", execution.summary() + "\n" + server.output()[-3000:]
    assert execution.last_node == "Backup succeeded", execution.summary()

    # What the Wait node received: the finished job, POSTed by the service and signed.
    (callback,) = execution.output("Wait for callback")
    body, headers = callback["body"], callback["headers"]
    assert body["id"] == submitted["id"] and body["status"] == "succeeded" and body["done"] is True, body
    assert headers["x-flexdb-event"] == "job.succeeded" and headers["x-flexdb-job-id"] == submitted["id"], headers
    # The Wait node keeps the raw body too ("Raw Body" on), as a signature check needs the exact bytes.
    raw = base64.b64decode(execution.run_data["Wait for callback"][-1]["data"]["main"][0][0]["binary"]["data"]["data"])
    assert json.loads(raw) == body
    signed = headers["x-flexdb-timestamp"].encode() + b"." + raw
    expected = "sha256=" + hmac.new(stack.env["FLEXDB_CALLBACK_SECRET"].encode(), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-flexdb-signature"], expected), headers

    job = _job(stack, submitted["id"])
    assert job["status"] == "succeeded" and job["backup_id"] == body["backup_id"], job
    assert job["callback"]["status"] == "delivered" and job["callback"]["response_status"] == 200, job["callback"]
    assert job["backup_id"] in _listed_backup_ids(stack, "pg")


def test_nightly_restore_drill_restores_the_new_backup_into_the_scratch_database(
    n8n: N8n, stack: Stack, imported: dict, drill_database: str
) -> None:
    _require_long_poll(stack)
    execution = n8n.execute(DRILL)
    assert execution.status == "success", execution.summary()
    assert execution.last_node == "Restore drill passed", execution.summary()
    (backup,) = execution.output("Get backup job", run=-1)
    (restore,) = execution.output("Restore drill passed")
    backup_job, restore_job = _job(stack, backup["id"]), _job(stack, restore["id"])
    assert backup_job["status"] == "succeeded" and backup_job["backup_id"] in _listed_backup_ids(stack, "pg"), (
        backup_job
    )
    assert restore_job["kind"] == "restore" and restore_job["status"] == "succeeded", restore_job
    assert restore_job["params"]["backup_id"] == backup_job["backup_id"], restore_job
    assert restore_job["params"]["database"] == drill_database and restore_job["params"]["drop"] is True, restore_job
    # The scratch database now holds what the source held.
    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.databases['source']}") as conn:
        source_tables = conn.execute(tables).fetchall()
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{drill_database}") as conn:
        assert conn.execute(tables).fetchall() == source_tables
