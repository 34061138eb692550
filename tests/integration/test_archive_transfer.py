"""Moving archives in and out, as a user does it against the running stack: download a backup's
archive (whole or a range) and hand it to ``pg_restore``; import a real ``pg_dump -Fc`` file and a
real ``mongodump --archive`` file and restore them; delete a backup, except one that is pinned
or that a restore is reading."""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import secrets
import shutil
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from pymongo import MongoClient

from shared.engines.mongodb_archive import open_decompressing_reader, verify
from tests.conftest import PG_ADMIN_URI, Stack, drop_database, pg_admin, running_stack
from tests.support.fixtures import MONGODUMP_FIXTURES, needs_mongodump_fixtures
from tests.support.mongo import MongoTestServer
from tests.support.processes import wait_for

needs_pg_tools = pytest.mark.skipif(
    shutil.which("pg_dump") is None or shutil.which("pg_restore") is None, reason="pg_dump and pg_restore are needed"
)
TABLE = "transfer_items_" + secrets.token_hex(3)
ROWS = 1234


# ------------------------------------------------------------------------------------ helpers


def send(stack: Stack, method: str, path: str, body=None, headers: dict | None = None, chunked: bool = False):
    """(status, headers with lower-case names, raw body bytes): the archive routes answer bytes."""
    url = urllib.parse.urlsplit(stack.api.url(path))
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        target = url.path + (f"?{url.query}" if url.query else "")
        conn.request(method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def import_file(stack: Stack, target: str, data: bytes):
    return send(stack, "POST", f"/backups/import?target={target}", data, {"Content-Type": "application/octet-stream"})


def problem(raw: bytes) -> dict:
    return json.loads(raw)


def backup_now(stack: Stack, target: str) -> dict:
    job = stack.api.wait_job(stack.api.post("/backups", {"target": target}).headers["Location"])
    assert job["status"] == "succeeded", job
    return stack.api.get(f"/backups/{job['backup_id']}").body


def restore_now(stack: Stack, **body) -> dict:
    response = stack.api.post("/restores", body)
    assert response.status == 202, response.text
    return stack.api.wait_job(response.headers["Location"], timeout=120)


def pg(database: str) -> psycopg.Connection:
    return psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}", autocommit=True)


def folders(stack: Stack) -> set[str]:
    return {path.name for path in stack.storage_dir.iterdir()} if stack.storage_dir.exists() else set()


@pytest.fixture(scope="module")
def pg_backup(stack: Stack) -> Iterator[dict]:
    """A backup of the "pg" target holding a table of our own."""
    with pg(stack.databases["source"]) as conn:
        conn.execute(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)")
        conn.execute(f"INSERT INTO {TABLE} SELECT n, 'row ' || n FROM generate_series(1, {ROWS}) n")
    yield backup_now(stack, "pg")
    with pg(stack.databases["source"]) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")


# ----------------------------------------------------------------------------------- download


@needs_pg_tools
def test_a_downloaded_postgresql_archive_is_what_pg_restore_reads(stack: Stack, pg_backup: dict, tmp_path: Path) -> None:
    status, headers, body = send(stack, "GET", f"/backups/{pg_backup['id']}/archive")

    assert status == 200
    assert headers["content-type"] == "application/octet-stream"
    # the stored archive as it is: pg_dump -Fc in the default codec, zstd
    assert headers["content-disposition"] == f'attachment; filename="{pg_backup["id"]}-archive.dump.zst"'
    assert headers["accept-ranges"] == "bytes"
    assert int(headers["content-length"]) == len(body) == pg_backup["size_bytes"]
    digest = hashlib.sha256(body)
    assert headers["x-flexdb-sha256"] == digest.hexdigest() == pg_backup["sha256"]
    assert headers["repr-digest"] == f"sha-256=:{base64.b64encode(digest.digest()).decode()}:"
    archive = tmp_path / "download.dump"
    archive.write_bytes(subprocess.run(["zstd", "-dc"], input=body, capture_output=True, check=True).stdout)
    listing = subprocess.run(["pg_restore", "-l", str(archive)], capture_output=True, text=True, check=False)
    assert listing.returncode == 0, listing.stderr
    assert f"TABLE DATA public {TABLE}" in listing.stdout


def test_a_download_takes_one_byte_range(stack: Stack, pg_backup: dict) -> None:
    path = f"/backups/{pg_backup['id']}/archive"
    _, _, whole = send(stack, "GET", path)
    size = len(whole)

    for asked, start, end in (("bytes=0-99", 0, 99), ("bytes=100-", 100, size - 1), ("bytes=-50", size - 50, size - 1),
                              (f"bytes=10-{size + 500}", 10, size - 1)):  # fmt: skip
        status, headers, body = send(stack, "GET", path, headers={"Range": asked})
        assert status == 206, asked
        assert body == whole[start : end + 1], asked
        assert headers["content-range"] == f"bytes {start}-{end}/{size}", asked
        assert int(headers["content-length"]) == end - start + 1
        assert headers["x-flexdb-sha256"] == pg_backup["sha256"]  # the whole archive's digest

    status, _, body = send(stack, "GET", path, headers={"Range": "bytes=0-1,5-6"})  # several: not taken
    assert status == 200 and body == whole


def test_a_range_past_the_end_is_416_with_the_size(stack: Stack, pg_backup: dict) -> None:
    size = pg_backup["size_bytes"]
    status, headers, body = send(stack, "GET", f"/backups/{pg_backup['id']}/archive", headers={"Range": f"bytes={size}-"})

    assert status == 416
    assert headers["content-type"] == "application/problem+json"
    assert headers["content-range"] == f"bytes */{size}"
    assert problem(body)["code"] == "range_not_satisfiable"


def test_an_unknown_backup_has_no_archive(stack: Stack) -> None:
    status, _, body = send(stack, "GET", "/backups/20990101T000000000000Z-000000/archive")
    assert status == 404 and problem(body)["code"] == "backup_not_found"


def test_a_downloaded_mongodb_archive_is_read_by_the_archive_reader(stack: Stack) -> None:
    backup = backup_now(stack, "mongo")

    status, headers, body = send(stack, "GET", f"/backups/{backup['id']}/archive")

    assert status == 200 and hashlib.sha256(body).hexdigest() == backup["sha256"] == headers["x-flexdb-sha256"]
    assert headers["content-disposition"].startswith(f'attachment; filename="{backup["id"]}-archive')
    stream = open_decompressing_reader(io.BytesIO(body))
    summary = verify(stream)
    assert {ns: s.documents for ns, s in summary.namespaces.items()} == backup["details"]["namespaces"]


# ------------------------------------------------------------------------------------- delete


def test_delete_refuses_a_pinned_backup_then_removes_it_everywhere(stack: Stack) -> None:
    backup = backup_now(stack, "pg")
    assert stack.api.request("PATCH", f"/backups/{backup['id']}", {"pinned": True}).status == 200

    status, _, body = send(stack, "DELETE", f"/backups/{backup['id']}")
    assert status == 409
    assert problem(body)["code"] == "backup_pinned" and "PATCH" in problem(body)["detail"]
    assert stack.api.get(f"/backups/{backup['id']}").status == 200

    assert stack.api.request("PATCH", f"/backups/{backup['id']}", {"pinned": False}).status == 200
    status, _, body = send(stack, "DELETE", f"/backups/{backup['id']}")
    assert (status, body) == (204, b"")
    assert stack.api.get(f"/backups/{backup['id']}").status == 404
    assert backup["id"] not in {item["id"] for item in stack.api.get("/backups?target=pg&limit=100").body["items"]}
    assert backup["id"] not in folders(stack)
    status, _, body = send(stack, "DELETE", f"/backups/{backup['id']}")
    assert status == 404 and problem(body)["code"] == "backup_not_found"


def test_delete_refuses_a_backup_that_a_running_restore_reads(stack: Stack, pg_backup: dict) -> None:
    into = "flexdb_it_inuse_" + secrets.token_hex(3)
    try:
        assert restore_now(stack, backup_id=pg_backup["id"], database=into)["status"] == "succeeded"
        with pg(into) as locker:
            # pg_restore --clean must drop this table first: it waits, the restore stays running
            locker.autocommit = False
            locker.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            response = stack.api.post("/restores", {"backup_id": pg_backup["id"], "database": into, "drop": True})
            assert response.status == 202, response.text
            job_id = response.body["id"]
            wait_for(lambda: stack.api.get(f"/jobs/{job_id}").body["progress"]["stage"] == "restoring", 60, what="restoring")

            status, _, body = send(stack, "DELETE", f"/backups/{pg_backup['id']}")

            assert status == 409
            assert problem(body)["code"] == "backup_in_use" and job_id in problem(body)["detail"]
            locker.rollback()
        assert stack.api.wait_job(f"/jobs/{job_id}", timeout=120)["status"] == "succeeded"
        assert stack.api.get(f"/backups/{pg_backup['id']}").status == 200
    finally:
        drop_database(into)


# ------------------------------------------------------------------------------------- import


@pytest.fixture()
def dumped_database(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real database of its own, dumped with the machine's pg_dump -Fc."""
    name = "flexdb_it_import_" + secrets.token_hex(3)
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with pg(name) as conn:
        conn.execute("CREATE TABLE parcels (id serial PRIMARY KEY, weight numeric, sent date)")
        conn.execute("INSERT INTO parcels (weight, sent) SELECT n * 0.1, date '2026-01-01' + n % 30 FROM generate_series(1, 321) n")
    archive = tmp_path / "parcels.dump"
    uri = PG_ADMIN_URI.rsplit("/", 1)[0] + "/" + name
    subprocess.run(["pg_dump", "-Fc", "-d", uri, "-f", str(archive)], check=True)
    yield name, archive
    drop_database(name)


@needs_pg_tools
def test_a_pg_dump_file_is_imported_listed_and_restored(stack: Stack, dumped_database: tuple[str, Path]) -> None:
    name, archive = dumped_database
    data = archive.read_bytes()

    status, headers, body = import_file(stack, "pg", data)

    assert status == 201, body
    backup = problem(body)
    assert headers["location"] == f"/api/v1/backups/{backup['id']}"
    assert backup["source"] == "import" and backup["target"] == "pg" and backup["engine"] == "postgresql"
    assert backup["format"] == "pg_dump-custom" and backup["database"] == name
    assert backup["compression"] == "none"  # stored as uploaded: no stream codec around it
    assert backup["size_bytes"] == len(data) and backup["sha256"] == hashlib.sha256(data).hexdigest()
    assert backup["id"] in {item["id"] for item in stack.api.get("/backups?target=pg&limit=100").body["items"]}
    assert stack.api.get(f"/backups/{backup['id']}").body["source"] == "import"

    copy = "flexdb_it_imported_" + secrets.token_hex(3)
    try:
        job = restore_now(stack, backup_id=backup["id"], database=copy)
        assert job["status"] == "succeeded", job
        with pg(copy) as conn:
            assert conn.execute("SELECT count(*) FROM parcels").fetchone()[0] == 321
    finally:
        drop_database(copy)
    assert send(stack, "DELETE", f"/backups/{backup['id']}")[0] == 204


@needs_pg_tools
def test_a_truncated_pg_dump_file_is_refused_and_nothing_stays(stack: Stack, dumped_database: tuple[str, Path]) -> None:
    data = dumped_database[1].read_bytes()
    before = folders(stack)

    status, _, body = import_file(stack, "pg", data[:-300])

    assert status == 422 and problem(body)["code"] == "archive_corrupt"
    assert "pg_restore" in problem(body)["detail"]
    assert folders(stack) == before


@needs_mongodump_fixtures
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_a_mongodump_archive_is_imported_and_restored(stack: Stack, mongo_server: MongoTestServer, compress: bool) -> None:
    raw = (MONGODUMP_FIXTURES / "test.bar.archive").read_bytes()
    data = gzip.compress(raw) if compress else raw

    status, _, body = import_file(stack, "mongo", data)

    assert status == 201, body
    backup = problem(body)
    assert backup["source"] == "import" and backup["engine"] == "mongodb" and backup["format"] == "mongodump-archive"
    assert backup["compression"] == ("gzip" if compress else "none")
    assert backup["details"]["documents"]["test.bar"] == 1  # mongodump also wrote admin.system.version
    into = "flexdb_it_mimport_" + secrets.token_hex(3)
    with MongoClient(mongo_server.uri()) as mongo:
        try:
            job = restore_now(stack, backup_id=backup["id"], target="mongo", database=into)
            assert job["status"] == "succeeded", job
            assert mongo[into]["bar"].count_documents({}) == 1
        finally:
            mongo.drop_database(into)
    _, headers, downloaded = send(stack, "GET", f"/backups/{backup['id']}/archive")
    assert downloaded == data
    assert headers["content-disposition"].endswith("-archive.gz\"" if compress else "-archive\"")


@pytest.mark.parametrize(
    ("target", "fixture", "words"),
    [
        ("pg", b"id,name\n1,alice\n2,bob\n", "PGDMP"),
        ("mongo", b"id,name\n1,alice\n2,bob\n", "mongodump archive"),
        ("mongo", "bad-format.archive", "mongodump archive"),
    ],
    ids=["text-as-postgresql", "text-as-mongodb", "broken-mongodump"],
)
def test_a_strangers_file_is_422_with_the_reason_and_nothing_stays(stack: Stack, target: str, fixture, words: str) -> None:
    if isinstance(fixture, str):
        if not (MONGODUMP_FIXTURES / fixture).is_file():
            pytest.skip(f"{fixture} not found in {MONGODUMP_FIXTURES}")
        fixture = (MONGODUMP_FIXTURES / fixture).read_bytes()
    before = folders(stack)

    status, headers, body = import_file(stack, target, fixture)

    assert status == 422 and headers["content-type"] == "application/problem+json"
    assert problem(body)["code"] == "archive_corrupt" and words in problem(body)["detail"]
    assert folders(stack) == before


def test_import_answers_404_for_an_unknown_target_and_422_for_no_body(stack: Stack) -> None:
    status, _, body = import_file(stack, "nowhere", b"PGDMP....")
    assert status == 404 and problem(body)["code"] == "target_not_found"
    status, _, body = import_file(stack, "pg", b"")
    assert status == 422 and problem(body)["code"] == "archive_corrupt"
    status, _, body = send(stack, "POST", "/backups/import", b"PGDMP")
    assert status == 422 and problem(body)["errors"][0]["pointer"] == "/target"


@pytest.fixture(scope="module")
def small_limit_stack(tmp_path_factory: pytest.TempPathFactory, own_redis_url: str) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("import-limit")
    targets = {"pg": {"engine": "postgresql", "uri": "postgresql://postgres@127.0.0.1:5432/postgres"}}
    with running_stack(tmp, targets, own_redis_url, FLEXDB_IMPORT_MAX_BYTES="4096") as stack:
        yield stack


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_archive_over_the_import_limit_is_413(small_limit_stack: Stack, chunked: bool) -> None:
    data = b"PGDMP" + b"\0" * 10_000
    before = folders(small_limit_stack)
    body = iter([data[i : i + 1000] for i in range(0, len(data), 1000)]) if chunked else data

    status, headers, raw = send(
        small_limit_stack, "POST", "/backups/import?target=pg", body, {"Content-Type": "application/octet-stream"}, chunked
    )

    assert status == 413 and headers["content-type"] == "application/problem+json"
    assert problem(raw)["code"] == "archive_too_large" and "FLEXDB_IMPORT_MAX_BYTES" in problem(raw)["detail"]
    time.sleep(0.2)
    assert folders(small_limit_stack) == before
