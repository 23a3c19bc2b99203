"""The malloc tuning keeps freed batch buffers for the next batch: counted in page faults of a real
child process (glibc's defaults fault freed 25 MB buffers in again every round), not in time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from memories.allocator import MallocTuning, MiB, glibc

needs_glibc = pytest.mark.skipif(glibc() is None, reason="needs glibc's mallopt")

# A worker thread runs 40 rounds (after 5) of what an FFN does with a 32 x 64 batch: a [2048, 3072] fp32
# buffer (25 MB), a second one made from it, the first freed, a [2048, 768] result, the second
# freed, its sum. The child prints its minor page faults per round.
_CHILD = """
import json, resource, sys, threading
from memories.allocator import REUSE, tune_malloc
applied = tune_malloc(REUSE) if sys.argv[1] == "reuse" else {}
import torch
x = torch.rand(2048, 768)
faults = []
def ffn():
    wide = x.repeat(1, 4)
    activated = torch.tanh(wide)
    del wide
    return (activated[:, :768] * 2).sum()
def rounds():
    for _ in range(5):
        ffn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        ffn()
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
worker = threading.Thread(target=rounds)
worker.start()
worker.join()
print(json.dumps({"applied": applied, "faults": faults[0]}))
"""


def _child(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    result: dict[str, object] = json.loads(out.stdout)
    return result


@needs_glibc
def test_reuse_stops_a_freed_batch_buffer_from_being_faulted_in_again() -> None:
    pages = 2048 * 3072 * 4 // 4096  # one wide buffer: 6144 pages of 4 KiB
    default = _child("default")
    reused = _child("reuse")
    assert float(default["faults"]) > pages / 10, (
        f"glibc's defaults should fault the buffer in again: {default}"
    )  # type: ignore[arg-type]
    assert float(reused["faults"]) < pages / 20, f"the tuned heap should keep the buffer: {reused}"  # type: ignore[arg-type]
    assert reused["applied"] == {
        "arenas": "1",
        "mmap_threshold": str(32 * MiB),
        "trim_threshold": str(256 * MiB),
    }


@needs_glibc
def test_an_environment_variable_wins_over_the_tuning() -> None:
    applied = _child("reuse", MALLOC_ARENA_MAX="3")["applied"]
    assert applied == {
        "arenas": "env MALLOC_ARENA_MAX=3",
        "mmap_threshold": str(32 * MiB),
        "trim_threshold": str(256 * MiB),
    }


def test_a_threshold_glibc_would_refuse_is_caught_with_its_value() -> None:
    with pytest.raises(ValueError, match=r"mmap_threshold must be in \(0, 32 MiB\], got 67108864"):
        MallocTuning(arenas=1, mmap_threshold=64 * MiB)
    with pytest.raises(ValueError, match="arenas must be >= 1, got 0"):
        MallocTuning(arenas=0)
