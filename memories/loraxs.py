"""LoRA-XS memories (Bałazy et al., ``../shared/seeds/003_*``): a tiny r x r matrix per adapted
weight, between frozen factors from that weight's SVD.

For an adapted linear layer W [out, in] of the frozen backbone (per encoder layer: the attention
query and value, the attention output and the FFN output projections), LoRA-XS adds

    ΔW = A R B,   A = U_r Σ_r [out, r],   B = V_rᵀ [r, in]   (W = U Σ Vᵀ, the top r triplets)

and trains only R [r, r] (and the head). So a row's output of that layer becomes

    y + ((x Bᵀ) Rᵀ) Aᵀ        x [B, S, in] -> [B, S, r] -> [B, S, r] -> [B, S, out]

where the two thin GEMMs with the factors are shared by every row of a batch and only the
r x r product is per task.

* **The factors belong to the backbone, not to a task** (:class:`SvdFactors`): computed once from
  its fp32 weights, in float64 (through the Gram matrix's eigendecomposition), up to a maximum
  rank (a task of rank r uses the first r), and cached on disk under the backbone's fingerprint
  (:func:`load_factors`). An SVD is unique only up to the sign of each singular-vector pair (and
  a rotation within repeated singular values, which trained weights do not have); the signs are
  fixed so that the largest-magnitude entry of each column of U is positive, so every host
  derives the same factors for the same weights.
* **They are computed before any precision switch**: a bf16 or int8 backbone no longer holds
  the fp32 weights they come from, so :func:`compute_factors` refuses it, and a server prepares
  them at start-up (:meth:`SvdFactors.to` casts them to a bf16 backbone's dtype).
* **R starts at zero**, so a fresh memory is the bare backbone; its gradient Aᵀ g (B x)ᵀ is not.
* :func:`linear_hooks` attaches a per-layer function to the adapted linear layers for one
  forward pass (forward hooks, removed after it), so a backbone without LoRA-XS rows runs as it
  is; compiled encoder layers have no hookable submodules and are refused.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from memories.atomic import atomic_write
from memories.config import LORA_XS_MAX_RANK, LORA_XS_SITES, LoraXSConfig, LoraXSSite
from memories.errors import ConfigError

if TYPE_CHECKING:  # the backbone holds its factors, so this module imports it for types only
    from memories.backbone import Backbone

_SITE_PATHS: dict[str, dict[LoraXSSite, str]] = {
    "bert": {
        "query": "attention.self.query",
        "value": "attention.self.value",
        "attention_output": "attention.output.dense",
        "ffn_output": "output.dense",
    },
    "mpnet": {
        "query": "attention.attn.q",
        "value": "attention.attn.v",
        "attention_output": "attention.attn.o",
        "ffn_output": "output.dense",
    },
}
_SITE_PATHS["roberta"] = _SITE_PATHS["bert"]

DEFAULT_MAX_RANK = 32
"""The rank the factors are kept up to unless a server or a training asks for more."""

LinearDelta = Callable[[int, LoraXSSite, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer index, site, the linear layer's input x [B, S, in], its output y [B, S, out]) -> the
output to use instead, [B, S, out] (it may be ``y`` changed in place)."""


def site_paths(model_type: str) -> dict[LoraXSSite, str]:
    """Where each LoRA-XS site is inside one encoder layer of a ``model_type`` backbone."""
    paths = _SITE_PATHS.get(model_type)
    if paths is None:
        raise ConfigError(f"LoRA-XS does not know the linear layers of a {model_type!r} encoder layer")
    return paths


@dataclass(frozen=True, eq=False)
class SvdFactors:
    """A backbone's frozen LoRA-XS factors up to ``max_rank``, per layer and site:
    ``down[layer][site]`` = B = V_rᵀ [max_rank, in] and ``up[layer][site]`` = Aᵀ = (U_r Σ_r)ᵀ
    [max_rank, out], both row-major so that the first r rows are a contiguous rank-r factor."""

    fingerprint: str
    max_rank: int
    down: tuple[dict[LoraXSSite, torch.Tensor], ...]
    up: tuple[dict[LoraXSSite, torch.Tensor], ...]
    seconds: float = 0.0  # what computing (or reading) them took
    source: str = "computed"  # or "disk cache"
    _casts: dict[torch.dtype, SvdFactors] = field(default_factory=dict, repr=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.down[0][LORA_XS_SITES[0]].dtype

    def pair(self, layer: int, site: LoraXSSite, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B [rank, in], Aᵀ [rank, out]) of one adapted weight, views into the stored factors."""
        assert rank <= self.max_rank, f"rank {rank} beyond the factors' {self.max_rank}"
        return self.down[layer][site][:rank], self.up[layer][site][:rank]

    def _mapped(self, rank: int, change: Callable[[torch.Tensor], torch.Tensor]) -> SvdFactors:
        """These factors of ``rank`` with ``change`` applied to every tensor."""
        down = tuple({site: change(t) for site, t in layer.items()} for layer in self.down)
        up = tuple({site: change(t) for site, t in layer.items()} for layer in self.up)
        return SvdFactors(self.fingerprint, rank, down, up, self.seconds, self.source)

    def up_to(self, rank: int) -> SvdFactors:
        """These factors cut to ``rank`` (views; itself when that is its rank already)."""
        assert rank <= self.max_rank, f"rank {rank} beyond the factors' {self.max_rank}"
        return self if rank == self.max_rank else self._mapped(rank, lambda t: t[:rank])

    def to(self, dtype: torch.dtype) -> SvdFactors:
        """These factors in ``dtype`` (a bf16 backbone's), converted once and kept."""
        if dtype == self.dtype:
            return self
        if dtype not in self._casts:
            self._casts[dtype] = self._mapped(self.max_rank, lambda t: t.to(dtype))
        return self._casts[dtype]

    def nbytes(self) -> int:
        tensors = [t for layers in (self.down, self.up) for layer in layers for t in layer.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def describe(self) -> str:
        return (
            f"LoRA-XS factors up to rank {self.max_rank}: {self.nbytes() / 2**20:.1f} MiB, "
            f"{self.source} in {self.seconds:.1f} s"
        )


def _weight(layer: nn.Module, path: str) -> torch.Tensor:
    """The weight [out, in] of the linear layer at ``path`` inside an encoder layer."""
    weight = layer.get_submodule(path).weight
    assert isinstance(weight, torch.Tensor), f"{path} has no weight tensor"
    return weight


def canonical_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [out, in] -> (B = V_rᵀ [rank, in], Aᵀ = (U_r Σ_r)ᵀ [rank, out]) in fp32.

    Computed in float64 from the eigendecomposition of the smaller Gram matrix (W Wᵀ or Wᵀ W),
    which gives the top singular triplets to about 1e-13 of a full SVD at 1.6-5x its speed on
    RoBERTa-base's weights; each column of U is signed so that its largest-magnitude entry is
    positive."""
    w = weight.detach().double()  # [out, in]
    wide = w.shape[0] <= w.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(w @ w.T if wide else w.T @ w)  # ascending
    s = eigenvalues.flip(0)[:rank].clamp(min=0).sqrt()  # [r]
    top = vectors.flip(1)[:, :rank]  # U_r [out, r] if wide, else V_r [in, r]
    inverse = torch.where(
        s > s[0] * 1e-12, 1 / s, torch.zeros_like(s)
    )  # a zero singular value: its pair is 0
    u, vh = (top, (top.T @ w) * inverse[:, None]) if wide else ((w @ top) * inverse, top.T)
    peak = u.abs().argmax(dim=0)  # [r]
    signs = torch.sign(u[peak, torch.arange(rank)])  # [r]
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    u, vh = u * signs, vh * signs[:, None]
    return vh.float().contiguous(), (u * s).T.float().contiguous()


def _usable_rank(backbone: Backbone, max_rank: int) -> int:
    if not 1 <= max_rank <= LORA_XS_MAX_RANK:
        raise ConfigError(f"the LoRA-XS maximum rank must be in [1, {LORA_XS_MAX_RANK}], got {max_rank}")
    return min(max_rank, backbone.hidden_size)


def compute_factors(
    backbone: Backbone, max_rank: int = DEFAULT_MAX_RANK, log: Callable[[str], None] | None = None
) -> SvdFactors:
    """The factors of every site of every layer up to ``max_rank`` (at most the hidden size),
    from the backbone's fp32 weights; ``log`` hears each layer's progress."""
    if backbone.precision != "fp32":
        raise ConfigError(
            f"LoRA-XS factors come from the fp32 weights; this backbone is already {backbone.precision}: "
            "prepare them before switching precision"
        )
    rank = _usable_rank(backbone, max_rank)
    paths = site_paths(backbone.model_type)
    started = time.perf_counter()
    down: list[dict[LoraXSSite, torch.Tensor]] = []
    up: list[dict[LoraXSSite, torch.Tensor]] = []
    for index in range(backbone.num_layers):
        layer = backbone.layer(index)
        pairs = {site: canonical_svd(_weight(layer, paths[site]), rank) for site in LORA_XS_SITES}
        down.append({site: pair[0] for site, pair in pairs.items()})
        up.append({site: pair[1] for site, pair in pairs.items()})
        if log is not None:
            seconds = time.perf_counter() - started
            log(f"LoRA-XS factors: layer {index + 1}/{backbone.num_layers} ({seconds:.1f} s)")
    return SvdFactors(backbone.fingerprint, rank, tuple(down), tuple(up), time.perf_counter() - started)


def _cache_path(cache_dir: Path, fingerprint: str, rank: int) -> Path:
    return cache_dir / "lora-xs" / f"{fingerprint}-r{rank}.safetensors"


def _name(layer: int, site: LoraXSSite, part: str) -> str:
    return f"layers.{layer}.{site}.{part}"


def _save(path: Path, factors: SvdFactors) -> None:
    from safetensors.torch import save

    tensors = {}
    for layer, (down, up) in enumerate(zip(factors.down, factors.up, strict=True)):
        for site in LORA_XS_SITES:
            tensors[_name(layer, site, "down")] = down[site]
            tensors[_name(layer, site, "up")] = up[site]
    header = {"fingerprint": factors.fingerprint, "max_rank": str(factors.max_rank)}
    atomic_write(path, save(tensors, metadata=header))


def _read(path: Path, backbone: Backbone, rank: int) -> SvdFactors | None:
    """The cached factors if the file is there and fits this backbone exactly, else None."""
    from safetensors import SafetensorError, safe_open

    started = time.perf_counter()
    paths = site_paths(backbone.model_type)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header: dict[str, Any] = handle.metadata() or {}
            if header.get("fingerprint") != backbone.fingerprint or header.get("max_rank") != str(rank):
                return None
            down, up = [], []
            for index in range(backbone.num_layers):
                layer = backbone.layer(index)
                down_layer, up_layer = {}, {}
                for site in LORA_XS_SITES:
                    out_features, in_features = _weight(layer, paths[site]).shape
                    b, a_t = (
                        handle.get_tensor(_name(index, site, "down")),
                        handle.get_tensor(_name(index, site, "up")),
                    )
                    if b.shape != (rank, in_features) or a_t.shape != (rank, out_features):
                        return None
                    if b.dtype != torch.float32 or not (
                        torch.isfinite(b).all() and torch.isfinite(a_t).all()
                    ):
                        return None
                    down_layer[site], up_layer[site] = b, a_t
                down.append(down_layer)
                up.append(up_layer)
    except (OSError, SafetensorError, json.JSONDecodeError):
        return None
    return SvdFactors(
        backbone.fingerprint, rank, tuple(down), tuple(up), time.perf_counter() - started, "disk cache"
    )


def load_factors(
    backbone: Backbone,
    max_rank: int = DEFAULT_MAX_RANK,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> SvdFactors:
    """The backbone's factors from ``cache_dir`` (keyed by fingerprint and rank), or computed and
    written there (a cache that cannot be written is only logged: the factors still serve)."""
    rank = _usable_rank(backbone, max_rank)
    if cache_dir is None:
        return compute_factors(backbone, rank, log)
    path = _cache_path(cache_dir, backbone.fingerprint, rank)
    cached = _read(path, backbone, rank) if path.is_file() else None
    if cached is not None:
        return cached
    factors = compute_factors(backbone, rank, log)
    try:
        _save(path, factors)
    except OSError as exc:
        if log is not None:
            log(f"LoRA-XS factors not cached at {path}: {exc}")
    return factors


def prepare_factors(
    backbone: Backbone,
    rank: int = DEFAULT_MAX_RANK,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> SvdFactors:
    """Give ``backbone`` factors reaching ``rank`` (at least :data:`DEFAULT_MAX_RANK`) unless it
    has them: read from ``cache_dir`` or computed from its fp32 weights; returns them."""
    factors = backbone.factors
    if factors is None or factors.max_rank < min(rank, backbone.hidden_size):
        factors = load_factors(backbone, max(DEFAULT_MAX_RANK, rank), cache_dir, log)
        backbone.factors = factors
    return factors


def factors_digest(factors: SvdFactors) -> str:
    """sha256 over the factors' bytes (tests compare hosts and processes with it)."""
    digest = hashlib.sha256()
    for layers in (factors.down, factors.up):
        for layer in layers:
            for site in LORA_XS_SITES:
                digest.update(layer[site].contiguous().view(torch.uint8).numpy().data)
    return digest.hexdigest()


def require_factors(backbone: Backbone, rank: int) -> SvdFactors:
    """The backbone's factors, which must reach ``rank``; raise ConfigError saying why not."""
    factors = backbone.factors
    if factors is None:
        raise ConfigError(
            "this backbone has no LoRA-XS factors: a server prepares them at start-up when its "
            "lora_xs_max_rank is above 0"
        )
    if rank > factors.max_rank:
        raise ConfigError(
            f"a rank-{rank} LoRA-XS memory needs factors up to rank {rank}; "
            f"this backbone keeps them up to {factors.max_rank}"
        )
    return factors


@contextmanager
def linear_hooks(backbone: Backbone, sites: tuple[LoraXSSite, ...], delta: LinearDelta) -> Iterator[None]:
    """Within the block, every forward of ``backbone`` passes each adapted linear layer's output
    through ``delta`` (forward hooks on the eager encoder layers, removed on leaving). Like the
    backbone's memory slot, this holds for one forward at a time: the engine's one thread."""
    if backbone.compiled:
        raise ConfigError("LoRA-XS needs eager encoder layers; this backbone's layers are compiled")
    paths = site_paths(backbone.model_type)
    handles = []
    try:
        for index in range(backbone.num_layers):
            layer = backbone.layer(index)
            for site in sites:
                handles.append(
                    layer.get_submodule(paths[site]).register_forward_hook(_hook(delta, index, site))
                )
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hook(delta: LinearDelta, index: int, site: LoraXSSite) -> Any:
    def run(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        return delta(index, site, inputs[0], output)

    return run


class LoraXSLayer(nn.Module):
    """One encoder layer's trainable R [r, r] per adapted site (parameters named by site, so a
    ``state_dict`` reads ``<site>``), all zero at the start."""

    def __init__(self, config: LoraXSConfig) -> None:
        super().__init__()
        self.sites = config.sites
        for site in config.sites:
            self.register_parameter(site, nn.Parameter(torch.zeros(config.rank, config.rank)))

    def matrix(self, site: LoraXSSite) -> torch.Tensor:
        weight: torch.Tensor = getattr(self, site)
        return weight


def lora_xs_shapes(num_layers: int, config: LoraXSConfig) -> dict[str, tuple[int, ...]]:
    """``state_dict`` name -> shape of a LoRA-XS memory's layers (the head's are the SPARTAN ones)."""
    return {
        f"layers.{i}.{site}": (config.rank, config.rank) for i in range(num_layers) for site in config.sites
    }


def apply_delta(x: torch.Tensor, down: torch.Tensor, r: torch.Tensor, up_t: torch.Tensor) -> torch.Tensor:
    """((x Bᵀ) Rᵀ) Aᵀ as (x Bᵀ)(Rᵀ Aᵀ): x [G, S, in], B [r, in], R [r, r] (one task) or [G, r, r]
    (one per row), Aᵀ [r, out] -> [G, S, out]. Rᵀ Aᵀ is a few thousand multiply-adds, so a row
    costs one thin GEMM down and one up."""
    z = nn.functional.linear(x, down)  # [G, S, r]
    if r.dim() == 2:
        delta: torch.Tensor = z @ (r.T @ up_t)  # [G, S, out]
        return delta
    return torch.bmm(z, r.transpose(1, 2) @ up_t)  # [G, r, out] per row -> [G, S, out]


def add_delta(
    y: torch.Tensor, x: torch.Tensor, down: torch.Tensor, r: torch.Tensor, up_t: torch.Tensor
) -> None:
    """y += ((x Bᵀ) Rᵀ) Aᵀ in place, for one task's R [r, r] (no [G, S, out] temporary): x [G, S, in],
    y [G, S, out] contiguous."""
    z = nn.functional.linear(x, down)  # [G, S, r]
    y.view(-1, y.shape[-1]).addmm_(z.view(-1, z.shape[-1]), r.T @ up_t)
