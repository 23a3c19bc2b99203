"""The paper's baselines: Pfeiffer and Houlsby adapters, full fine-tuning and a linear probe.

They train through the same loop as SPARTAN (:func:`memories.train.train`, given
:func:`build_model`) and are saved as baseline checkpoints (:mod:`memories.lab.checkpoint`),
never served.

=========  ==========================================================  =========
method     trains                                                      paper lr
=========  ==========================================================  =========
spartan    a SPARTAN memory after every layer + head (served)           1e-3
lora-xs    an r x r matrix per adapted weight + head (served)           1e-3
pfeiffer   one bottleneck adapter per layer + head                     1e-4
houlsby    two bottleneck adapters per layer + head                    1e-4
full       a copy of the whole encoder + head (dropout on)             2e-5
probe      one linear layer on the frozen pooled features              1e-3
=========  ==========================================================  =========

The head of every method but the probe is RoBERTa's classification head
(:class:`~memories.model.Head`). The frozen backbone runs in eval mode (no dropout) for every
method but ``full``, whose copy trains like a normal fine-tuning.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from memories.backbone import Backbone, Encoded, Pooling, pool, run_encoder
from memories.config import METHODS, LoraXSConfig, Method, SpartanConfig
from memories.errors import ConfigError, InvalidMemoryFileError
from memories.lab.adapters import AdapterConfig, Adapters
from memories.lab.checkpoint import (
    BaselineMethod,
    CheckpointMetadata,
    check_checkpoint_backbone,
    read_checkpoint,
    save_checkpoint,
)
from memories.memfile import FileDType
from memories.methods import SavedTask, TaskModel, build_served
from memories.model import Head


class BaselineModel(TaskModel):
    """A method the paper compares against: saved as a baseline checkpoint, never served."""

    method: BaselineMethod

    def save(self, path: Path, task: SavedTask, dtype: FileDType) -> int:
        checkpoint = CheckpointMetadata(
            method=self.method,
            backbone=task.backbone.name,
            backbone_fingerprint=task.backbone.fingerprint,
            task=task.spec.name,
            task_type=task.spec.task_type,
            labels=list(task.spec.labels),
            num_outputs=len(task.spec.labels) or 1,
            pooling=task.pooling,
            max_seq_length=task.max_seq_length,
            bottleneck=self.bottleneck(),
            summary=task.summary,
        )
        torch_dtype = torch.float16 if dtype == "float16" else torch.float32
        return save_checkpoint(path, self.state_dict(), checkpoint, torch_dtype)

    def bottleneck(self) -> int | None:
        return None


class AdapterModel(BaselineModel):
    """Pfeiffer or Houlsby adapters hooked into the frozen backbone, and the head."""

    def __init__(self, backbone: Backbone, num_outputs: int, config: AdapterConfig) -> None:
        super().__init__()
        self.method = config.kind
        self.adapters = Adapters(backbone.hidden_size, backbone.num_layers, config)
        self.head = Head(backbone.hidden_size, num_outputs)

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        with self.adapters.attached(backbone):
            hidden = backbone.forward(batch)  # [B, S, d]
        logits: torch.Tensor = self.head(pool(hidden, batch.attention_mask, pooling))
        return logits

    def bottleneck(self) -> int | None:
        return self.adapters.config.bottleneck


class FullFineTune(BaselineModel):
    """A trainable copy of the whole encoder and the head."""

    method: BaselineMethod = "full"

    def __init__(self, backbone: Backbone, num_outputs: int) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(backbone.model)
        self.encoder.requires_grad_(True)
        self.head = Head(backbone.hidden_size, num_outputs)

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        hidden = run_encoder(self.encoder, batch)  # [B, S, d]
        logits: torch.Tensor = self.head(pool(hidden, batch.attention_mask, pooling))
        return logits


class LinearProbe(BaselineModel):
    """One linear layer on the frozen backbone's pooled features."""

    method: BaselineMethod = "probe"

    def __init__(self, backbone: Backbone, num_outputs: int) -> None:
        super().__init__()
        self.out = nn.Linear(backbone.hidden_size, num_outputs)

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        with torch.no_grad():
            pooled = pool(backbone.forward(batch), batch.attention_mask, pooling)  # [B, d]
        logits: torch.Tensor = self.out(pooled)
        return logits


def build_model(
    method: Method,
    backbone: Backbone,
    num_outputs: int,
    spartan: SpartanConfig | None = None,
    bottleneck: int = 64,
    lora_xs: LoraXSConfig | None = None,
) -> TaskModel:
    """A freshly initialised task model (seed torch first for a reproducible start)."""
    if method in ("spartan", "lora-xs"):
        return build_served(method, backbone, num_outputs, spartan, bottleneck, lora_xs)
    if method in ("pfeiffer", "houlsby"):
        return AdapterModel(backbone, num_outputs, AdapterConfig(method, bottleneck))
    if method == "full":
        return FullFineTune(backbone, num_outputs)
    if method == "probe":
        return LinearProbe(backbone, num_outputs)
    raise ConfigError(f"method must be one of {METHODS}, got {method!r}")


def load_baseline(path: Path, backbone: Backbone) -> tuple[TaskModel, CheckpointMetadata]:
    """A baseline checkpoint back as a model for ``backbone`` (which must be the one it was trained on)."""
    meta, tensors = read_checkpoint(path)
    check_checkpoint_backbone(meta, backbone)
    model = build_model(meta.method, backbone, meta.num_outputs, bottleneck=meta.bottleneck or 64)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise InvalidMemoryFileError(f"{path}: the tensors do not fit a {meta.method} model: {exc}") from None
    return model, meta
