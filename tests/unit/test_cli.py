"""The command line's parts that need no server: how it follows a job without a busy loop, how
it prints progress for a log, and that it stays a pure HTTP client, installable alone.
The live behaviour (exit codes, --json, downloads, restores) is in tests/e2e/test_cli.py."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flexdb_cli.client import Answer
from flexdb_cli.errors import StoppedWaiting
from flexdb_cli.output import ProgressLines, human_size, table
from flexdb_cli.watch import QUIET_WAIT_SECONDS, JobWatcher

REPO = Path(__file__).resolve().parents[2]


def job_answer(status: str, percent: float | None = None, stage: str = "dumping", retry_after: str = "2") -> Answer:
    done = status in ("succeeded", "failed", "cancelled")
    body = {"id": "j1", "kind": "backup", "status": status, "done": done, "progress": {"stage": stage, "percent": percent}}
    return Answer(200, {} if done else {"Retry-After": retry_after}, json.dumps(body), "http://api/api/v1/jobs/j1")


class ScriptedApi:
    """Stands in for the API where the real one cannot be made to act so: it answers the
    long-poll at once with no change (the API had no free wait slot), as a test needs it to."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers, self.waits = answers, []

    def job(self, job_id: str, wait: int = 0) -> Answer:
        self.waits.append(wait)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_an_early_answer_without_change_sleeps_retry_after_instead_of_asking_again_at_once() -> None:
    api = ScriptedApi([job_answer("queued", retry_after="2"), job_answer("running"), job_answer("succeeded")])
    slept: list[float] = []

    final = JobWatcher(api, sleep=slept.append).follow(job_answer("queued"))

    assert final.data["status"] == "succeeded"
    assert api.waits == [QUIET_WAIT_SECONDS] * 3  # every request is a long-poll
    assert slept == [2.0]  # the unchanged early answer only; a change is asked about again at once


def test_ctrl_c_while_following_stops_watching_and_names_the_command_to_resume() -> None:
    api = ScriptedApi([KeyboardInterrupt()])

    with pytest.raises(StoppedWaiting) as stopped:
        JobWatcher(api, sleep=lambda _: None).follow(job_answer("running"))

    assert stopped.value.exit_code == 130
    assert "flexdb jobs wait j1" in stopped.value.message


def test_progress_lines_for_a_log_write_only_when_something_a_reader_cares_about_moves() -> None:
    out = io.StringIO()
    lines = ProgressLines(out, "backup j1")
    for percent in (0.0, 3.0, 9.9, 10.0, 15.0, 55.0):
        lines.update(job_answer("running", percent).data)
    lines.finish(job_answer("succeeded", 100.0).data)

    assert out.getvalue().splitlines() == [
        "backup j1 running, dumping, 0.0%",
        "backup j1 running, dumping, 10.0%",
        "backup j1 running, dumping, 55.0%",
        "backup j1 succeeded, dumping, 100.0%",
    ]


def test_sizes_and_tables_read_easily() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19)] == ["0 B", "1023 B", "1.0 KiB", "5.5 MiB"]
    assert table(("ID", "NAME"), [("a-long-id", "x"), ("b", None)]).splitlines() == [
        "ID         NAME",
        "a-long-id  x",
        "b          -",
    ]


def test_the_command_line_imports_no_service_code() -> None:
    probe = (
        "import sys, flexdb_cli.main; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'api', 'shared', 'worker', 'flask', 'celery', 'redis'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


def test_the_package_pins_what_requirements_pin() -> None:
    """pyproject.toml (for installing the command alone) and requirements/cli.txt (for make venv)."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = re.findall(r"^([A-Za-z0-9_.\[\]-]+==\S+)", (REPO / "requirements" / "cli.txt").read_text(), re.MULTILINE)
    assert sorted(declared) == sorted(pinned)
