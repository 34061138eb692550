"""The ``flexdb`` command line as a user runs it: the installed entry point, a real subprocess,
against a live API and worker that require a token. Each test checks what a user (or a
script) sees: the exit code, stdout, stderr, and what the service did, read back through the API.

One stack for the module, on a Redis database of its own, with a PostgreSQL target that holds a
table, and one that points at a port where nothing listens.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import secrets
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Stack, drop_database, pg_admin, pg_uri, running_stack
from tests.support.processes import free_port, wait_for

FLEXDB = shutil.which("flexdb", path=str(Path(sys.executable).parent))
TOKEN = "cli-token-" + secrets.token_hex(8)
TABLE = "cli_items"
ROWS = 321

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(FLEXDB is None, reason="the flexdb command is not installed in this environment: run `make venv`"),
    pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump and pg_restore are needed"),
]


@pytest.fixture(scope="module")
def cli_stack(tmp_path_factory: pytest.TempPathFactory, own_redis_url: str) -> Iterator[Stack]:
    suffix = secrets.token_hex(4)
    source, copy = f"flexdb_cli_src_{suffix}", f"flexdb_cli_copy_{suffix}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{source}"')
    with psycopg.connect(pg_uri(source), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, name text)")
        conn.execute(f"INSERT INTO {TABLE} SELECT i, 'item ' || i FROM generate_series(1, {ROWS}) i")
    targets = {
        "pg": {"engine": "postgresql", "uri": pg_uri(source)},
        "pg-down": {"engine": "postgresql", "uri": pg_uri("nowhere", port=free_port())},
    }
    try:
        with running_stack(tmp_path_factory.mktemp("cli"), targets, own_redis_url, FLEXDB_API_TOKEN=TOKEN) as stack:
            stack.databases = {"source": source, "copy": copy}
            yield stack
    finally:
        drop_database(source)
        drop_database(copy)


def cli_env(stack: Stack, token: str | None = TOKEN, url: str | None = None) -> dict[str, str]:
    """A clean environment with the URL and token as a user sets them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXDB_")}
    env["FLEXDB_URL"] = url or stack.api.origin
    if token:
        env["FLEXDB_API_TOKEN"] = token
    return env


def flexdb(stack: Stack, *args: str, token: str | None = TOKEN, url: str | None = None, timeout: float = 120):
    """Runs the installed command to its end."""
    env = cli_env(stack, token, url)
    return subprocess.run([FLEXDB, *args], check=False, capture_output=True, text=True, env=env, timeout=timeout)


def api_get(stack: Stack, path: str):
    return stack.api.get(path, headers={"Authorization": f"Bearer {TOKEN}"})


def rows_in(database: str) -> int:
    with psycopg.connect(pg_uri(database)) as conn:
        return conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]


@pytest.fixture(scope="module")
def backup_id(cli_stack: Stack) -> str:
    """One backup made with the command, for the tests that need one."""
    done = flexdb(cli_stack, "backup", "pg", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["backup_id"]


# ------------------------------------------------------------------------------ backup --wait


def test_backup_wait_exits_0_and_prints_the_backup_id(cli_stack: Stack) -> None:
    done = flexdb(cli_stack, "backup", "pg", "--wait")

    assert done.returncode == 0, done.stderr
    listed = api_get(cli_stack, "/backups?target=pg").body["items"]
    assert listed[0]["id"] in done.stdout
    # Not a terminal: the progress is plain lines on stderr, ending with the job's end.
    assert "\r" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].split(" ", 2)[2].startswith("succeeded")


def test_backup_of_a_target_that_does_not_answer_exits_1_with_its_code(cli_stack: Stack) -> None:
    done = flexdb(cli_stack, "backup", "pg-down", "--wait")

    assert done.returncode == 1
    assert "target_unreachable" in done.stderr
    assert "failed" in done.stdout


def test_progress_is_a_bar_on_a_terminal(cli_stack: Stack) -> None:
    main, side = pty.openpty()
    env = {**cli_env(cli_stack), "COLUMNS": "100"}
    proc = subprocess.Popen([FLEXDB, "backup", "pg", "--wait"], stdout=subprocess.PIPE, stderr=side, env=env)
    os.close(side)
    seen = b""
    try:
        while chunk := _read_pty(main):
            seen += chunk
    finally:
        os.close(main)
    assert proc.wait(60) == 0
    bar = seen.decode(errors="replace")
    # Redrawn in place, and full when the job is done.
    assert bar.count("\r") >= 2
    last = bar.rstrip().rsplit("\r", 1)[-1]
    assert "[########################] succeeded" in last and "100.0%" in last


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # the other side closed: the command ended
        return b""


# ------------------------------------------------------------------------------ scripts: --json, exit codes


def test_json_prints_exactly_what_the_api_answers(cli_stack: Stack, backup_id: str) -> None:
    for args, path in [
        (("targets", "list"), "/targets"),
        (("backups", "show", backup_id), f"/backups/{backup_id}"),
        (("backups", "list", "--target", "pg"), "/backups?target=pg"),
        (("schedules", "list"), "/schedules"),
    ]:
        done = flexdb(cli_stack, *args, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == api_get(cli_stack, path).body, args

    job = json.loads(flexdb(cli_stack, "backup", "pg", "--wait", "--json").stdout)
    assert job == api_get(cli_stack, f"/jobs/{job['id']}").body
    assert job["status"] == "succeeded"


def test_an_api_refusal_is_one_line_with_its_code(cli_stack: Stack) -> None:
    done = flexdb(cli_stack, "backup", "no-such-target")

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "target_not_found (404)" in done.stderr


def test_unreachable_api_or_missing_token_exits_3(cli_stack: Stack) -> None:
    nowhere = flexdb(cli_stack, "targets", "list", url=f"http://127.0.0.1:{free_port()}")
    assert nowhere.returncode == 3
    assert "cannot reach the API" in nowhere.stderr

    no_token = flexdb(cli_stack, "targets", "list", token=None)
    assert no_token.returncode == 3
    assert "unauthorized (401)" in no_token.stderr
    assert TOKEN not in no_token.stderr


def test_usage_errors_exit_2_and_reach_no_api(cli_stack: Stack) -> None:
    for args in [
        ("backup",),
        ("backup", "pg", "--options", "[1]"),
        ("schedules", "create", "pg"),
        ("schedules", "create", "pg", "--cron", "0 3 * * *", "--interval", "3600"),
        ("jobs", "frobnicate"),
    ]:
        done = flexdb(cli_stack, *args, url=f"http://127.0.0.1:{free_port()}")
        assert done.returncode == 2, (args, done.stderr)


def test_health_says_which_part_is_down(cli_stack: Stack) -> None:
    done = flexdb(cli_stack, "health")

    assert done.returncode == 1  # pg-down does not answer
    assert "status: degraded" in done.stdout
    down = [line for line in done.stdout.splitlines() if "DOWN" in line]
    assert len(down) == 1 and "target pg-down" in down[0] and "target_unreachable" in down[0]


# ------------------------------------------------------------------------------ archives


def test_download_then_import_gives_the_same_archive(cli_stack: Stack, backup_id: str, tmp_path: Path) -> None:
    manifest = api_get(cli_stack, f"/backups/{backup_id}").body

    saved = tmp_path / "orders.dump"
    done = flexdb(cli_stack, "backups", "download", backup_id, "-o", str(saved))
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == manifest["sha256"]
    assert not list(tmp_path.glob("*.part"))

    imported = flexdb(cli_stack, "backups", "import", str(saved), "--target", "pg", "--json")
    assert imported.returncode == 0, imported.stderr
    copy = json.loads(imported.stdout)
    assert copy["source"] == "import" and copy["sha256"] == manifest["sha256"]

    assert flexdb(cli_stack, "backups", "pin", copy["id"]).returncode == 0
    refused = flexdb(cli_stack, "backups", "delete", copy["id"])
    assert refused.returncode == 1 and "backup_pinned" in refused.stderr
    assert flexdb(cli_stack, "backups", "pin", copy["id"], "--unpin").returncode == 0
    assert flexdb(cli_stack, "backups", "delete", copy["id"]).returncode == 0
    assert api_get(cli_stack, f"/backups/{copy['id']}").status == 404


def test_download_names_the_file_as_the_api_does(cli_stack: Stack, backup_id: str, tmp_path: Path) -> None:
    argv = [FLEXDB, "backups", "download", backup_id]
    done = subprocess.run(argv, check=False, cwd=tmp_path, env=cli_env(cli_stack), capture_output=True, timeout=60)

    assert done.returncode == 0, done.stderr
    with urllib.request.urlopen(_archive_request(cli_stack, backup_id), timeout=30) as answer:
        announced = re.search(r'filename="([^"]+)"', answer.headers["Content-Disposition"]).group(1)
    assert [p.name for p in tmp_path.iterdir()] == [announced]


def test_a_download_that_does_not_match_its_checksum_keeps_nothing(cli_stack: Stack, tmp_path: Path) -> None:
    made = flexdb(cli_stack, "backup", "pg", "--wait", "--json")
    backup = json.loads(made.stdout)["backup_id"]
    # The stored archive rots on disk: same size, one byte changed.
    archive = next(p for p in (cli_stack.storage_dir / backup).iterdir() if p.name != "manifest.json")
    data = bytearray(archive.read_bytes())
    data[-1] ^= 0xFF
    archive.write_bytes(bytes(data))

    done = flexdb(cli_stack, "backups", "download", backup, "-o", str(tmp_path / "rotten.dump"))

    assert done.returncode == 1
    assert "SHA-256" in done.stderr
    assert list(tmp_path.iterdir()) == []
    assert flexdb(cli_stack, "backups", "delete", backup).returncode == 0


def _archive_request(stack: Stack, backup_id: str) -> urllib.request.Request:
    headers = {"Authorization": f"Bearer {TOKEN}", "Range": "bytes=0-0"}
    return urllib.request.Request(stack.api.url(f"/backups/{backup_id}/archive"), headers=headers)


# ------------------------------------------------------------------------------ restore, schedules


def test_restore_wait_into_another_database(cli_stack: Stack, backup_id: str) -> None:
    copy = cli_stack.databases["copy"]

    done = flexdb(cli_stack, "restore", backup_id, "--into", copy, "--wait")
    assert done.returncode == 0, done.stderr
    assert rows_in(copy) == ROWS

    again = flexdb(cli_stack, "restore", backup_id, "--into", copy, "--wait")
    assert again.returncode == 1
    assert "target_not_empty" in again.stderr

    replaced = flexdb(cli_stack, "restore", backup_id, "--into", copy, "--drop", "--wait")
    assert replaced.returncode == 0, replaced.stderr
    assert rows_in(copy) == ROWS


def test_schedule_created_run_disabled_and_deleted(cli_stack: Stack) -> None:
    created = flexdb(cli_stack, "schedules", "create", "pg", "--interval", "86400", "--keep-last", "50", "--json")
    assert created.returncode == 0, created.stderr
    schedule = json.loads(created.stdout)
    assert schedule["interval_seconds"] == 86400 and schedule["retention"]["keep_last"] == 50

    ran = flexdb(cli_stack, "schedules", "run", schedule["id"], "--wait", "--json")
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)
    assert job["status"] == "succeeded" and job["params"]["schedule_id"] == schedule["id"]
    assert api_get(cli_stack, f"/backups/{job['backup_id']}").body["schedule_id"] == schedule["id"]

    assert flexdb(cli_stack, "schedules", "disable", schedule["id"]).returncode == 0
    assert api_get(cli_stack, f"/schedules/{schedule['id']}").body["enabled"] is False

    assert flexdb(cli_stack, "schedules", "delete", schedule["id"]).returncode == 0
    gone = flexdb(cli_stack, "schedules", "show", schedule["id"])
    assert gone.returncode == 1 and "schedule_not_found" in gone.stderr


# ------------------------------------------------------------------------------ Ctrl-C, cancel


def test_ctrl_c_leaves_the_job_running_and_says_how_to_follow_it(cli_stack: Stack) -> None:
    env = cli_env(cli_stack)
    # pg_dump waits for a lock another session holds: the backup runs until that session ends.
    with psycopg.connect(pg_uri(cli_stack.databases["source"])) as blocker:
        blocker.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(
            [FLEXDB, "backup", "pg", "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        running = wait_for(
            lambda: api_get(cli_stack, "/jobs?target=pg&status=running").body["items"], 60, what="the backup running"
        )
        job_id = running[0]["id"]
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)

        assert proc.returncode == 130
        assert f"flexdb jobs wait {job_id}" in stderr
        assert api_get(cli_stack, f"/jobs/{job_id}").body["status"] == "running"

        stopping = flexdb(cli_stack, "jobs", "cancel", job_id)
        assert stopping.returncode == 0 and "cancel requested" in stopping.stdout
        waited = flexdb(cli_stack, "jobs", "wait", job_id)
        blocker.rollback()

    assert waited.returncode == 1
    assert f"job {job_id} cancelled" in waited.stderr


def test_shell_completion_offers_the_targets_the_api_knows(cli_stack: Stack) -> None:
    env = {**cli_env(cli_stack), "COMP_WORDS": "flexdb backup pg", "COMP_CWORD": "2", "_FLEXDB_COMPLETE": "bash_complete"}
    done = subprocess.run([FLEXDB], check=False, capture_output=True, text=True, env=env, timeout=30)

    assert sorted(done.stdout.split()) == ["plain,pg", "plain,pg-down"]
