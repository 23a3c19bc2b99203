"""SPT's routed FFN for training a memory on a frozen backbone: each token runs only some blocks.

Training a memory runs the frozen backbone forward and backward every step, and the FFNs are most
of that work (two thirds of a layer's GEMMs at 64 tokens). SPT (Gui et al.) routes each token
through a subset of FFN blocks. Here, for a frozen backbone (after MoEfication, Zhang et al.):

* **blocks**: the FFN's ``f`` intermediate neurons are split into ``experts`` equal groups of
  neurons that fire together, by balanced k-means over their activations on sample texts;
* **router**: a rank-``router_rank`` SVD of the first FFN weight predicts every neuron's
  pre-activation at a fraction of the cost, and a token takes the ``active`` blocks with the
  largest predicted GELU sum (no gradient: the choice is not learnt);
* **compute**: per block, the tokens that chose it are gathered, run through the block's rows of
  both FFN weights, and added back; autograd goes through the same gathers.

The routed FFN only approximates the dense one, so it is a training option: the memory is
evaluated and served on the dense backbone (``memories.train``). Whether it pays is measured,
not assumed (docs/results.md, "SPT-style sparse training").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from memories.config import RoutedFFNConfig

if TYPE_CHECKING:
    from memories.backbone import Backbone, Encoded


PROJECTED = 256
"""Random directions a neuron's activations on the sample are projected to before clustering."""


def balanced_groups(features: torch.Tensor, groups: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Neuron ids [groups, n / groups]: features [n, k] clustered by k-means (started from
    spread-out points), then assigned greedily, closest pairs first, to centroids that still
    have room (equal sizes)."""
    n = features.shape[0]
    size = n // groups
    assert size * groups == n, f"{groups} groups do not divide {n} neurons"
    generator = torch.Generator().manual_seed(seed)
    points = nn.functional.normalize(features, dim=-1)
    chosen = [int(torch.randint(n, (1,), generator=generator))]  # farthest-point start: spread out
    for _ in range(groups - 1):
        chosen.append(int(torch.cdist(points, points[chosen]).min(-1).values.argmax()))
    centroids = points[chosen].clone()  # [G, k]
    for _ in range(steps):
        nearest = torch.cdist(points, centroids).argmin(-1)  # [n]
        for g in range(groups):
            members = points[nearest == g]
            if len(members):
                centroids[g] = members.mean(0)
    distances = torch.cdist(points, centroids)  # [n, G]
    room = [size] * groups
    taken = [False] * n
    members_of: list[list[int]] = [[] for _ in range(groups)]
    for flat in distances.flatten().argsort().tolist():
        neuron, group = divmod(flat, groups)
        if not taken[neuron] and room[group]:
            taken[neuron] = True
            room[group] -= 1
            members_of[group].append(neuron)
    return torch.tensor(members_of)


class RoutedFFN(nn.Module):
    """Stands in for one layer's FFN output projection while the layer's intermediate passes
    its input through: x [..., d] -> sum over the token's blocks of W2_e gelu(W1_e x + b1_e)."""

    def __init__(
        self, first: nn.Linear, act: Any, second: nn.Linear, groups: torch.Tensor, config: RoutedFFNConfig
    ) -> None:
        super().__init__()
        self.act = act
        self.config = config
        self.groups = groups  # [E, n] neuron ids
        w1, b1 = first.weight.detach(), first.bias.detach()  # [f, d], [f]
        self.w1 = w1[groups]  # [E, n, d]
        self.b1 = b1[groups]  # [E, n]
        self.w2 = second.weight.detach()[:, groups].permute(1, 0, 2).contiguous()  # [E, d, n]
        self.b2 = second.bias.detach()  # [d]
        u, s, vh = torch.linalg.svd(w1, full_matrices=False)
        r = config.router_rank
        self.router_in = vh[:r].T.contiguous()  # [d, r]
        self.router_out = (u[:, :r] * s[:r]).T[:, groups.flatten()].contiguous()  # [r, E * n], grouped order
        self.router_bias = b1[groups.flatten()]  # [E * n]

    def choose(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, d] -> the blocks each token runs, [T, active]."""
        experts, size = self.groups.shape
        with torch.no_grad():
            predicted = torch.addmm(self.router_bias, x @ self.router_in, self.router_out)  # [T, E * n]
            scores: torch.Tensor = self.act(predicted).view(-1, experts, size).sum(-1)  # [T, E]
            return scores.topk(self.config.active, dim=-1).indices

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shape = hidden.shape
        x = hidden.reshape(-1, shape[-1])  # [T, d]
        chosen = self.choose(x)  # [T, k]
        out = x.new_zeros(x.shape)
        for e in range(self.groups.shape[0]):
            tokens = (chosen == e).any(-1).nonzero().squeeze(-1)  # [T_e]
            if not tokens.numel():
                continue
            inner = self.act(torch.addmm(self.b1[e], x.index_select(0, tokens), self.w1[e].T))  # [T_e, n]
            out = out.index_add(0, tokens, inner @ self.w2[e].T)  # [T_e, d] added at its tokens
        return (out + self.b2).reshape(shape)


class RoutedFFNs:
    """Every layer's routed FFN, built once for a backbone; :meth:`active` swaps them in."""

    def __init__(self, backbone: Backbone, config: RoutedFFNConfig, sample: Encoded) -> None:
        layers = [_ffn(backbone.layer(i)) for i in range(backbone.num_layers)]
        first = layers[0][0].dense
        config.check(first.out_features, first.in_features)
        real = sample.attention_mask.flatten().bool()  # the sample's tokens, not its padding
        # each neuron's activations over the T sample tokens, projected at once to PROJECTED
        # random directions (Johnson-Lindenstrauss keeps their distances): [f, PROJECTED] per
        # layer instead of [T, f], so the clustering costs little memory
        projection = torch.randn(int(real.sum()), PROJECTED, generator=torch.Generator().manual_seed(0))
        inputs: list[torch.Tensor] = []
        handles = [
            intermediate.register_forward_hook(
                lambda _m, _i, out: inputs.append(out.detach().flatten(0, -2)[real].T @ projection)
            )
            for intermediate, _ in layers
        ]
        try:
            with torch.no_grad():
                backbone.forward(sample)
        finally:
            for handle in handles:
                handle.remove()
        assert len(inputs) == len(layers), f"expected {len(layers)} activations, got {len(inputs)}"
        self._layers = layers
        self._routed = [
            RoutedFFN(
                intermediate.dense,
                intermediate.intermediate_act_fn,
                output.dense,
                balanced_groups(features, config.experts, config.kmeans_steps),
                config,
            )
            for (intermediate, output), features in zip(layers, inputs, strict=True)
        ]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The backbone's FFNs routed inside the block, dense again after it."""
        saved = [(intermediate.forward, output.dense) for intermediate, output in self._layers]
        try:
            for (intermediate, output), routed in zip(self._layers, self._routed, strict=True):
                intermediate.forward = _passthrough
                output.dense = routed
            yield
        finally:
            for (intermediate, output), (forward, dense) in zip(self._layers, saved, strict=True):
                intermediate.forward = forward
                output.dense = dense


def _passthrough(hidden: torch.Tensor) -> torch.Tensor:
    return hidden


def _ffn(layer: Any) -> tuple[Any, Any]:
    """(intermediate, output) of one encoder layer: BERT, RoBERTa and MPNet name them alike."""
    return layer.intermediate, layer.output
