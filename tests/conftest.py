"""Shared fixtures: tiny random backbones (cached per session) and the toy data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.config import ExitConfig, SpartanConfig
from memories.memfile import MemoryFile, MemoryMetadata
from memories.model import TaskMemory

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
    backbone: Backbone,
    labels: tuple[str, ...] = ("negative", "positive"),
    seed: int = 0,
    exits: ExitConfig | None = None,
) -> MemoryFile:
    """A random (untrained) but valid memory file for ``backbone``; no labels: a regression memory."""
    torch.manual_seed(seed)
    config = SpartanConfig()
    task = TaskMemory(backbone.hidden_size, backbone.num_layers, len(labels) or 1, config, exits)
    for layer in task.layers:  # visible effect, so different memories give different answers
        torch.nn.init.normal_(layer.child_values, std=0.5)  # type: ignore[arg-type]
    meta = MemoryMetadata.for_backbone(
        backbone, config, labels, backbone.pooling, 128, "toy", {"steps": 3}, exits
    )
    return MemoryFile.from_task(task, meta)
