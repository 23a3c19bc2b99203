"""Shared fixtures: tiny random backbones (cached per session) and the toy data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone
from memories.config import ExitConfig, LoraXSConfig, SpartanConfig
from memories.memfile import MemoryFile, MemoryMetadata
from memories.model import TaskMemory, head_shapes

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


def make_lora_memfile(
    backbone: Backbone,
    config: LoraXSConfig | None = None,
    labels: tuple[str, ...] = ("negative", "positive"),
    seed: int = 0,
) -> MemoryFile:
    """A random but valid LoRA-XS memory file for ``backbone``: R matrices large enough to change
    its answers, and a random head (no factors are needed to make one)."""
    from memories.loraxs import lora_xs_shapes

    config = config or LoraXSConfig(rank=4)
    generator = torch.Generator().manual_seed(seed)
    shapes = lora_xs_shapes(backbone.num_layers, config) | head_shapes(backbone.hidden_size, len(labels) or 1)
    tensors = {name: 0.3 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    meta = MemoryMetadata.for_backbone(backbone, config, labels, backbone.pooling, 128, "toy-lora", {})
    return MemoryFile(meta, tensors)
