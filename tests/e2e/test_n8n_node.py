"""The n8n community node (integrations/n8n) in real n8n, against the real stack.

The package is built and packed by tests/support/n8n_node.py (cached like the n8n install) and
its tarball unpacked into a folder that ``N8N_CUSTOM_EXTENSIONS`` names, so n8n loads what a
user installs; the n8n is the one tests/e2e/test_n8n.py runs (tests/support/n8n.py), with a user
folder of this module. Workflows are written here as a user builds them in the editor (node type
``CUSTOM.flexDb`` when loaded from an extensions folder), imported with ``n8n import:workflow``
together with their credentials (``n8n import:credentials``), and run with ``n8n execute``.
"""

from __future__ import annotations

import json
import secrets
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from tests.conftest import CANARY_PASSWORD, Stack, drop_database
from tests.e2e.test_n8n import dump_held_up
from tests.support.n8n import MANIFEST_DIR, N8n, N8nInstall
from tests.support.n8n_node import PACKAGE_DIR, NodePackage
from tests.support.processes import ApiClient, ManagedProcess, free_port, python_argv, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

# Random ids per run: the node's default Idempotency-Key is made of workflow, execution and node
# ids, and every run's n8n numbers its executions from 1.
_RUN = secrets.token_hex(3)
CREDENTIALS, TOKEN_CREDENTIALS, WRONG_TOKEN_CREDENTIALS = (
    f"flexdbCred{_RUN}",
    f"flexdbTok{_RUN}",
    f"flexdbBadTok{_RUN}",
)
ROUND_TRIP, FAILING, CONTINUE = f"nodeRoundTrip{_RUN}", f"nodeFailing{_RUN}", f"nodeContinue{_RUN}"
API_TOKEN = "n8n-node-token-" + secrets.token_hex(8)


# --------------------------------------------------------------------------------------------
# The package
# --------------------------------------------------------------------------------------------


def test_the_packed_package_holds_the_build_and_its_n8n_manifest(flexdb_node_package: NodePackage) -> None:
    with tarfile.open(flexdb_node_package.tarball) as packed:
        names = set(packed.getnames())
        manifest = json.load(packed.extractfile("package/package.json"))
    declared = manifest["n8n"]["nodes"] + manifest["n8n"]["credentials"]
    assert declared and all(f"package/{path}" in names for path in declared), (declared, sorted(names))
    assert "package/dist/icons/flexdb.svg" in names, sorted(names)
    # What a user installs is the build: no sources, no dependencies.
    assert not [name for name in names if name.endswith(".ts") or "node_modules" in name], sorted(names)
    assert "n8n-community-node-package" in manifest["keywords"]
    assert manifest["n8n"]["n8nNodesApiVersion"] == 1


def test_the_node_is_built_against_the_n8n_workflow_of_the_n8n_the_tests_run() -> None:
    # An n8n-workflow other than n8n's own may pull an isolated-vm that does not build on Node 20.
    manifest = json.loads((PACKAGE_DIR / "package.json").read_text())
    n8n_lock = json.loads((MANIFEST_DIR / "package-lock.json").read_text())
    n8n_workflow = n8n_lock["packages"]["node_modules/n8n-workflow"]["version"]
    assert manifest["devDependencies"]["n8n-workflow"] == n8n_workflow
    assert manifest["peerDependencies"]["n8n-workflow"] == n8n_workflow
    lock = (PACKAGE_DIR / "package-lock.json").read_text()
    assert '"resolved"' not in lock, "package-lock.json names a registry; regenerate it with the .npmrc beside it"
    assert json.loads(lock)["packages"]["node_modules/n8n-workflow"]["version"] == n8n_workflow


# --------------------------------------------------------------------------------------------
# Workflows, as the editor saves them
# --------------------------------------------------------------------------------------------


def flexdb(
    name: str, operation: str, credentials: str = CREDENTIALS, settings: dict | None = None, **parameters
) -> dict:
    return {
        "id": f"{name.lower().replace(' ', '-').replace(',', '')}-{_RUN}",
        "name": name,
        "type": "CUSTOM.flexDb",
        "typeVersion": 1,
        "parameters": {"operation": operation, **parameters},
        "credentials": {"flexDbApi": {"id": credentials, "name": credentials}},
        **(settings or {}),
    }


CONTINUE_ON_FAIL = {"onError": "continueRegularOutput"}
ONCE = {"executeOnce": True}


def workflow(workflow_id: str, name: str, *nodes: dict) -> dict:
    """A Manual Trigger followed by ``nodes``, one after the other."""
    chain = [
        {
            "id": f"start-{_RUN}",
            "name": "Start",
            "type": "n8n-nodes-base.manualTrigger",
            "typeVersion": 1,
            "parameters": {},
        }
    ]
    chain += nodes
    for x, node in enumerate(chain):
        node["position"] = [x * 220, 0]
    connections = {
        a["name"]: {"main": [[{"node": b["name"], "type": "main", "index": 0}]]} for a, b in zip(chain, chain[1:])
    }
    return {
        "id": workflow_id,
        "name": name,
        "active": False,
        "settings": {},
        "nodes": chain,
        "connections": connections,
    }


def node_id(flow: dict, name: str) -> str:
    (node,) = [n for n in flow["nodes"] if n["name"] == name]
    return node["id"]


@pytest.fixture(scope="module")
def restore_database() -> Iterator[str]:
    name = f"flexdb_it_n8n_node_{secrets.token_hex(4)}"
    yield name
    drop_database(name)


@pytest.fixture(scope="module")
def token_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiClient]:
    """A second API process of the same service (same Redis, targets and workers) that requires
    FLEXDB_API_TOKEN."""
    port = free_port()
    env = {**stack.env, "FLEXDB_API_PORT": str(port), "FLEXDB_API_TOKEN": API_TOKEN}
    argv = python_argv("-m", "gunicorn", "-b", f"127.0.0.1:{port}", "--no-control-socket", "-w", "1", "api.wsgi:app")
    process = ManagedProcess("api-token", argv, env, tmp_path_factory.mktemp("token-api") / "api.log")
    client = ApiClient(f"http://127.0.0.1:{port}/api/v1")
    try:
        wait_for(lambda: client.get("/health").status in (200, 503), 60, what="API with a token up")
        yield client
    finally:
        process.stop()


@pytest.fixture(scope="module")
def workflows(stack: Stack, token_api: ApiClient, restore_database: str) -> dict[str, dict]:
    return {
        ROUND_TRIP: workflow(
            ROUND_TRIP,
            "FlexDB node: back up and restore",
            flexdb("Back up", "backup", target="pg", options={"pollSeconds": 1}),
            flexdb("Restore", "restore", backupId="={{ $json.backup_id }}", database=restore_database, drop=True),
            flexdb("Get backup job", "getJob", settings=ONCE, jobId="={{ $('Back up').first().json.id }}"),
            flexdb("List backups", "listBackups", settings=ONCE, target="pg", limit=2),
            flexdb("List targets", "listTargets", settings=ONCE),
        ),
        FAILING: workflow(
            FAILING,
            "FlexDB node: a backup that fails",
            flexdb("Back up", "backup", target="pg-down"),
            {
                "id": f"noop-{_RUN}",
                "name": "Not reached",
                "type": "n8n-nodes-base.noOp",
                "typeVersion": 1,
                "parameters": {},
            },
        ),
        CONTINUE: workflow(
            CONTINUE,
            "FlexDB node: failures passed on",
            flexdb("Start backup", "backup", target="pg", waitForCompletion=False),
            flexdb("Cancel", "cancelJob", jobId="={{ $json.id }}"),
            flexdb("Wait for job", "waitForJob", settings=CONTINUE_ON_FAIL, jobId="={{ $json.id }}", timeoutSeconds=60),
            flexdb(
                "Restore missing backup",
                "restore",
                settings={**CONTINUE_ON_FAIL, **ONCE},
                backupId="no-such-backup-n8n",
            ),
            flexdb("Targets, wrong token", "listTargets", WRONG_TOKEN_CREDENTIALS, {**CONTINUE_ON_FAIL, **ONCE}),
            flexdb("Targets, token", "listTargets", TOKEN_CREDENTIALS, ONCE),
        ),
    }


@pytest.fixture(scope="module")
def n8n(
    n8n_install: N8nInstall,
    flexdb_node_package: NodePackage,
    stack: Stack,
    token_api: ApiClient,
    workflows: dict[str, dict],
    tmp_path_factory: pytest.TempPathFactory,
) -> N8n:
    """n8n with the node loaded from an extensions folder, the credentials and workflows imported."""
    runner = N8n(n8n_install, tmp_path_factory.mktemp("n8n-node"))
    runner.extra_env["N8N_CUSTOM_EXTENSIONS"] = str(flexdb_node_package.extensions_dir)
    files = tmp_path_factory.mktemp("n8n-node-files")
    credentials = [
        (CREDENTIALS, stack.api.base_url, ""),
        (TOKEN_CREDENTIALS, token_api.base_url, API_TOKEN),
        (WRONG_TOKEN_CREDENTIALS, token_api.base_url, "not-" + API_TOKEN),
    ]
    (files / "credentials.json").write_text(
        json.dumps(
            [
                {"id": cid, "name": cid, "type": "flexDbApi", "data": {"baseUrl": url + "/", "apiToken": token}}
                for cid, url, token in credentials
            ]
        )
    )
    result = runner.run("import:credentials", f"--input={files / 'credentials.json'}")
    assert "Successfully imported 3 credentials" in result.stdout, result.describe()
    (files / "workflows.json").write_text(json.dumps(list(workflows.values())))
    runner.import_workflows(files / "workflows.json")
    # Jobs of earlier tests end first: a backup of "pg" must not wait behind another one.
    wait_for(lambda: all(job["done"] for job in stack.api.get("/jobs?limit=100").body["items"]), 60, what="stack idle")
    return runner


def _job(stack: Stack, job_id: str) -> dict:
    response = stack.api.get(f"/jobs/{job_id}")
    assert response.status == 200, response.text
    return response.body


@contextmanager
def rows_in_source(stack: Stack) -> Iterator[list[tuple]]:
    uri = f"postgresql://postgres@127.0.0.1:5432/{stack.databases['source']}"
    rows = [(1, "alpha"), (2, "beta"), (3, "gamma")]
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE TABLE n8n_node_rows (id int PRIMARY KEY, name text)")
        for row in rows:
            conn.execute("INSERT INTO n8n_node_rows VALUES (%s, %s)", row)
    try:
        yield rows
    finally:
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS n8n_node_rows")


@contextmanager
def source_table_locked(stack: Stack) -> Iterator[None]:
    """A backup of "pg" started meanwhile waits in pg_dump until the block ends."""
    uri = f"postgresql://postgres@127.0.0.1:5432/{stack.databases['source']}"
    with psycopg.connect(uri, autocommit=True) as setup:
        setup.execute("CREATE TABLE IF NOT EXISTS n8n_node_lock (id int)")
    try:
        with psycopg.connect(uri) as conn:
            conn.execute("LOCK TABLE n8n_node_lock IN ACCESS EXCLUSIVE MODE")
            yield
            conn.rollback()
    finally:
        with psycopg.connect(uri, autocommit=True) as cleanup:
            cleanup.execute("DROP TABLE IF EXISTS n8n_node_lock")


# --------------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------------


def test_a_workflow_backs_up_and_restores_with_the_node(
    n8n: N8n, stack: Stack, workflows: dict, restore_database: str
) -> None:
    # The dump is held up for 2 s: "Wait for Completion" long-polls through queued and running.
    with rows_in_source(stack) as rows, dump_held_up(stack, 2.0):
        execution = n8n.execute(ROUND_TRIP)
    assert execution.status == "success", execution.summary()
    assert execution.last_node == "List targets", execution.summary()

    (backup,) = execution.output("Back up")
    assert backup["kind"] == "backup" and backup["status"] == "succeeded" and backup["done"] is True, backup
    assert _job(stack, backup["id"])["backup_id"] == backup["backup_id"]
    (restore,) = execution.output("Restore")
    assert restore["kind"] == "restore" and restore["status"] == "succeeded", restore
    assert restore["params"]["backup_id"] == backup["backup_id"], restore
    assert restore["params"]["database"] == restore_database and restore["params"]["drop"] is True, restore
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{restore_database}") as conn:
        assert conn.execute("SELECT id, name FROM n8n_node_rows ORDER BY id").fetchall() == rows

    (got,) = execution.output("Get backup job")
    assert got["id"] == backup["id"] and got["status"] == "succeeded", got
    listed = execution.output("List backups")
    assert 1 <= len(listed) <= 2 and listed[0]["id"] == backup["backup_id"], listed
    targets = execution.output("List targets")
    assert {"pg", "pg-down", "mongo"} <= {t["name"] for t in targets}, targets
    assert CANARY_PASSWORD not in json.dumps(targets)

    # The submit carried the node's Idempotency-Key: the same key and body return the same job.
    key = f"n8n-{ROUND_TRIP}-{execution.id}-{node_id(workflows[ROUND_TRIP], 'Back up')}-0-0-backup"
    replay = stack.api.request(
        "POST",
        "/backups",
        {"target": "pg", "options": {}},
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert replay.status == 202 and replay.body["id"] == backup["id"], replay.text
    assert replay.headers.get("Idempotent-Replayed") == "true", replay.headers


def test_a_failed_job_fails_the_node_with_the_jobs_error_code(n8n: N8n, stack: Stack) -> None:
    execution = n8n.execute(FAILING)
    # The execution fails at the node, so n8n's error workflow fires and "Not reached" does not run.
    assert execution.status == "error", execution.summary()
    assert execution.last_node == "Back up" and "Not reached" not in execution.nodes_run(), execution.summary()
    error = execution.error
    assert error["name"] == "NodeOperationError" and error["node"]["name"] == "Back up", error
    assert error["context"]["code"] == "target_unreachable", error
    job_id = error["context"]["job"]["id"]
    assert f"backup job {job_id} failed: target_unreachable" in error["message"], error["message"]
    job = _job(stack, job_id)
    assert job["target"] == "pg-down" and job["status"] == "failed", job
    assert job["error"]["code"] == "target_unreachable" and job["error"]["message"] in error["message"], job


def test_continue_on_fail_passes_each_failure_on_with_its_code(n8n: N8n, stack: Stack) -> None:
    with source_table_locked(stack):
        execution = n8n.execute(CONTINUE)
    assert execution.status == "success", execution.summary()

    (submitted,) = execution.output("Start backup")
    assert submitted["status"] == "queued" and submitted["done"] is False, submitted
    (cancelled,) = execution.output("Cancel")
    assert cancelled["id"] == submitted["id"], cancelled
    assert cancelled["status"] == "cancelled" or cancelled["cancel_requested"] is True, cancelled
    # "Wait for Job" failed on the cancelled job; On Error "Continue" passes the failure on.
    (waited,) = execution.output("Wait for job")
    assert waited["code"] == "job_cancelled" and waited["job"]["status"] == "cancelled", waited
    assert submitted["id"] in waited["error"], waited
    assert _job(stack, submitted["id"])["status"] == "cancelled"

    (missing,) = execution.output("Restore missing backup")
    assert missing["code"] == "backup_not_found" and missing["httpStatus"] == 404, missing
    (refused,) = execution.output("Targets, wrong token")
    assert refused["code"] == "unauthorized" and refused["httpStatus"] == 401, refused
    # With the right token, sent as the API expects, the same route answers.
    assert "pg" in {t["name"] for t in execution.output("Targets, token")}
