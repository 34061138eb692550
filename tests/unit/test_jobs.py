from __future__ import annotations

from shared.domain.jobs import Job, JobKind, JobStatus, Progress


def test_percent_comes_from_items_then_bytes() -> None:
    assert Progress(items_done=1, items_total=4).percent == 25.0
    assert Progress(bytes_done=50, bytes_total=200).percent == 25.0
    assert Progress(bytes_done=50).percent is None


def test_a_job_survives_serialization_through_every_state() -> None:
    job = Job(kind=JobKind.BACKUP, target="orders", engine="postgresql")
    assert Job.from_dict(job.to_dict()) == job
    job.start()
    job.progress = Progress(stage="dumping", bytes_done=10)
    job.fail("dump_failed", "pg_dump failed")
    restored = Job.from_dict(job.to_dict())
    assert restored == job
    assert restored.status is JobStatus.FAILED and restored.status.is_terminal
    assert restored.error.code == "dump_failed"
    assert not JobStatus.RUNNING.is_terminal
