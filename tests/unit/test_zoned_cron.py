"""Cron schedules fire at the wall-clock time of their own time zone, across DST changes."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from celery import Celery

from shared.core.errors import ValidationFailed
from shared.repositories.beat import parse_cron

APP = Celery("zoned-cron-test")  # Celery's own clock and UTC default; no broker is touched


def next_run(expression: str, zone: str, after: datetime) -> datetime:
    schedule = parse_cron(expression, zone, APP)
    schedule.nowfun = lambda: after
    return after + schedule.remaining_estimate(after)


@pytest.mark.parametrize(
    ("after", "expected_utc"),
    [
        # Berlin is UTC+1 in winter and UTC+2 in summer: 02:30 local moves in UTC.
        (datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc), datetime(2026, 1, 11, 1, 30, tzinfo=timezone.utc)),
        (datetime(2026, 7, 10, 12, 0, tzinfo=timezone.utc), datetime(2026, 7, 11, 0, 30, tzinfo=timezone.utc)),
    ],
)
def test_a_nightly_cron_keeps_its_local_time_in_winter_and_summer(after, expected_utc) -> None:
    assert abs((next_run("30 2 * * *", "Europe/Berlin", after) - expected_utc).total_seconds()) < 1


def test_utc_is_the_default_frame() -> None:
    after = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc)
    assert abs((next_run("30 2 * * *", "UTC", after) - datetime(2026, 1, 11, 2, 30, tzinfo=timezone.utc)).total_seconds()) < 1


@pytest.mark.parametrize("expression", ["61 * * * *", "* 25 * * *", "* * *", "every day"])
def test_invalid_expressions_point_at_cron(expression) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_cron(expression, "UTC", APP)
    assert caught.value.errors[0]["pointer"] == "/cron"
