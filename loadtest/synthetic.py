"""Untrained but valid memory files, the load that benchmarks and load tests upload."""

from __future__ import annotations

import torch

from memories.backbone import Backbone
from memories.config import SpartanConfig
from memories.memfile import MemoryFile, MemoryMetadata
from memories.model import TaskMemory


def random_memories(
    backbone: Backbone, count: int, seed: int, prefix: str = "bench", max_seq_length: int = 128
) -> list[MemoryFile]:
    """``count`` untrained two-label memories for ``backbone`` (tasks ``<prefix>-<i>``), for load;
    inputs are truncated to ``max_seq_length`` tokens."""
    torch.manual_seed(seed)
    files = []
    for i in range(count):
        task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig())
        meta = MemoryMetadata.for_backbone(
            backbone, SpartanConfig(), ["no", "yes"], backbone.pooling, max_seq_length, task=f"{prefix}-{i}"
        )
        files.append(MemoryFile.from_task(task, meta))
    return files
