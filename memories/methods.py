"""The trainable part of a task: the interface every training method implements, and SPARTAN's.

Every method is a :class:`TaskModel`: an ``nn.Module`` holding exactly the tensors the method
trains, a differentiable ``forward(backbone, batch, pooling)`` for training, a
:meth:`~TaskModel.predictor` for evaluation and a :meth:`~TaskModel.save`. The frozen
:class:`~memories.backbone.Backbone` is passed in, never owned, so one backbone serves them all.

The core builds the served methods (:func:`build_served`): SPARTAN and LoRA-XS
(memories.loraxs), both saved as memory files. The paper's baselines (adapters, full
fine-tuning, a probe) are research tools in :mod:`memories.lab.baselines`, whose ``build_model``
builds every method and is what ``spartan train --method`` passes to :func:`memories.train.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from memories.backbone import Backbone, Encoded, Pooling, pool
from memories.backbones import default_cache_dir
from memories.config import ExitConfig, LoraXSConfig, LoraXSSite, Method, SpartanConfig
from memories.data import TaskSpec
from memories.errors import ConfigError
from memories.evaluate import Predictor, memory_predictor
from memories.loraxs import LoraXSLayer, apply_delta, linear_hooks, prepare_factors
from memories.memfile import FileDType, MemoryFile, MemoryMetadata, check_backbone
from memories.model import Head, TaskMemory, pack_tensors


@dataclass(frozen=True)
class SavedTask:
    """What a task's file records besides its tensors."""

    backbone: Backbone
    spec: TaskSpec
    pooling: Pooling
    max_seq_length: int
    summary: dict[str, Any]


class TaskModel(nn.Module):
    """The trainable tensors of one task under one method."""

    method: Method

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        """Training path (differentiable): logits [B, num_outputs]."""
        raise NotImplementedError

    def training_outputs(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> list[torch.Tensor]:
        """Every output the loss is summed over, each [B, num_outputs]: the logits by default."""
        return [self(backbone, batch, pooling)]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Trained parameters in the groups whose gradient norm is clipped on its own."""
        return [[p for p in self.parameters() if p.requires_grad]]

    def predictor(self, backbone: Backbone, pooling: Pooling) -> Predictor:
        """Inference with the current weights (eval mode, no gradients)."""

        def run(batch: Encoded) -> torch.Tensor:
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    logits: torch.Tensor = self(backbone, batch, pooling)
                    return logits
            finally:
                self.train(was_training)

        return run

    def save(self, path: Path, task: SavedTask, dtype: FileDType) -> int:
        """Write the task's file; returns its size in bytes."""
        raise NotImplementedError


class SpartanModel(TaskModel):
    """SPARTAN: a memory after every layer, the head and optional early exits (memories.exits);
    saved as a servable memory file. The exits' gradients are clipped apart from the memory's,
    so training exits beside a memory leaves the memory as it would be without them."""

    method: Method = "spartan"

    def __init__(
        self, backbone: Backbone, num_outputs: int, config: SpartanConfig, exits: ExitConfig | None = None
    ) -> None:
        super().__init__()
        self.memory = TaskMemory(backbone.hidden_size, backbone.num_layers, num_outputs, config, exits)

    @classmethod
    def exits_on(cls, backbone: Backbone, memfile: MemoryFile, exits: ExitConfig) -> SpartanModel:
        """New exits on a trained memory, which stays frozen: only the exits train (the backbone
        and the memory then run forward only, Zero Time Waste's setting)."""
        check_backbone(memfile.metadata, backbone)
        meta = memfile.metadata
        model = cls(backbone, meta.num_outputs, meta.spartan_config, exits)
        trained = model.memory.load_state_dict(
            {n: t.float() for n, t in memfile.tensors.items()}, strict=False
        )
        assert not trained.unexpected_keys, f"unexpected tensors {trained.unexpected_keys}"
        assert all(k.startswith("exits.") for k in trained.missing_keys), f"missing {trained.missing_keys}"
        for name, param in model.memory.named_parameters():
            param.requires_grad_(name.startswith("exits."))
        return model

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        logits: torch.Tensor = self.memory(backbone, batch, pooling)
        return logits

    def training_outputs(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> list[torch.Tensor]:
        outputs = self.memory.training_outputs(backbone, batch, pooling)
        return [t for t in outputs if t.requires_grad]

    def clip_groups(self) -> list[list[nn.Parameter]]:
        named = [(n, p) for n, p in self.memory.named_parameters() if p.requires_grad]
        groups = [
            [p for n, p in named if not n.startswith("exits.")],
            [p for n, p in named if n.startswith("exits.")],
        ]
        return [group for group in groups if group]

    def predictor(self, backbone: Backbone, pooling: Pooling) -> Predictor:
        """The service's path (packed memory, :func:`~memories.model.run_batch`)."""
        return memory_predictor(backbone, self.memory.pack(pooling))

    def save(self, path: Path, task: SavedTask, dtype: FileDType) -> int:
        meta = MemoryMetadata.for_backbone(
            task.backbone,
            self.memory.config,
            task.spec.labels,
            task.pooling,
            task.max_seq_length,
            task.spec.name,
            task.summary,
            self.memory.exits.config if self.memory.exits is not None else None,
        )
        MemoryFile.from_task(self.memory, meta).save(path, dtype)
        return path.stat().st_size


class LoraXSModel(TaskModel):
    """LoRA-XS: per encoder layer an r x r matrix between the backbone's frozen SVD factors for
    each adapted site, and the head; saved as a servable memory file of kind ``lora-xs``.

    The factors come from ``backbone.factors`` or are prepared on it (from its fp32 weights,
    cached on disk under ``factor_cache``; memories.loraxs)."""

    method: Method = "lora-xs"

    def __init__(
        self, backbone: Backbone, num_outputs: int, config: LoraXSConfig, factor_cache: Path | None = None
    ) -> None:
        super().__init__()
        prepare_factors(backbone, config.rank, factor_cache)
        self.config = config
        self.layers = nn.ModuleList(LoraXSLayer(config) for _ in range(backbone.num_layers))
        self.head = Head(backbone.hidden_size, num_outputs)

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        factors = backbone.factors
        assert factors is not None, "prepared in __init__"
        rank = self.config.rank

        def adapt(index: int, site: LoraXSSite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            down, up_t = factors.to(x.dtype).pair(index, site, rank)  # [r, in], [r, out]
            layer = self.layers[index]
            assert isinstance(layer, LoraXSLayer)
            return y + apply_delta(x, down, layer.matrix(site).to(x.dtype), up_t)  # [B, S, out]

        with linear_hooks(backbone, self.config.sites, adapt):
            hidden = backbone.forward(batch)  # [B, S, d]
        logits: torch.Tensor = self.head(pool(hidden, batch.attention_mask, pooling))
        return logits

    def predictor(self, backbone: Backbone, pooling: Pooling) -> Predictor:
        """The service's path (packed memory, :func:`~memories.model.run_batch`)."""
        tensors = {name: t.detach().clone() for name, t in self.state_dict().items()}
        return memory_predictor(backbone, pack_tensors(tensors, self.config, backbone.num_layers, pooling))

    def save(self, path: Path, task: SavedTask, dtype: FileDType) -> int:
        meta = MemoryMetadata.for_backbone(
            task.backbone,
            self.config,
            task.spec.labels,
            task.pooling,
            task.max_seq_length,
            task.spec.name,
            task.summary,
        )
        MemoryFile.from_task(self, meta).save(path, dtype)
        return path.stat().st_size


class ModelBuilder(Protocol):
    """Makes a fresh task model of one method (seed torch first for a reproducible start)."""

    def __call__(
        self,
        method: Method,
        backbone: Backbone,
        num_outputs: int,
        spartan: SpartanConfig | None = None,
        bottleneck: int = 64,
        lora_xs: LoraXSConfig | None = None,
    ) -> TaskModel: ...


def build_served(
    method: Method,
    backbone: Backbone,
    num_outputs: int,
    spartan: SpartanConfig | None = None,
    bottleneck: int = 64,
    lora_xs: LoraXSConfig | None = None,
) -> TaskModel:
    """A freshly initialised model of a served method (SPARTAN or LoRA-XS); a baseline method
    is built by memories.lab.baselines."""
    if method == "spartan":
        return SpartanModel(backbone, num_outputs, spartan or SpartanConfig())
    if method == "lora-xs":
        return LoraXSModel(backbone, num_outputs, lora_xs or LoraXSConfig(), default_cache_dir())
    raise ConfigError(f"{method!r} is a baseline: build it with memories.lab.baselines.build_model")


def trainable_parameters(model: nn.Module) -> int:
    """Number of trained scalars (what the method stores per task, before the file's framing)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
