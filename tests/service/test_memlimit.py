"""The cache budget follows the container's memory limit (real cgroups, a real server) when
``cache_bytes`` is unset; the arithmetic and its refusal on a limit that leaves no room."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from loadtest.cgroup import Limits, cgroup_version, start_confined
from loadtest.launcher import start_server
from service.errors import SettingsError
from service.memlimit import (
    DEFAULT_CACHE_BYTES,
    HEADROOM_MIN_BYTES,
    HeapTrimmer,
    cache_budget,
    memory_limit,
    resident_bytes,
)

MiB = 1 << 20
needs_cgroups = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_version() is None, reason="needs root and a cgroup hierarchy"
)


def test_the_budget_is_the_limit_minus_the_resident_set_and_the_headroom() -> None:
    assert cache_budget(None, 900 * MiB).bytes == DEFAULT_CACHE_BYTES
    budget = cache_budget(4096 * MiB, 500 * MiB)
    assert budget.bytes == (4096 - 500 - 1024) * MiB, "the headroom is a quarter of the limit"
    assert "memory limit 4096 MiB - resident 500 MiB" in budget.why
    small = cache_budget(1024 * MiB, 100 * MiB)
    assert small.bytes == 1024 * MiB - 100 * MiB - HEADROOM_MIN_BYTES, "at least the minimum headroom"


def test_a_limit_that_leaves_no_room_is_refused_with_the_numbers() -> None:
    with pytest.raises(SettingsError, match="leaves 0 MiB for memories.*set SPARTAN_CACHE_BYTES"):
        cache_budget(600 * MiB, 500 * MiB)


def test_cgroup_v2_limit_is_read_from_memory_max(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "service.memlimit.own_cgroup", lambda controller: tmp_path if controller == "" else None
    )
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory_limit() == 512 * MiB
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_limit() is None


def test_the_resident_set_is_read_from_proc() -> None:
    assert 10 * MiB < resident_bytes() < 64 << 30


@needs_cgroups
def test_the_limit_of_a_real_cgroup_is_read() -> None:
    probe = "import json; from service.memlimit import memory_limit; print(json.dumps(memory_limit()))"
    confined = start_confined(
        [sys.executable, "-c", probe],
        Limits(memory_bytes=512 * MiB),
        f"mem-{os.getpid()}",
        output=subprocess.PIPE,
    )
    try:
        out, _ = confined.process.communicate(timeout=60)
    finally:
        confined.stop(timeout=10)
    assert json.loads(out) == 512 * MiB


@needs_cgroups
def test_a_server_under_a_memory_limit_sizes_its_cache_to_fit() -> None:
    limit = 1536 * MiB
    with tempfile.TemporaryDirectory() as tmp:
        settings = {"backbone": "roberta-tiny-random", "registry_dir": f"{tmp}/registry", "threads": "1"}
        log = Path(tmp) / "server.log"
        server = start_server(settings, log, limits=Limits(memory_bytes=limit))
        try:
            metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        finally:
            server.stop()
        line = next(x for x in metrics.splitlines() if x.startswith("spartan_cache_capacity_bytes "))
        capacity = float(line.split()[1])
        assert 0 < capacity <= limit - 384 * MiB, (
            "a quarter of the limit stays free, and the backbone's bytes"
        )
        assert "cache budget: memory limit 1536 MiB - resident" in log.read_text()


def test_the_heap_trimmer_trims_only_after_work_and_at_most_every_interval() -> None:
    never = HeapTrimmer(0)
    never.worked()
    assert not never.maybe_trim(), "0 turns trimming off"
    trimmer = HeapTrimmer(0.05)
    assert not trimmer.maybe_trim(), "nothing ran yet"
    trimmer.worked()
    assert not trimmer.maybe_trim(), "not due yet"
    time.sleep(0.06)
    assert trimmer.maybe_trim(), "work since the last trim and the interval passed"
    time.sleep(0.06)
    assert not trimmer.maybe_trim(), "no work since"
