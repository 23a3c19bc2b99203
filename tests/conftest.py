"""Shared fixtures: tiny random backbones (cached per session) and the toy data sets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from memories.backbone import Backbone
from memories.backbones import load_backbone

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
