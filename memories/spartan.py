"""The SPARTAN sparse hierarchical memory (Deshpande et al., 2022, section 3).

Per layer, with hidden size d, Np parents, Nc children per parent and top-K:

    g   = softmax(P v)                      parent attention, P [Np, d]
    S   = topK(g)                           chosen parents
    v_i = CV_i^T softmax(CK_i v / tau)      child read-out of parent i, CK_i, CV_i [Nc, d]
    out = v + sum_{i in S} g_i v_i / sum_{i in S} g_i

There is no LayerNorm. Renormalising g over S equals a softmax over the chosen parent logits
only, which is what the production paths compute.

Three implementations live here:

* :func:`spartan_reference` follows the equations token by token; it exists for the tests.
* :func:`spartan_dense` computes every child as two GEMMs (keys ``[P; CK / tau]``, then values
  ``CV``) with a top-K mask in between. It is the production path: ``spartan bench`` measured
  it about twice as fast as gathering on a CPU (see docs/benchmark.md).
* :func:`spartan_gather` gathers only the chosen parents' children per token; it is kept as
  the measured alternative.

Both production paths accept either one memory for the whole batch (keys ``[M, d]``) or one
memory per row (keys ``[B, M, d]``), which is how mixed-task batches run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from memories.config import SpartanConfig

Router = Callable[[torch.Tensor], torch.Tensor]
"""scores [N, Np + Nc*Np] -> child weights [N, Nc*Np] in the hidden states' dtype (memories.fused)."""


def spartan_reference(
    x: torch.Tensor,
    parent_keys: torch.Tensor,
    child_keys: torch.Tensor,
    child_values: torch.Tensor,
    config: SpartanConfig,
) -> torch.Tensor:
    """The memory's residual output, straight from the equations, one token at a time.

    x [..., d]; parent_keys [Np, d]; child_keys, child_values [Np, Nc, d]. Returns v + v_O.
    Slow by design: only tests call it.
    """
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(flat)
    for n, v in enumerate(flat):
        g = torch.softmax(parent_keys @ v, dim=0)  # [Np]
        chosen = torch.topk(g, config.top_k).indices  # [K]
        z = g[chosen].sum()
        v_o = torch.zeros_like(v)
        for i in chosen.tolist():
            attn = torch.softmax(child_keys[i] @ v / config.child_temperature, dim=0)  # [Nc]
            v_o = v_o + g[i] * (child_values[i].T @ attn)  # [d]
        out[n] = v + v_o / z
    return out.reshape(x.shape)


def pack_keys(parent_keys: torch.Tensor, child_keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """``[P; CK^T / tau]``: the keys of both GEMM-form lookups in one matrix.

    parent_keys [..., Np, d], child_keys [..., Np, Nc, d] -> [..., Np + Nc*Np, d]. Children are
    stored child-major (row Np + c*Np + i is child c of parent i) and pre-divided by the child
    temperature, so the dense path needs no division and normalises over Nc with cheap
    element-wise ops across contiguous Np-wide rows.
    """
    child_major = (child_keys / temperature).transpose(-3, -2).flatten(-3, -2)  # [..., Nc*Np, d]
    return torch.cat([parent_keys, child_major], dim=-2)


def pack_values(child_values: torch.Tensor) -> torch.Tensor:
    """Child values [..., Np, Nc, d] -> [..., Nc*Np, d], child-major like :func:`pack_keys`."""
    return child_values.transpose(-3, -2).flatten(-3, -2)


def top_k_gate(parent_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Renormalised parent attention with exactly ``top_k`` non-zeros per token.

    parent_logits [..., Np] -> gate [..., Np]; the softmax over the chosen logits equals
    g_i / sum_{j in S} g_j of the paper. That softmax is written out (max, exp, sum):
    ``torch.softmax`` over a last dimension of 8 took 0.25 ms for 2048 tokens on a Xeon, these
    three kernels 0.04 ms.
    """
    if top_k == parent_logits.shape[-1]:
        return torch.softmax(parent_logits, dim=-1)
    top = parent_logits.topk(top_k, dim=-1)  # values sorted, largest first
    e = (top.values - top.values[..., :1]).exp()  # [..., K]
    return torch.zeros_like(parent_logits).scatter(-1, top.indices, e / e.sum(-1, keepdim=True))


def child_weights(scores: torch.Tensor, config: SpartanConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing between the op's GEMMs, in eager kernels.

    scores [..., Np + Nc*Np] (fp32) -> (weights [..., Nc*Np], each child's softmax over its
    parent's Nc children times its parent's gate; gate [..., Np]).
    """
    np_, nc = config.num_parents, config.num_children
    gate = top_k_gate(scores[..., :np_], config.top_k)  # [..., Np]
    child = torch.softmax(scores[..., np_:].unflatten(-1, (nc, np_)), dim=-2)  # [..., Nc, Np], over Nc
    return (child * gate.unsqueeze(-2)).flatten(-2), gate  # [..., Nc*Np], [..., Np]


def spartan_dense(
    x: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    config: SpartanConfig,
    record: list[torch.Tensor] | None = None,
    inplace: bool = False,
    router: Router | None = None,
) -> torch.Tensor:
    """Production path: every child via two GEMMs and a top-K mask. Returns x + v_O.

    x [B, S, d]; keys [M, d] or [B, M, d] from :func:`pack_keys` (M = Np + Nc*Np); values
    [Nc*Np, d] or [B, Nc*Np, d] from :func:`pack_values`. ``inplace`` adds v_O into x itself
    (no 6 MB temporary per RoBERTa-base layer and batch); only for inference on a tensor the
    caller owns. When ``record`` is given the parent gate [B, S, Np] is appended to it.
    ``router`` (memories.fused) computes the weights from the scores [N, M] in one compiled
    kernel, in x's dtype; without it, or when recording, the eager :func:`child_weights` do.
    """
    # The GEMMs run in x's dtype (bf16 in bf16 mode); the routing maths in fp32, so that the
    # top-K choice and the softmaxes do not round to bf16's 8-bit mantissa.
    scores = x @ keys.transpose(-1, -2)  # [B, S, Np + Nc*Np]
    if router is not None and record is None:
        flat = router(scores.view(-1, scores.shape[-1])).view(*scores.shape[:-1], -1)  # [B, S, Nc*Np]
    else:
        weights, gate = child_weights(scores.float(), config)
        if record is not None:
            record.append(gate.detach())
        flat = weights.to(x.dtype)  # [B, S, Nc*Np]
    if not inplace:
        return x + flat @ values  # [B, S, d]
    if values.dim() == 2:
        x.view(-1, x.shape[-1]).addmm_(flat.view(-1, flat.shape[-1]), values)
    else:
        x.baddbmm_(flat, values)
    return x


def spartan_gather(
    x: torch.Tensor,
    parent_keys: torch.Tensor,
    child_keys: torch.Tensor,
    child_values: torch.Tensor,
    config: SpartanConfig,
) -> torch.Tensor:
    """Alternative path: gather the K chosen parents' children per token. Returns x + v_O.

    x [B, S, d]; parent_keys [Np, d]; child_keys, child_values [Np, Nc, d] (one memory for the
    whole batch). Exact, but the per-token gathers move K*Nc*d floats per token.
    """
    d = x.shape[-1]
    flat = x.reshape(-1, d)  # [N, d]
    top = (flat @ parent_keys.T).topk(config.top_k, dim=-1)  # [N, K]
    gate = torch.softmax(top.values, dim=-1)  # [N, K]
    ck = child_keys[top.indices]  # [N, K, Nc, d]
    cv = child_values[top.indices]  # [N, K, Nc, d]
    child_logits = torch.einsum("nd,nkcd->nkc", flat, ck) / config.child_temperature
    attn = torch.softmax(child_logits, dim=-1) * gate.unsqueeze(-1)  # [N, K, Nc]
    v_o = torch.einsum("nkc,nkcd->nd", attn, cv)  # [N, d]
    return x + v_o.reshape(x.shape)


class SpartanLayer(nn.Module):
    """The trainable memory of one transformer layer.

    Parameter names match the memory file (``layers.<i>.parent_keys`` and so on).
    Initialisation: keys ~ N(0, 1/d) so the logits of a unit-scale hidden state start near
    unit variance, values ~ N(0, value_std^2) so an untrained memory changes the layer output
    only slightly (the residual dominates).
    """

    def __init__(self, hidden_size: int, config: SpartanConfig, value_std: float = 0.02) -> None:
        super().__init__()
        self.config = config
        key_std = hidden_size**-0.5
        np_, nc, d = config.num_parents, config.num_children, hidden_size
        self.parent_keys = nn.Parameter(torch.randn(np_, d) * key_std)  # [Np, d]
        self.child_keys = nn.Parameter(torch.randn(np_, nc, d) * key_std)  # [Np, Nc, d]
        self.child_values = nn.Parameter(torch.randn(np_, nc, d) * value_std)  # [Np, Nc, d]

    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys [Np + Nc*Np, d], values [Nc*Np, d]) for :func:`spartan_dense`."""
        keys = pack_keys(self.parent_keys, self.child_keys, self.config.child_temperature)
        return keys, pack_values(self.child_values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, S, d] -> x + v_O [B, S, d] (the training path; differentiable)."""
        keys, values = self.packed()
        return spartan_dense(x, keys, values, self.config)
