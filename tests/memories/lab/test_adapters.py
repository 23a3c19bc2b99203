"""Adapters: identity at init, hooked only inside the block, on the right sublayers per family."""

from __future__ import annotations

import pytest
import torch

from memories.backbone import Backbone, Encoded
from memories.errors import ConfigError
from memories.lab.adapters import AdapterConfig, Adapters
from tests.conftest import TINY_BACKBONES


def _batch(backbone: Backbone) -> Encoded:
    return backbone.tokenize(["a first sentence", "and a second, longer one here"], max_length=32)


@pytest.mark.parametrize("name", TINY_BACKBONES)
@pytest.mark.parametrize("kind", ["pfeiffer", "houlsby"])
def test_fresh_adapters_are_the_identity_and_trained_ones_act_only_inside_the_block(
    tiny_backbones: dict[str, Backbone], name: str, kind: str
) -> None:
    backbone = tiny_backbones[name]
    batch = _batch(backbone)
    with torch.no_grad():
        bare = backbone.forward(batch)
        adapters = Adapters(backbone.hidden_size, backbone.num_layers, AdapterConfig(kind, 8))  # type: ignore[arg-type]
        with adapters.attached(backbone):
            fresh = backbone.forward(batch)
        torch.testing.assert_close(fresh, bare)
        for param in adapters.parameters():
            torch.nn.init.normal_(param, std=0.5)
        with adapters.attached(backbone):
            adapted = backbone.forward(batch)
        after = backbone.forward(batch)
    assert (adapted - bare).abs().max() > 1e-3, "non-zero adapters must change the output"
    torch.testing.assert_close(after, bare, msg="the hooks must be gone after the block")


def test_houlsby_has_two_adapters_per_layer_and_pfeiffer_one(roberta_tiny: Backbone) -> None:
    d, layers, m = roberta_tiny.hidden_size, roberta_tiny.num_layers, 8
    per_adapter = 2 * d * m + d + m
    for kind, sites in (("pfeiffer", 1), ("houlsby", 2)):
        adapters = Adapters(d, layers, AdapterConfig(kind, m))  # type: ignore[arg-type]
        assert sum(p.numel() for p in adapters.parameters()) == layers * sites * per_adapter


def test_houlsby_adapts_attention_output_too(roberta_tiny: Backbone) -> None:
    """Only the attention site perturbed: Houlsby's output moves, Pfeiffer has no such site."""
    batch = _batch(roberta_tiny)
    adapters = Adapters(roberta_tiny.hidden_size, roberta_tiny.num_layers, AdapterConfig("houlsby", 8))
    for layer in adapters.layers:
        assert isinstance(layer, torch.nn.ModuleDict)
        torch.nn.init.normal_(layer["attention"].up.weight, std=0.5)
    with torch.no_grad():
        bare = roberta_tiny.forward(batch)
        with adapters.attached(roberta_tiny):
            adapted = roberta_tiny.forward(batch)
    assert (adapted - bare).abs().max() > 1e-3


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="kind"):
        AdapterConfig("lora", 8)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bottleneck"):
        AdapterConfig("pfeiffer", 0)
