"""Facts about the host a benchmark ran on, so a reader can tell which numbers compare.

Absolute numbers only compare within one host; every report carries :func:`machine`, which
names the CPU model and the instruction-set flags that decide which precision is fast there.
"""

from __future__ import annotations

import os
import platform

from memories.allocator import malloc_settings
from memories.hardware import cpu


def machine() -> dict[str, object]:
    """CPU model, its generation and speed-relevant flags, CPU count, the software versions and the
    malloc tuning (which moved passes by 2-19% on an AMX Xeon)."""
    import torch

    host = cpu()
    return {
        "cpu": host.model,
        "cpu_signature": host.signature,
        "cpu_flags": list(host.flags),
        "torch_cpu_capability": host.torch_capability,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "malloc": malloc_settings(),  # memories.allocator's tuning ({}: glibc's defaults)
    }
