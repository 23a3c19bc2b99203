"""The cache budget when none is set: what the container's memory limit leaves for memories.

With ``cache_bytes`` unset and a cgroup memory limit (v2 ``memory.max``, v1
``memory.limit_in_bytes``), the cache may hold the limit, minus what the process already holds
once the backbone is loaded (its resident set), minus a headroom for what serving allocates
besides the cache: batch activations, request bodies, the server. The headroom is
:data:`HEADROOM_FRACTION` of the limit, at least :data:`HEADROOM_MIN_BYTES`. Without a limit the
budget is :data:`DEFAULT_CACHE_BYTES`. When the limit leaves less than :data:`MIN_CACHE_BYTES`, the
service does not start, and the error names the numbers. A process killed for memory later
would lose every request in flight.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from memories.allocator import glibc
from service.cpu import own_cgroup, read_value
from service.errors import SettingsError

DEFAULT_CACHE_BYTES = 256 << 20
HEADROOM_FRACTION = 0.25
HEADROOM_MIN_BYTES = 256 << 20
MIN_CACHE_BYTES = 8 << 20


@dataclass(frozen=True)
class CacheBudget:
    bytes: int
    why: str  # logged at start-up


def memory_limit() -> int | None:
    """This process's cgroup memory limit in bytes; None when unlimited or unknown."""
    v2 = own_cgroup("")
    if v2 is not None and (raw := read_value(v2 / "memory.max")) is not None:
        return None if raw == "max" else int(raw)
    v1 = own_cgroup("memory")
    if v1 is not None and (raw := read_value(v1 / "memory.limit_in_bytes")) is not None:
        limit = int(raw)
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return None if limit >= physical else limit  # v1 says "unlimited" with a huge number
    return None


def resident_bytes(statm: Path = Path("/proc/self/statm")) -> int:
    """This process's resident set size in bytes (0 where /proc is missing)."""
    raw = read_value(statm)
    return int(raw.split()[1]) * os.sysconf("SC_PAGE_SIZE") if raw else 0


def cache_budget(limit: int | None, resident: int) -> CacheBudget:
    """The cache's byte budget under memory ``limit``, with ``resident`` bytes already in use."""
    if limit is None:
        return CacheBudget(
            DEFAULT_CACHE_BYTES, f"no memory limit: the default {DEFAULT_CACHE_BYTES >> 20} MiB"
        )
    headroom = max(HEADROOM_MIN_BYTES, int(HEADROOM_FRACTION * limit))
    budget = limit - resident - headroom
    numbers = (
        f"memory limit {limit >> 20} MiB - resident {resident >> 20} MiB (backbone loaded) - "
        f"headroom {headroom >> 20} MiB"
    )
    if budget < MIN_CACHE_BYTES:
        raise SettingsError(
            f"{numbers} leaves {max(budget, 0) >> 20} MiB for memories, under the "
            f"{MIN_CACHE_BYTES >> 20} MiB minimum: raise the memory limit or set SPARTAN_CACHE_BYTES"
        )
    return CacheBudget(budget, f"{numbers} = {budget >> 20} MiB")


class HeapTrimmer:
    """Hands the heap's free pages back to the system (glibc ``malloc_trim``), at most every
    ``every_s`` seconds and only after work since the last trim; a no-op where there is no glibc.

    A burst runs full batches whose activations raise the heap's high-water mark; glibc keeps the
    freed pages, so each burst left the resident set a step higher (a 30-minute soak grew 1.1
    MiB/min, docs/reliability.md section 2). The engine calls :meth:`maybe_trim` when it goes idle,
    so the call (milliseconds) never delays a batch that is waiting.
    """

    def __init__(self, every_s: float) -> None:
        libc = glibc() if every_s > 0 else None
        self._trim = None if libc is None else libc.malloc_trim
        self.every_s = every_s
        self._last = time.monotonic()
        self._dirty = False

    def worked(self) -> None:
        """Note that batches ran (so there may be freed pages to hand back)."""
        self._dirty = True

    def maybe_trim(self) -> bool:
        """Trim if it is due; whether it did."""
        now = time.monotonic()
        if self._trim is None or not self._dirty or now - self._last < self.every_s:
            return False
        self._trim(0)
        self._last, self._dirty = now, False
        return True
