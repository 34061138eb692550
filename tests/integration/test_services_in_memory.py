"""The services, run in this process against a blob store in memory: no worker process, no
disk. Redis and PostgreSQL are the real ones; the jobs' tasks are sent to a queue no worker
reads, and the runner runs them here, as a worker would. Fast, and next to the real-server
tests of the same promises."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from shared.core.settings import Settings
from shared.domain.jobs import JobStatus
from shared.domain.ports import LeaseOwner
from shared.services.container import Services, build_services, job_runner
from shared.services.runner import JobRunner
from shared.storage import MemoryBlobStore
from tests.conftest import drop_database, pg_admin, pg_uri


@dataclass
class InMemory:
    services: Services
    runner: JobRunner
    blobs: MemoryBlobStore
    database: str


@pytest.fixture
def memory(own_redis_url: str) -> Iterator[InMemory]:
    database = f"flexdb_mem_{secrets.token_hex(4)}"
    with pg_admin() as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    with psycopg.connect(pg_uri(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE items AS SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 500) g")
    targets = {"pg": {"engine": "postgresql", "uri": pg_uri(database), "retention": {"keep_last": 2}}}
    settings = Settings.from_env(
        {
            "FLEXDB_REDIS_URL": own_redis_url,
            "FLEXDB_TARGETS": json.dumps(targets),
            "FLEXDB_LEASE_SECONDS": "2",
            "FLEXDB_PROGRESS_INTERVAL_SECONDS": "0.2",
        }
    )
    blobs = MemoryBlobStore("services")
    services = build_services(settings, blobs=blobs)
    try:
        yield InMemory(services, job_runner(services), blobs, database)
    finally:
        services.redis.flushdb()
        drop_database(database)
        drop_database(database + "_copy")


def test_a_backup_and_its_restore_run_through_the_services_into_memory(memory: InMemory) -> None:
    jobs = memory.services.jobs
    backup = memory.runner.run(jobs.submit_backup("pg").id)
    assert backup.status is JobStatus.SUCCEEDED, backup.error
    assert {info.key for info in memory.blobs.list(backup.backup_id + "/")} == {
        f"{backup.backup_id}/archive.dump.zst",  # pg_dump -Fc in the default codec
        f"{backup.backup_id}/manifest.json",
    }
    assert [m.id for m in memory.services.catalog.list("pg", 10, None).items] == [backup.backup_id]

    restore = memory.runner.run(jobs.submit_restore(backup.backup_id, database=memory.database + "_copy").id)
    assert restore.status is JobStatus.SUCCEEDED, restore.error
    with psycopg.connect(pg_uri(memory.database + "_copy")) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 500


def test_retention_keeps_what_the_policy_says_in_the_store(memory: InMemory) -> None:
    made = [memory.runner.run(memory.services.jobs.submit_backup("pg").id).backup_id for _ in range(4)]
    kept = [m.id for m in memory.services.catalog.list("pg", 10, None).items]
    assert kept == made[:-3:-1], "keep_last 2: the two newest, newest first"
    assert {info.key.split("/")[0] for info in memory.blobs.list("")} == set(kept)


def test_a_checksum_mismatch_in_the_store_stops_the_restore(memory: InMemory) -> None:
    backup = memory.runner.run(memory.services.jobs.submit_backup("pg").id)
    key = f"{backup.backup_id}/archive.dump.zst"
    with memory.blobs.open(key) as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0xFF
    with memory.blobs.writer(key) as sink:
        sink.write(bytes(data))
        sink.commit()
    restore = memory.runner.run(memory.services.jobs.submit_restore(backup.backup_id, database=memory.database + "_copy").id)
    assert restore.status is JobStatus.FAILED and restore.error.code == "checksum_mismatch"


def test_the_reaper_retries_a_dead_attempt_and_removes_what_it_wrote(memory: InMemory) -> None:
    services = memory.services
    job = services.jobs.submit_backup("pg")
    # A worker that died mid-dump: the job is running, its partial archive is in the store, and
    # its lease has lapsed.
    job.start()
    job.work_backup_id = "20261202T000000000000Z-dead00"
    services.jobs_repo.save(job)
    sink = memory.blobs.writer(f"{job.work_backup_id}/archive.dump")
    sink.write(b"half a dump")
    sink.commit()
    dead = LeaseOwner(job.id, "another-host", 1, "x")
    assert services.lease.acquire("pg", dead, job.created_at.timestamp()) is None
    services.redis.delete("flexdb:lease:pg")  # lapsed

    now = time.time()
    assert services.reaper.sweep(now).reaped == []  # first sighting
    time.sleep(services.reaper.interval_seconds)  # one sweep per interval, across workers
    report = services.reaper.sweep(now + services.settings.lease_seconds)
    assert report.reaped == [job.id]
    retried = services.jobs.get(job.id)
    assert retried.status is JobStatus.QUEUED and retried.progress.stage.startswith("retrying")
    assert list(memory.blobs.list(job.work_backup_id)) == [], "the dead attempt's archive is gone"
    final = memory.runner.run(job.id)
    assert final.status is JobStatus.SUCCEEDED and final.attempts == 2


KEY_A = "key-a:" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # 32 bytes of "A", base64
KEY_B = "key-b:" + "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="  # 32 bytes of "B", base64


def encrypted_services(base: Services, keys: str, blobs: MemoryBlobStore) -> Services:
    env = {
        "FLEXDB_REDIS_URL": base.settings.redis_url,
        "FLEXDB_TARGETS": json.dumps({"pg": {"engine": "postgresql", "uri": base.targets.get("pg").uri}}),
        "FLEXDB_ENCRYPTION_KEYS": keys,
    }
    return build_services(Settings.from_env(env), blobs=blobs)


def test_encrypted_backups_hold_no_plaintext_restore_and_survive_a_key_rotation(memory: InMemory) -> None:
    canary = "Plaintext-canary-" + secrets.token_hex(6)
    with psycopg.connect(pg_uri(memory.database), autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes SELECT %s FROM generate_series(1, 50)", (canary,))
    with_a = encrypted_services(memory.services, KEY_A, memory.blobs)
    backup = job_runner(with_a).run(with_a.jobs.submit_backup("pg").id)
    assert backup.status is JobStatus.SUCCEEDED, backup.error
    manifest = with_a.catalog.get(backup.backup_id)
    assert manifest.encryption == {"algorithm": "AES-256-GCM", "key_id": "key-a"}
    stored = b"".join(memory.blobs.open(i.key).read() for i in memory.blobs.list(backup.backup_id + "/"))
    assert canary.encode() not in stored and b"CREATE TABLE" not in stored

    # Rotated: key-b encrypts from now on, key-a still decrypts the old backup.
    rotated = encrypted_services(memory.services, f"{KEY_B},{KEY_A}", memory.blobs)
    restore = job_runner(rotated).run(rotated.jobs.submit_restore(backup.backup_id, database=memory.database + "_copy").id)
    assert restore.status is JobStatus.SUCCEEDED, restore.error
    with psycopg.connect(pg_uri(memory.database + "_copy")) as conn:
        assert conn.execute("SELECT count(*) FROM notes WHERE body = %s", (canary,)).fetchone()[0] == 50

    # Without the key the archive was made with, the restore is refused before the target is touched.
    without = encrypted_services(memory.services, KEY_B, memory.blobs)
    refused = job_runner(without).run(without.jobs.submit_restore(backup.backup_id, database=memory.database + "_copy", drop=True).id)
    assert refused.status is JobStatus.FAILED and refused.error.code == "encryption_key_missing"


def test_a_tampered_encrypted_archive_is_refused_before_the_target_is_touched(memory: InMemory) -> None:
    with_a = encrypted_services(memory.services, KEY_A, memory.blobs)
    backup = job_runner(with_a).run(with_a.jobs.submit_backup("pg").id)
    key = f"{backup.backup_id}/archive.dump.zst"
    data = bytearray(memory.blobs.open(key).read())
    data[len(data) // 2] ^= 0x01
    with memory.blobs.writer(key) as sink:
        sink.write(bytes(data))
        sink.commit()
    restore = job_runner(with_a).run(with_a.jobs.submit_restore(backup.backup_id, database=memory.database + "_copy").id)
    assert restore.status is JobStatus.FAILED and restore.error.code in {"archive_corrupt", "checksum_mismatch"}
    with pg_admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (memory.database + "_copy",)).fetchone() is None


def test_a_mirrored_backup_restores_from_the_mirror_when_the_primary_copy_is_gone(memory: InMemory) -> None:
    mirror = MemoryBlobStore("mirror")
    env = {
        "FLEXDB_REDIS_URL": memory.services.settings.redis_url,
        "FLEXDB_TARGETS": json.dumps({"pg": {"engine": "postgresql", "uri": memory.services.targets.get("pg").uri}}),
    }
    services = build_services(Settings.from_env(env), blobs=memory.blobs)
    services.storage.mirror = type(services.storage)(mirror)  # a mirror in memory too
    backup = job_runner(services).run(services.jobs.submit_backup("pg").id)
    assert services.catalog.get(backup.backup_id).copies == [{"storage": "mirror", "status": "pending", "at": None}]

    copied = services.catalog.mirror(backup.backup_id)  # what the follow-up task does
    assert copied.copies[0]["status"] == "copied" and services.catalog.get(backup.backup_id).copies[0]["status"] == "copied"
    assert {i.key for i in mirror.list(backup.backup_id + "/")} == {i.key for i in memory.blobs.list(backup.backup_id + "/")}

    memory.blobs.delete(f"{backup.backup_id}/archive.dump.zst")  # the primary copy is lost
    restore = job_runner(services).run(services.jobs.submit_restore(backup.backup_id, database=memory.database + "_copy").id)
    assert restore.status is JobStatus.SUCCEEDED, restore.error
    with psycopg.connect(pg_uri(memory.database + "_copy")) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone()[0] == 500

    services.storage.delete(backup.backup_id)  # retention and DELETE remove both copies
    assert list(mirror.list(backup.backup_id + "/")) == [] and list(memory.blobs.list(backup.backup_id + "/")) == []
