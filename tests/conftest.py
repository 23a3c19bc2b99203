"""Shared fixtures: tiny random backbones (cached per session) and the toy data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.memfile import MemoryFile, MemoryMetadata
from memories.model import TaskMemory
from memories.spartan import SpartanConfig

FIXTURES = Path(__file__).parent / "fixtures"
TOY_DATA = FIXTURES / "data"
TINY_BACKBONES = ("roberta-tiny-random", "bert-tiny-random", "mpnet-tiny-random")


@pytest.fixture(scope="session")
def tiny_backbones() -> dict[str, Backbone]:
    torch.set_num_threads(1)
    return {name: load_backbone(name) for name in TINY_BACKBONES}


@pytest.fixture
def roberta_tiny(tiny_backbones: dict[str, Backbone]) -> Backbone:
    return tiny_backbones["roberta-tiny-random"]


@pytest.fixture
def toy_data() -> Path:
    return TOY_DATA


def make_memfile(
    backbone: Backbone, labels: tuple[str, ...] = ("negative", "positive"), seed: int = 0, **overrides: object
) -> MemoryFile:
    """A random (untrained) but valid memory file for ``backbone``; ``overrides`` replace metadata fields."""
    torch.manual_seed(seed)
    outputs = len(labels) or 1
    task = TaskMemory(backbone.hidden_size, backbone.num_layers, outputs, SpartanConfig())
    for layer in task.layers:  # visible effect, so different memories give different answers
        torch.nn.init.normal_(layer.child_values, std=0.5)  # type: ignore[arg-type]
    fields: dict[str, object] = {
        "backbone": backbone.name,
        "backbone_fingerprint": backbone.fingerprint,
        "hidden_size": backbone.hidden_size,
        "num_layers": backbone.num_layers,
        "num_parents": 16,
        "num_children": 3,
        "top_k": 8,
        "child_temperature": 1.6,
        "task_type": "classification" if labels else "regression",
        "labels": list(labels),
        "pooling": backbone.pooling,
        "max_seq_length": 128,
        "task": "toy",
        "training": {"steps": 3},
    }
    fields.update(overrides)
    return MemoryFile.from_task(task, MemoryMetadata(**fields))  # type: ignore[arg-type]
