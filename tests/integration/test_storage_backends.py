"""Backups in either storage backend, end to end, from the same tests: a local folder, and a
real S3 HTTP endpoint on 127.0.0.1 (moto in server mode: no S3 service can be had here). The
PostgreSQL and MongoDB round trips run on both; with S3, a backup made by one worker restores
through another whose local disk never saw it."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Stack, drop_database, pg_admin, pg_uri, running_stack
from tests.support.mongo import MongoTestServer
from tests.support.processes import wait_for
from tests.support.s3 import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, create_bucket, moto_s3, s3_client


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


def s3_settings(endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "FLEXDB_STORAGE_URL": f"s3://{bucket}/backups",
        "FLEXDB_S3_ENDPOINT_URL": endpoint,
        "FLEXDB_S3_REGION": REGION,
        "FLEXDB_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "FLEXDB_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "FLEXDB_S3_ADDRESSING": "path",
    }


def run(stack: Stack, path: str, body: dict) -> dict:
    response = stack.api.post(path, body)
    assert response.status == 202, response.text
    job = stack.api.wait_job(response.headers["Location"], timeout=90)
    assert job["status"] == "succeeded", job
    return job


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_backups_round_trip_and_restore_through_another_worker(
    backend: str, tmp_path: Path, own_redis_url: str, s3_endpoint: str, mongo_server: MongoTestServer
) -> None:
    suffix = secrets.token_hex(4)
    pg_source, pg_copy = f"flexdb_s3_{suffix}", f"flexdb_s3_{suffix}_copy"
    mongo_source, mongo_copy = f"flexdb_s3_{suffix}", f"flexdb_s3_copy_{suffix}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{pg_source}"')
    with psycopg.connect(pg_uri(pg_source), autocommit=True) as conn:
        conn.execute("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 3000) g")
    client = mongo_server.client()
    client[mongo_source].orders.insert_many([{"n": n, "note": "x" * 50} for n in range(2000)])
    targets = {
        "pg": {"engine": "postgresql", "uri": pg_uri(pg_source)},
        "mongo": {"engine": "mongodb", "uri": mongo_server.uri(mongo_source)},
    }
    bucket = create_bucket(s3_endpoint)
    shared_folder = tmp_path / "shared-folder"
    settings = s3_settings(s3_endpoint, bucket) if backend == "s3" else {"FLEXDB_STORAGE_URL": shared_folder.as_uri()}
    try:
        first_disk = tmp_path / "first-disk"
        with running_stack(tmp_path / "first", targets, own_redis_url, FLEXDB_STORAGE_DIR=str(first_disk), **settings) as first:
            health = first.api.get("/health").body["components"]["storage"]
            where = f"s3://{bucket}/backups" if backend == "s3" else str(shared_folder)
            assert health["ok"] is True and health["location"].startswith(where)
            pg_backup = run(first, "/backups", {"target": "pg"})["backup_id"]
            mongo_backup = run(first, "/backups", {"target": "mongo"})["backup_id"]
        assert not first_disk.exists() or not any(first_disk.iterdir()), "nothing on the first worker's disk"
        if backend == "s3":
            keys = {o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
            assert {f"backups/{pg_backup}/manifest.json", f"backups/{mongo_backup}/manifest.json"} <= keys
        else:
            assert (shared_folder / pg_backup / "manifest.json").is_file()
        shutil.rmtree(tmp_path / "first", ignore_errors=True)

        # Another worker and API, another disk, the same storage: they see both backups and restore them.
        with running_stack(tmp_path / "second", targets, own_redis_url, FLEXDB_STORAGE_DIR=str(tmp_path / "second-disk"), **settings) as second:
            listed = {b["id"] for b in second.api.get("/backups").body["items"]}
            assert {pg_backup, mongo_backup} <= listed
            run(second, "/restores", {"backup_id": pg_backup, "database": pg_copy})
            run(second, "/restores", {"backup_id": mongo_backup, "database": mongo_copy})
        with psycopg.connect(pg_uri(pg_copy)) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 3000
        assert client[mongo_copy].orders.count_documents({}) == 2000
    finally:
        drop_database(pg_source)
        drop_database(pg_copy)
        client.drop_database(mongo_source)
        client.drop_database(mongo_copy)


def test_a_worker_copies_each_backup_to_the_mirror_and_a_restore_falls_back_to_it(
    tmp_path: Path, own_redis_url: str, s3_endpoint: str
) -> None:
    """Primary in a local folder, mirror in a bucket: the follow-up task copies the backup; with
    the primary copy damaged, the restore reads the mirror's."""
    database = f"flexdb_mirror_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    with psycopg.connect(pg_uri(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 1000) g")
    bucket = create_bucket(s3_endpoint)
    settings = {**s3_settings(s3_endpoint, bucket), "FLEXDB_STORAGE_MIRROR_URL": f"s3://{bucket}/mirror"}
    del settings["FLEXDB_STORAGE_URL"]  # the primary stays the local folder
    targets = {"pg": {"engine": "postgresql", "uri": pg_uri(database)}}
    try:
        with running_stack(tmp_path, targets, own_redis_url, **settings) as stack:
            backup_id = run(stack, "/backups", {"target": "pg"})["backup_id"]
            copied = wait_for(
                lambda: (b := stack.api.get(f"/backups/{backup_id}").body)["copies"][0]["status"] == "copied" and b,
                30,
                what="the copy to the mirror",
            )
            assert copied["copies"][0]["at"]
            archive = stack.storage_dir / backup_id / "archive.dump.zst"
            archive.write_bytes(archive.read_bytes()[:-10] + b"damaged!!!")
            job = run(stack, "/restores", {"backup_id": backup_id, "database": database + "_copy"})
            assert "restore.copy_unusable" in stack.logs()
            assert job["status"] == "succeeded"
            assert stack.api.request("DELETE", f"/backups/{backup_id}").status == 204
        with psycopg.connect(pg_uri(database + "_copy")) as conn:
            assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 1000
        left = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket, Prefix=f"mirror/{backup_id}/").get("KeyCount")
        assert left == 0, "DELETE removed the mirror's copy too"
    finally:
        drop_database(database)
        drop_database(database + "_copy")
