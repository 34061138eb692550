"""The job view (shared/services/views.py) is built without marshmallow, for speed: it must stay
exactly what JobSchema (api/schemas.py, which the OpenAPI document is made from) describes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.schemas import JobSchema
from shared.domain.jobs import Callback, Job, JobKind, Progress, utcnow
from shared.services.views import job_view


def _queued() -> Job:
    return Job(kind=JobKind.BACKUP, target="orders", engine="postgresql", params={"options": {}})


def _running() -> Job:
    job = _queued()
    job.start()
    job.progress = Progress(stage="dumping", bytes_done=10, bytes_total=40, items_done=1, items_total=3, current="t")
    return job


def _failed() -> Job:
    job = _running()
    job.callback = Callback(url="https://example.invalid/hook", status="failed", attempts=2, last_error="timeout")
    job.fail("dump_failed", "pg_dump failed")
    return job


def _succeeded() -> Job:
    job = Job(kind=JobKind.RESTORE, target="orders", engine="mongodb", created_at=utcnow() - timedelta(seconds=5))
    job.start()
    job.backup_id = "20261202T000000Z-orders-abc"
    job.succeed({"sha256": "00" * 32})
    return job


@pytest.mark.parametrize("make", [_queued, _running, _failed, _succeeded])
def test_the_job_view_is_what_the_schema_documents(make) -> None:
    view = job_view(make(), "http://api.example")
    dumped = JobSchema().dump(view)
    assert view == dumped
    # The same keys in the same order, nested ones too: the body is the same bytes as before.
    assert list(view) == list(dumped)
    assert list(view["progress"]) == list(dumped["progress"])
    for nested in ("error", "callback"):
        if view[nested] is not None:
            assert list(view[nested]) == list(dumped[nested])
