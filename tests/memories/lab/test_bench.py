"""The benchmark's early-exit variants leave at the depths their names say."""

from __future__ import annotations

from typing import Any

import torch

from memories.backbone import Backbone
from memories.config import SpartanConfig
from memories.lab.bench import EXIT_VARIANTS, exit_variants, random_batch
from memories.model import TaskMemory


def test_the_exit_variants_leave_where_their_names_say(roberta_tiny: Backbone) -> None:
    backbone = roberta_tiny
    torch.manual_seed(0)
    task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig())
    plain = task.requires_grad_(False).pack(backbone.pooling)
    batch = random_batch(backbone, 6, 12, seed=0)
    variants = exit_variants(backbone, batch, plain)
    assert set(variants) == set(EXIT_VARIANTS)
    layers: dict[str, Any] = {name: run().exit_layers for name, run in variants.items()}  # type: ignore[attr-defined]
    full, first = backbone.num_layers - 1, 0  # two layers: every exit follows the first
    assert layers["exits-stay"] == [full] * 6
    assert layers["exits-leave-quarter"] == layers["exits-leave-half"] == [first] * 6
    assert layers["exits-mixed"] == [first, full] * 3, "even rows leave, odd rows have no exits"
