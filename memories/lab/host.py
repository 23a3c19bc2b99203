"""Facts about the host a benchmark ran on, so a reader can tell which numbers compare.

Absolute numbers only compare within one host; every report carries :func:`machine`, which
names the CPU model and the instruction-set flags that decide which precision is fast there.
"""

from __future__ import annotations

import os
import platform

# The flags that change which kernels (and so which precision) win on an x86 CPU.
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo; the platform's processor string elsewhere."""
    model, flags = platform.processor(), []
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = value.split()
                    break
    except OSError:
        pass
    return model, flags


def machine() -> dict[str, object]:
    """CPU model, its speed-relevant flags, CPU count and the software versions."""
    import torch

    cpu, flags = _cpuinfo()
    return {
        "cpu": cpu,
        "cpu_flags": [flag for flag in SPEED_FLAGS if flag in flags],
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
