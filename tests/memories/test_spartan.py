"""The production SPARTAN paths agree with the equations (reference implementation)."""

from __future__ import annotations

import pytest
import torch

from memories.config import SpartanConfig
from memories.errors import ConfigError
from memories.spartan import (
    SpartanLayer,
    pack_keys,
    pack_values,
    spartan_dense,
    spartan_gather,
    spartan_reference,
    top_k_gate,
)

D = 16


def _layer(config: SpartanConfig, seed: int) -> SpartanLayer:
    torch.manual_seed(seed)
    layer = SpartanLayer(D, config, value_std=0.5)  # large values: differences would show
    return layer.requires_grad_(False)


@pytest.mark.parametrize("top_k", [6, 2, 1])
def test_dense_and_gather_equal_reference(top_k: int) -> None:
    config = SpartanConfig(num_parents=6, num_children=3, top_k=top_k, child_temperature=1.6)
    layer = _layer(config, seed=top_k)
    x = torch.randn(3, 5, D)  # [B, S, d]
    expected = spartan_reference(x, layer.parent_keys, layer.child_keys, layer.child_values, config)
    keys, values = layer.packed()
    dense = spartan_dense(x, keys, values, config)
    gather = spartan_gather(x, layer.parent_keys, layer.child_keys, layer.child_values, config)
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gather, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dense, x, atol=1e-2), "the memory must change its input"


def test_per_row_memories_equal_each_memory_alone() -> None:
    config = SpartanConfig(num_parents=4, num_children=2, top_k=2)
    layers = [_layer(config, seed) for seed in range(3)]
    x = torch.randn(3, 7, D)
    keys = torch.stack([layer.packed()[0] for layer in layers])  # [B, M, d]
    values = torch.stack([layer.packed()[1] for layer in layers])  # [B, Np*Nc, d]
    mixed = spartan_dense(x, keys, values, config)
    for row, layer in enumerate(layers):
        alone = spartan_dense(x[row : row + 1], *layer.packed(), config)
        torch.testing.assert_close(mixed[row : row + 1], alone, atol=1e-6, rtol=1e-6)


def test_top_k_gate_keeps_exactly_k_and_renormalises() -> None:
    logits = torch.randn(4, 9, 16)
    gate = top_k_gate(logits, 5)
    assert ((gate > 0).sum(-1) == 5).all()
    torch.testing.assert_close(gate.sum(-1), torch.ones(4, 9))
    chosen = logits.topk(5, dim=-1).indices
    assert (gate.gather(-1, chosen) > 0).all(), "the non-zeros are the top-K logits"


def test_top_k_gate_with_ties_keeps_exactly_k() -> None:
    gate = top_k_gate(torch.zeros(2, 8), 3)
    assert ((gate > 0).sum(-1) == 3).all()


def test_recorded_gate_is_the_parent_routing() -> None:
    config = SpartanConfig(num_parents=5, num_children=1, top_k=2)
    layer = _layer(config, seed=0)
    record: list[torch.Tensor] = []
    spartan_dense(torch.randn(2, 3, D), *layer.packed(), config, record)
    assert record[0].shape == (2, 3, 5)
    assert ((record[0] > 0).sum(-1) == 2).all()


def test_packing_is_parents_first_then_children_child_major_over_tau() -> None:
    parents, children, values = torch.randn(4, D), torch.randn(4, 3, D), torch.randn(4, 3, D)
    keys = pack_keys(parents, children, temperature=2.0)
    assert keys.shape == (4 + 12, D)
    torch.testing.assert_close(keys[:4], parents)
    torch.testing.assert_close(keys[4 + 1 * 4 + 2], children[2, 1] / 2.0)  # child 1 of parent 2
    torch.testing.assert_close(pack_values(values)[1 * 4 + 2], values[2, 1])


def test_inplace_dense_equals_out_of_place() -> None:
    config = SpartanConfig(num_parents=6, num_children=3, top_k=2)
    layer = _layer(config, seed=5)
    x = torch.randn(2, 5, D)
    expected = spartan_dense(x, *layer.packed(), config)
    shared = x.clone()
    assert spartan_dense(shared, *layer.packed(), config, inplace=True) is shared
    torch.testing.assert_close(shared, expected)
    keys, values = (t.expand(2, *t.shape).contiguous() for t in layer.packed())
    per_row = x.clone()
    spartan_dense(per_row, keys, values, config, inplace=True)
    torch.testing.assert_close(per_row, expected)


def test_untrained_layer_changes_its_input_only_slightly() -> None:
    torch.manual_seed(0)
    layer = SpartanLayer(384, SpartanConfig())
    x = torch.nn.functional.layer_norm(torch.randn(2, 10, 384), (384,))  # unit-scale, like a layer output
    with torch.no_grad():
        change = (layer(x) - x).norm() / x.norm()
    assert 0 < change < 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 17}, "top_k must be in"),
        ({"top_k": 0}, "top_k must be in"),
        ({"num_parents": 0}, "num_parents and num_children"),
        ({"child_temperature": 0.0}, "child_temperature"),
        ({"child_temperature": float("nan")}, "child_temperature"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SpartanConfig(**kwargs)  # type: ignore[arg-type]
