"""The core's hyper-parameters and choices, importable without torch (the CLI builds its help from them).

:class:`SpartanConfig` is one memory's shape, :class:`ExitConfig` its early exits
(memories.exits), :class:`LoraXSConfig` a LoRA-XS memory's (memories.loraxs); :data:`METHODS`
names what ``spartan train`` can train, with each method's paper learning rate in
:data:`DEFAULT_LR`, and :data:`MEMORY_KINDS` the two kinds the service serves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from memories.errors import ConfigError

Method = Literal["spartan", "lora-xs", "pfeiffer", "houlsby", "full", "probe"]
METHODS: tuple[Method, ...] = ("spartan", "lora-xs", "pfeiffer", "houlsby", "full", "probe")
MemoryKind = Literal["spartan", "lora-xs"]
"""The methods whose tasks are memory files the service serves (the others are lab baselines)."""
MEMORY_KINDS: tuple[MemoryKind, ...] = ("spartan", "lora-xs")
LoraXSSite = Literal["query", "value", "attention_output", "ffn_output"]
"""The linear layers of an encoder layer LoRA-XS adapts (the paper's choice for GLUE)."""
LORA_XS_SITES: tuple[LoraXSSite, ...] = ("query", "value", "attention_output", "ffn_output")
LORA_XS_MAX_RANK = 64
"""The largest rank a LoRA-XS memory may have: the SVD factors are kept up to a server's
``lora_xs_max_rank`` (at most this) per backbone."""
FusedSetting = Literal["auto", "on", "off"]
"""Whether the SPARTAN op's routing runs as one compiled kernel (memories.fused)."""
FUSED_SETTINGS: tuple[FusedSetting, ...] = ("auto", "on", "off")
TrainPrecision = Literal["fp32", "bf16"]
TRAIN_PRECISIONS: tuple[TrainPrecision, ...] = ("fp32", "bf16")

DEFAULT_LR: dict[Method, float] = {
    "spartan": 1e-3,
    "lora-xs": 1e-3,
    "pfeiffer": 1e-4,
    "houlsby": 1e-4,
    "full": 2e-5,
    "probe": 1e-3,
}


@dataclass(frozen=True)
class SpartanConfig:
    """Hyper-parameters of one memory; the paper's defaults are 16 / 3 / 8 / 1.6."""

    num_parents: int = 16
    num_children: int = 3
    top_k: int = 8
    child_temperature: float = 1.6

    def __post_init__(self) -> None:
        if self.num_parents < 1 or self.num_children < 1:
            raise ConfigError(
                f"num_parents and num_children must be >= 1, got {self.num_parents} and {self.num_children}"
            )
        if not 1 <= self.top_k <= self.num_parents:
            raise ConfigError(f"top_k must be in [1, num_parents={self.num_parents}], got {self.top_k}")
        if not (math.isfinite(self.child_temperature) and self.child_temperature > 0):
            raise ConfigError(f"child_temperature must be a positive number, got {self.child_temperature}")

    @property
    def num_cells(self) -> int:
        """Children in total, Np * Nc."""
        return self.num_parents * self.num_children

    @property
    def num_keys(self) -> int:
        """Rows of the packed key matrix ``[P; CK]``: Np + Np * Nc."""
        return self.num_parents + self.num_cells


@dataclass(frozen=True)
class ExitConfig:
    """Where a task's exits sit (0-based layers), their hidden width, and the confidence a row's
    answer must exceed to leave there."""

    layers: tuple[int, ...]
    hidden: int = 128
    threshold: float = 0.9

    def check(self, num_layers: int, num_outputs: int) -> None:
        """Raise ConfigError unless these exits fit a backbone of ``num_layers`` and a task with
        ``num_outputs`` classes."""
        if not self.layers:
            raise ConfigError("an exit configuration needs at least one exit layer")
        if list(self.layers) != sorted(set(self.layers)):
            raise ConfigError(f"exit layers must be strictly increasing, got {list(self.layers)}")
        if self.layers[0] < 0 or self.layers[-1] > num_layers - 2:
            raise ConfigError(
                f"exit layers must be in [0, {num_layers - 2}] (the last layer has the head), "
                f"got {list(self.layers)}"
            )
        if not 1 <= self.hidden <= 16384:
            raise ConfigError(f"exit hidden width must be in [1, 16384], got {self.hidden}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"exit threshold must be in (0, 1], got {self.threshold}")
        if num_outputs < 2:
            raise ConfigError("exits need a classification task: a regression head has no confidence")


@dataclass(frozen=True)
class LoraXSConfig:
    """A LoRA-XS memory's rank r (one trainable r x r matrix per adapted weight) and the sites of
    every encoder layer it adapts."""

    rank: int = 16
    sites: tuple[LoraXSSite, ...] = LORA_XS_SITES

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= LORA_XS_MAX_RANK:
            raise ConfigError(f"LoRA-XS rank must be in [1, {LORA_XS_MAX_RANK}], got {self.rank}")
        if not self.sites or len(set(self.sites)) != len(self.sites):
            raise ConfigError(f"LoRA-XS sites must be distinct and at least one, got {list(self.sites)}")
        unknown = [site for site in self.sites if site not in LORA_XS_SITES]
        if unknown:
            raise ConfigError(f"unknown LoRA-XS sites {unknown}; known: {', '.join(LORA_XS_SITES)}")
        if list(self.sites) != [site for site in LORA_XS_SITES if site in self.sites]:
            raise ConfigError(f"LoRA-XS sites must be in the order {', '.join(LORA_XS_SITES)}")


@dataclass(frozen=True)
class RoutedFFNConfig:
    """SPT's routed FFN while training (memories.routed_ffn): the FFN cut into ``experts`` blocks,
    each token running ``active`` of them, chosen by a rank-``router_rank`` predictor."""

    experts: int = 16
    active: int = 8
    router_rank: int = 32
    kmeans_steps: int = 15

    def check(self, intermediate_size: int, hidden_size: int) -> None:
        if self.experts < 2 or intermediate_size % self.experts:
            raise ConfigError(
                f"experts must be at least 2 and divide the FFN's {intermediate_size} neurons, "
                f"got {self.experts}"
            )
        if not 1 <= self.active < self.experts:
            raise ConfigError(f"active blocks must be in [1, {self.experts - 1}], got {self.active}")
        if not 1 <= self.router_rank <= min(intermediate_size, hidden_size):
            raise ConfigError(
                f"router rank must be in [1, {min(intermediate_size, hidden_size)}], got {self.router_rank}"
            )
