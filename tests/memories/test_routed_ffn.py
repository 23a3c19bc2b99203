"""SPT's routed FFN: equal blocks, the same maths as the dense FFN on the blocks a token chose,
dense again outside the block, and its configuration checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memories.backbone import Backbone
from memories.config import RoutedFFNConfig
from memories.errors import ConfigError
from memories.routed_ffn import RoutedFFN, RoutedFFNs, balanced_groups
from tests.memories.test_model import TEXTS


def test_balanced_groups_are_equal_and_cover_every_neuron_once() -> None:
    features = torch.randn(48, 10, generator=torch.Generator().manual_seed(0))
    groups = balanced_groups(features, 6, steps=5)
    assert groups.shape == (6, 8)
    assert sorted(groups.flatten().tolist()) == list(range(48))


def test_neurons_that_fire_together_share_a_block() -> None:
    base = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))  # 4 activation patterns
    features = base.repeat_interleave(4, dim=0) + 0.01 * torch.randn(16, 32)  # 4 neurons each
    groups = balanced_groups(features, 4, steps=10)
    assert sorted(sorted(row) for row in (groups // 4).tolist()) == [[k] * 4 for k in range(4)]


def test_a_token_gets_the_dense_ffn_restricted_to_its_blocks_and_a_gradient() -> None:
    torch.manual_seed(0)
    d, f = 8, 24
    first, second = nn.Linear(d, f), nn.Linear(f, d)
    groups = balanced_groups(torch.randn(f, 16), 6, steps=3)
    routed = RoutedFFN(first, nn.functional.gelu, second, groups, RoutedFFNConfig(6, 2, router_rank=4))
    x = torch.randn(2, 5, d, requires_grad=True)  # [B, S, d]
    out = routed(x)
    chosen = routed.choose(x.detach().reshape(-1, d))  # [T, 2]
    mask = torch.zeros(10, f)
    for t, blocks in enumerate(chosen.tolist()):
        mask[t, groups[blocks].flatten()] = 1.0
    inner = nn.functional.gelu(first(x.detach().reshape(-1, d))) * mask  # [T, f], unchosen blocks zero
    torch.testing.assert_close(out.reshape(-1, d), second(inner).detach(), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert x.grad is not None
    assert x.grad.abs().sum() > 0


def test_the_backbone_is_routed_inside_the_block_only(roberta_tiny: Backbone) -> None:
    backbone = roberta_tiny
    batch = backbone.tokenize(TEXTS)
    routed = RoutedFFNs(backbone, RoutedFFNConfig(experts=4, active=1, router_rank=4), batch)
    with torch.no_grad():
        dense = backbone.forward(batch)
        with routed.active():
            sparse = backbone.forward(batch)
        after = backbone.forward(batch)
    torch.testing.assert_close(after, dense, atol=0, rtol=0)
    assert not torch.allclose(sparse, dense, atol=1e-4), "one block of four must change the output"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (RoutedFFNConfig(experts=5), "divide the FFN's 64 neurons"),
        (RoutedFFNConfig(experts=4, active=4), r"active blocks must be in \[1, 3\]"),
        (RoutedFFNConfig(experts=4, active=1, router_rank=33), r"router rank must be in \[1, 32\]"),
    ],
)
def test_bad_routed_ffn_configurations_say_what_to_fix(config: RoutedFFNConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.check(intermediate_size=64, hidden_size=32)
