"""How a worker process uses glibc's malloc, so its memory stays flat across job sizes.

glibc's defaults suit short programs, not a process that streams gigabytes through buffers of
a few MiB on several threads: each thread may get its own arena, whose freed memory stays
resident, and after the first big buffer is freed the mmap threshold rises to its size, so the
next big buffers land on a heap that fragments instead of in mappings given back on free.
Elsewhere (musl, macOS) these functions do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

# mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def tune_allocator(arenas: int, mmap_threshold: int) -> bool:
    """Cap malloc's arenas and fix its mmap threshold (0 leaves either as glibc has it). Call
    before the process starts threads or forks; True when glibc took the settings."""
    libc = _glibc()
    if libc is None:
        return False
    ok = True
    if arenas:
        ok = bool(libc.mallopt(_M_ARENA_MAX, arenas)) and ok
    if mmap_threshold:
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and ok
    return ok


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (after a big job)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
