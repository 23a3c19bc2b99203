"""glibc malloc settings for a process that runs batches: freed activation buffers are kept for
the next batch instead of being mapped and faulted in afresh every time.

With glibc's defaults an allocation above the mmap threshold (128 KiB at first, raised towards
32 MiB as such blocks are freed) gets a fresh mapping that is unmapped again on free, and each
thread gets its own arena whose 64 MiB heaps shrink as they empty. A forward pass allocates a few
dozen buffers of 3-25 MB per layer (RoBERTa-base, 32 x 64 tokens: the FFN's [2048, 3072] output
is 12.6 MB in bf16, 25 MB in fp32), so every batch could fault its working set in again, one
4 KiB page at a time. ``tests/memories/test_allocator.py`` counts it; docs/performance.md
section 8 has the speed.

:data:`REUSE` keeps them: one arena for every thread (a thread arena's capped heaps still refault
fp32-sized buffers), a fixed mmap threshold at glibc's ceiling of 32 MiB, and a trim
threshold of 256 MiB, so the top of the heap is not handed back between batches. Freed memory
then stays resident up to the busiest batch's working set; the service's idle trim
(service.memlimit.HeapTrimmer) still hands it back when the engine goes idle. A ``MALLOC_*_``
environment variable set for a parameter wins over the tuning (glibc reads those before any
allocation; ``mallopt`` acts from its call on). Without glibc (musl, macOS) nothing is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

MiB = 1 << 20

# glibc's mallopt parameter numbers (malloc.h) and the environment variables that set them.
_PARAMETERS = {
    "arenas": (-8, "MALLOC_ARENA_MAX"),
    "mmap_threshold": (-3, "MALLOC_MMAP_THRESHOLD_"),
    "trim_threshold": (-1, "MALLOC_TRIM_THRESHOLD_"),
}


@dataclass(frozen=True)
class MallocTuning:
    """What to ask glibc for; None leaves a parameter at glibc's default."""

    arenas: int | None
    mmap_threshold: int | None = None  # bytes; glibc refuses more than 32 MiB on 64-bit
    trim_threshold: int | None = None  # bytes of free heap top kept before it is handed back

    def __post_init__(self) -> None:
        if self.arenas is not None and self.arenas < 1:
            raise ValueError(f"arenas must be >= 1, got {self.arenas}")
        if self.mmap_threshold is not None and not 0 < self.mmap_threshold <= 32 * MiB:
            raise ValueError(f"mmap_threshold must be in (0, 32 MiB], got {self.mmap_threshold}")


REUSE = MallocTuning(arenas=1, mmap_threshold=32 * MiB, trim_threshold=256 * MiB)
ARENAS_ONLY = MallocTuning(arenas=2)  # the arena cap alone (RSS under cache churn: docs/reliability.md)

_applied: dict[str, str] = {}


def tune_malloc(tuning: MallocTuning) -> dict[str, str]:
    """Apply ``tuning`` through ``mallopt``; call before other threads allocate. Returns, per
    parameter, the value set, ``env`` (an environment variable set it), or why it was not set;
    :func:`malloc_settings` reports the same afterwards."""
    libc = glibc()
    for name, (number, env) in _PARAMETERS.items():
        value: int | None = getattr(tuning, name)
        if env in os.environ:
            _applied[name] = f"env {env}={os.environ[env]}"
        elif value is None:
            _applied.pop(name, None)
        elif libc is None:
            _applied[name] = "not set: no glibc mallopt here"
        elif libc.mallopt(number, value) == 1:
            _applied[name] = str(value)
        else:
            _applied[name] = f"not set: glibc refused {value}"
    return dict(_applied)


def malloc_settings() -> dict[str, str]:
    """What :func:`tune_malloc` set in this process (empty: glibc's defaults)."""
    return dict(_applied)


def glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (has mallopt), else None."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None
