"""A small real filesystem to fill up: tmpfs, or a loop-mounted ext4 image where tmpfs cannot be
mounted. Needs the right to mount (root, or a container with CAP_SYS_ADMIN); the caller skips
with the reason it gets when neither works."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CannotMount(Exception):
    pass


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@contextmanager
def small_filesystem(mount_point: Path, size_mb: int, workdir: Path) -> Iterator[Path]:
    """``mount_point`` holds a filesystem of ``size_mb`` MiB until the block ends."""
    mount_point.mkdir(parents=True, exist_ok=True)
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(mount_point))
    if tried.returncode != 0:
        image = workdir / "small-fs.img"
        steps = [
            ("truncate", "-s", f"{size_mb}M", str(image)),
            ("mkfs.ext4", "-q", "-F", "-m", "0", str(image)),
            ("mount", "-o", "loop", str(image), str(mount_point)),
        ]
        for step in steps:
            result = _run(*step)
            if result.returncode != 0:
                raise CannotMount(
                    f"cannot mount a small filesystem (tmpfs: {tried.stderr.strip() or tried.returncode}; "
                    f"{step[0]}: {result.stderr.strip() or result.returncode})"
                )
    try:
        yield mount_point
    finally:
        if _run("umount", str(mount_point)).returncode != 0:
            _run("umount", "-l", str(mount_point))  # a process still in it: detach now, free when it leaves
