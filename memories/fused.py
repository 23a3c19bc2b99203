"""A fused kernel for the SPARTAN op's routing, compiled by ``torch.compile`` (inductor) at start-up.

Between its two GEMMs the dense op (:func:`memories.spartan.spartan_dense`) turns the scores
[N, Np + Nc*Np] into the child weights [N, Nc*Np]: top-K of the parent logits, a softmax over
the chosen ones, a softmax over each parent's children, their product. Eager PyTorch runs that
as about ten small kernels (``topk``, softmaxes over 8 and 3 elements, ``scatter``, a multiply,
a cast), which on a bf16 CPU cost more than both GEMMs: 0.95 ms of a 1.6 ms op on 2048
RoBERTa-base tokens, against a 32 ms bf16 encoder layer (Xeon with AMX, docs/performance.md).

:func:`build_fused_routing` compiles one formulation that inductor turns into a single loop over
tokens: the scores transposed to [M, N] (every parent logit a contiguous row), the top-K as "fewer
than K parents beat this one" (ties go to the lower index, so exactly K are chosen, as with
``topk``), every softmax in fp32, the weights written as [N, Nc*Np] in the hidden states'
dtype. One kernel per (memory shape, dtype), with the token count dynamic, so batch size and
length never recompile. Each kernel is checked against the eager routing on tie-free scores at
build time and refused if it differs; shapes that were not built run the eager path.

It needs a C++ compiler (inductor's CPU backend); :func:`compiler_available` says whether one is
on the ``PATH``. :func:`fuse_routing` applies a setting (``auto``: fused on a bf16 backbone when
a compiler is there, where it measurably pays; ``on``: fused in every mode or fail; ``off``).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from memories.config import FUSED_SETTINGS, FusedSetting, SpartanConfig
from memories.errors import ConfigError
from memories.spartan import Router, child_weights

if TYPE_CHECKING:  # the backbone module holds a FusedRouting; this one only needs the type
    from memories.backbone import Backbone


CHECK_TOKENS = 512
CHECK_TOLERANCE = 1e-5  # fp32 maths on tie-free scores: only rounding may differ (plus the dtype's)


class FusedRoutingError(ConfigError):
    """The fused routing cannot be built here (no compiler, a failed compile, or a wrong result)."""


def compiler_available() -> bool:
    """Whether a C++ compiler inductor can use is on the ``PATH``."""
    return any(shutil.which(name) for name in ("g++", "c++", "clang++"))


def _transposed_weights(
    scores_t: torch.Tensor, np_: int, nc: int, k: int, dtype: torch.dtype
) -> torch.Tensor:
    """The formulation inductor fuses: scores_t [M, N] (fp32) -> weights [N, Nc*Np] in ``dtype``
    (Np parents, Nc children each, top-K)."""
    parents = scores_t[:np_]  # [Np, N]
    i = torch.arange(np_, device=scores_t.device).view(np_, 1, 1)  # the parent ranked
    j = torch.arange(np_, device=scores_t.device).view(1, np_, 1)  # a parent it is compared with
    p_i, p_j = parents.unsqueeze(1), parents.unsqueeze(0)  # [Np, 1, N], [1, Np, N]
    beats = torch.where(j < i, p_j >= p_i, p_j > p_i) & (j != i)  # [Np, Np, N]: j ranks above i
    chosen = beats.to(torch.float32).sum(1) < k  # [Np, N]
    e = torch.where(chosen, torch.exp(parents - parents.amax(0)), 0.0)  # [Np, N]
    gate = e / e.sum(0)  # [Np, N]
    children = scores_t[np_:].view(nc, np_, -1)  # [Nc, Np, N]
    ce = torch.exp(children - children.amax(0))  # [Nc, Np, N]
    weights = ce * (gate / ce.sum(0))  # [Nc, Np, N]
    return weights.flatten(0, 1).T.contiguous().to(dtype)  # [N, Nc*Np]


@dataclass
class FusedRouting:
    """The compiled routing kernels of a backbone, per (memory shape, dtype); see the module doc."""

    kernels: dict[tuple[SpartanConfig, torch.dtype], Router] = field(default_factory=dict)
    seconds: float = 0.0  # what building them took

    def router(self, config: SpartanConfig, dtype: torch.dtype) -> Router | None:
        """The kernel for memories of ``config`` in ``dtype``, or None (run the eager routing)."""
        return self.kernels.get((config, dtype))

    def describe(self) -> str:
        shapes = ", ".join(
            f"{c.num_parents}x{c.num_children} top-{c.top_k} {str(d).removeprefix('torch.')}"
            for c, d in self.kernels
        )
        return f"fused ({shapes}; built in {self.seconds:.1f} s)"


def _kernel(config: SpartanConfig, dtype: torch.dtype) -> Router:
    # Plain ints and a dtype in the closure: dynamo guards them by value, so building the same
    # shape again reuses the compiled code instead of filling its per-function cache.
    np_, nc, k = config.num_parents, config.num_children, config.top_k
    compiled = torch.compile(lambda scores_t: _transposed_weights(scores_t, np_, nc, k, dtype), dynamic=True)

    def route(scores: torch.Tensor) -> torch.Tensor:
        shape = f"scores must be [N, {config.num_keys}], got {list(scores.shape)}"
        assert scores.dim() == 2, shape
        assert scores.shape[1] == config.num_keys, shape
        scores_t = torch.empty(scores.shape[::-1], dtype=torch.float32)  # [M, N]: one cast + transpose
        scores_t.copy_(scores.T)
        out: torch.Tensor = compiled(scores_t)
        return out

    return route


def build_fused_routing(configs: Iterable[SpartanConfig], dtypes: Iterable[torch.dtype]) -> FusedRouting:
    """Compile and check one kernel per (config, dtype); raises :class:`FusedRoutingError`."""
    if not compiler_available():
        raise FusedRoutingError("fused routing needs a C++ compiler (g++ or clang++) on the PATH")
    start = time.perf_counter()
    routing = FusedRouting()
    generator = torch.Generator().manual_seed(0)
    for config in dict.fromkeys(configs):
        # Continuous random scores have no ties, so the fused top-K must pick exactly topk's parents.
        scores = 3 * torch.randn(CHECK_TOKENS, config.num_keys, generator=generator)
        want, _ = child_weights(scores, config)
        for dtype in dict.fromkeys(dtypes):
            kernel = _kernel(config, dtype)
            try:
                got = kernel(scores)
            except Exception as exc:  # inductor raises many kinds (compiler missing, codegen, ...)
                why = f"{type(exc).__name__}: {exc}"
                raise FusedRoutingError(f"fused routing failed to compile: {why}") from exc
            # Weights are at most 1: the dtype's rounding moves one by at most its epsilon.
            tolerance = CHECK_TOLERANCE + torch.finfo(dtype).eps
            diff = (got.float() - want.to(dtype).float()).abs().max().item()
            if not diff <= tolerance:
                raise FusedRoutingError(
                    f"fused routing differs from eager by {diff:.2e} (> {tolerance:.1e}) for {config}"
                )
            routing.kernels[(config, dtype)] = kernel
    routing.seconds = time.perf_counter() - start
    return routing


def fuse_routing(
    backbones: Sequence[Backbone], setting: FusedSetting, configs: Iterable[SpartanConfig]
) -> str:
    """Give ``backbones`` one fused routing for ``configs`` in their dtypes, per ``setting``;
    returns what was decided and why (for the log and ``/readyz``).

    ``auto`` fuses only bf16 backbones: there the eager routing is a twentieth of an encoder
    layer, while next to an fp32 or int8 layer it is under 1% and not worth the compile.
    ``on`` raises :class:`FusedRoutingError` when it cannot build; ``auto`` then stays eager.
    """
    if setting not in FUSED_SETTINGS:
        choices = ", ".join(FUSED_SETTINGS)
        raise ConfigError(f"unknown fused routing setting {setting!r}; choose one of {choices}")
    chosen = [b for b in backbones if setting == "on" or (setting == "auto" and b.precision == "bf16")]
    if not chosen:
        return f"eager (fused routing {setting}; " + ("off)" if setting == "off" else "no bf16 backbone)")
    if setting == "auto" and not compiler_available():
        return "eager (fused routing auto: no C++ compiler on the PATH)"
    try:
        routing = build_fused_routing(configs, [b.dtype for b in chosen])
    except FusedRoutingError as exc:
        if setting == "on":
            raise
        return f"eager (fused routing auto: {exc})"
    for backbone in chosen:
        backbone.routing = routing
    return routing.describe()
