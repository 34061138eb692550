"""How answers look to a person: tables, records, sizes, and a job's live progress."""

from __future__ import annotations

import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

import click

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
BAR_WIDTH = 24


def human_size(size: float | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def short_time(stamp: str | None) -> str:
    """``2026-11-26T09:54:38.540318Z`` as ``2026-11-26 09:54:38Z``."""
    if not stamp:
        return "-"
    day, _, clock = stamp.partition("T")
    return f"{day} {clock.split('.')[0].rstrip('Z')}Z" if clock else stamp


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns aligned on the widest cell; the last column is left ragged."""
    lines = [list(headers)] + [[cell(value) for value in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers) - 1)]
    return "\n".join(
        "  ".join([text.ljust(width) for text, width in zip(line, widths)] + [line[-1]]).rstrip() for line in lines
    )


def record(data: Mapping[str, Any], prefix: str = "") -> str:
    """A JSON object as ``key: value`` lines, nested objects as ``outer.inner: value``."""
    lines: list[str] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            lines.append(record(value, name + "."))
        elif isinstance(value, list):
            lines.append(f"{name}: {', '.join(cell(item) for item in value) or '-'}")
        else:
            lines.append(f"{name}: {cell(value) if not isinstance(value, Mapping) else '-'}")
    return "\n".join(lines)


def progress_text(job: Mapping[str, Any], with_status: bool = True) -> str:
    """``running, dumping, 45.0%, 12.3 MiB, public.orders``: the parts of a job's progress that are known."""
    progress = job.get("progress") or {}
    parts = [str(job.get("status"))] if with_status else []
    if progress.get("stage"):
        parts.append(str(progress["stage"]))
    if progress.get("percent") is not None:
        parts.append(f"{progress['percent']:.1f}%")
    if progress.get("bytes_done"):
        total = progress.get("bytes_total")
        parts.append(human_size(progress["bytes_done"]) + (f" of {human_size(total)}" if total else ""))
    if progress.get("current"):
        parts.append(str(progress["current"]))
    if job.get("cancel_requested") and not job.get("done"):
        parts.append("cancel requested")
    return ", ".join(parts)


class ProgressDisplay(ABC):
    """Shows a job (or a transfer) as it moves; ``finish`` when it ends, ``abandon`` on Ctrl-C.
    ``refresh_seconds``: how often it wants fresh progress (a status change shows at once)."""

    refresh_seconds = 1

    def __init__(self, stream: IO[str], label: str) -> None:
        self.stream, self.label = stream, label

    @abstractmethod
    def update(self, job: Mapping[str, Any]) -> None: ...

    def finish(self, job: Mapping[str, Any]) -> None:
        self.update(job)

    def abandon(self) -> None:
        pass


class ProgressBar(ProgressDisplay):
    """One line on a terminal, redrawn in place: a bar when the percentage is known."""

    def __init__(self, stream: IO[str], label: str) -> None:
        super().__init__(stream, label)
        self._drawn = False

    def update(self, job: Mapping[str, Any]) -> None:
        percent = (job.get("progress") or {}).get("percent")
        bar = ""
        if percent is not None:
            filled = round(BAR_WIDTH * min(max(percent, 0.0), 100.0) / 100)
            bar = "[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "] "
        width = shutil.get_terminal_size().columns - 1
        line = f"{self.label} {bar}{progress_text(job)}"[:width]
        self.stream.write("\r" + line.ljust(width))
        self.stream.flush()
        self._drawn = True

    def finish(self, job: Mapping[str, Any]) -> None:
        self.update(job)
        self.abandon()

    def abandon(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class ProgressLines(ProgressDisplay):
    """Plain lines for logs and pipes: one when the status or stage changes or the percentage
    passes another tenth, so an hour-long backup writes a few lines, not thousands."""

    refresh_seconds = 10

    def __init__(self, stream: IO[str], label: str) -> None:
        super().__init__(stream, label)
        self._last: tuple | None = None

    def update(self, job: Mapping[str, Any]) -> None:
        progress = job.get("progress") or {}
        percent = progress.get("percent")
        key = (job.get("status"), progress.get("stage"), None if percent is None else int(percent // 10))
        if key != self._last:
            self._last = key
            self.stream.write(f"{self.label} {progress_text(job)}\n")
            self.stream.flush()


def progress_display(label: str, stream: IO[str] | None = None) -> ProgressDisplay:
    """A bar on a terminal, lines otherwise (stderr: stdout stays the command's result)."""
    stream = stream or click.get_text_stream("stderr")
    return ProgressBar(stream, label) if stream.isatty() else ProgressLines(stream, label)


class TransferProgress:
    """Feeds a byte count into a progress display at most every ``interval`` seconds."""

    def __init__(self, display: ProgressDisplay | None, stage: str, total: int | None, interval: float = 0.5) -> None:
        self._display, self._stage, self._total, self._interval = display, stage, total, interval
        self.done, self._shown_at = 0, 0.0

    def _as_job(self, status: str) -> dict[str, Any]:
        percent = round(100.0 * self.done / self._total, 1) if self._total else None
        progress = {"stage": self._stage, "bytes_done": self.done, "bytes_total": self._total, "percent": percent}
        return {"status": status, "progress": progress}

    def advance(self, count: int) -> None:
        self.done += count
        if self._display and time.monotonic() - self._shown_at >= self._interval:
            self._shown_at = time.monotonic()
            self._display.update(self._as_job("running"))

    def finish(self, status: str) -> None:
        if self._display:
            self._display.finish(self._as_job(status))
