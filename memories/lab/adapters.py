"""Bottleneck adapters, the paper's baselines: Pfeiffer and Houlsby.

An adapter is ``x + up(act(down(x)))`` with a small bottleneck (64 in the paper's appendix A).
It is inserted on a sublayer's output projection, before that sublayer's residual connection and
LayerNorm (Houlsby et al.'s placement):

* **Pfeiffer**: one adapter per layer, on the feed-forward output projection (ReLU).
* **Houlsby**: two per layer, on the attention output projection and the feed-forward output
  projection (swish).

The up projection starts at zero, so a fresh adapter leaves the backbone's output unchanged.
Adapters are attached to a frozen :class:`~memories.backbone.Backbone` with forward hooks for
the duration of a ``with`` block (:meth:`Adapters.attached`), so the resident backbone is never
modified. Simplifications against AdapterHub's configurations: no adapter LayerNorms, and the
backbone's own LayerNorms stay frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from memories.backbone import Backbone
from memories.errors import ConfigError

AdapterKind = Literal["pfeiffer", "houlsby"]
ADAPTER_KINDS: tuple[AdapterKind, ...] = ("pfeiffer", "houlsby")

# Which sublayers of an encoder layer carry an adapter, by kind.
_SITES: dict[AdapterKind, tuple[str, ...]] = {"pfeiffer": ("ffn",), "houlsby": ("attention", "ffn")}

# The output projection of each sublayer, as a dotted path inside one encoder layer.
_PROJECTIONS: dict[str, dict[str, str]] = {
    "bert": {"attention": "attention.output.dense", "ffn": "output.dense"},
    "roberta": {"attention": "attention.output.dense", "ffn": "output.dense"},
    "mpnet": {"attention": "attention.attn.o", "ffn": "output.dense"},
}


@dataclass(frozen=True)
class AdapterConfig:
    """Kind and bottleneck width (hidden -> bottleneck -> hidden)."""

    kind: AdapterKind = "pfeiffer"
    bottleneck: int = 64

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ConfigError(f"adapter kind must be one of {ADAPTER_KINDS}, got {self.kind!r}")
        if self.bottleneck < 1:
            raise ConfigError(f"adapter bottleneck must be >= 1, got {self.bottleneck}")

    @property
    def sites(self) -> tuple[str, ...]:
        return _SITES[self.kind]


class Adapter(nn.Module):
    """x [..., d] -> x + up(act(down(x))) [..., d]; the up projection starts at zero."""

    def __init__(self, hidden_size: int, bottleneck: int, activation: nn.Module) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck)
        self.act = activation
        self.up = nn.Linear(bottleneck, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x + self.up(self.act(self.down(x)))
        return out


class Adapters(nn.Module):
    """Every adapter of one task: ``layers[i][site]`` for each encoder layer and site."""

    def __init__(self, hidden_size: int, num_layers: int, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    site: Adapter(hidden_size, config.bottleneck, _activation(config.kind))
                    for site in config.sites
                }
            )
            for _ in range(num_layers)
        )

    @contextmanager
    def attached(self, backbone: Backbone) -> Iterator[None]:
        """Within the block, every forward of ``backbone`` runs through these adapters."""
        projections = _PROJECTIONS.get(backbone.model_type)
        if projections is None:
            raise ConfigError(f"adapters do not know where to go in a {backbone.model_type!r} layer")
        assert len(self.layers) == backbone.num_layers, (
            f"{len(self.layers)} adapter layers for a {backbone.num_layers}-layer backbone"
        )
        handles = []
        try:
            for index, sites in enumerate(self.layers):
                layer = backbone.layer(index)
                assert isinstance(sites, nn.ModuleDict)
                for site, adapter in sites.items():
                    target = layer.get_submodule(projections[site])
                    handles.append(target.register_forward_hook(_hook(adapter)))
            yield
        finally:
            for handle in handles:
                handle.remove()


def _activation(kind: AdapterKind) -> nn.Module:
    return nn.ReLU() if kind == "pfeiffer" else nn.SiLU()


def _hook(adapter: nn.Module) -> Any:
    def run(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        adapted: torch.Tensor = adapter(output)
        return adapted

    return run
