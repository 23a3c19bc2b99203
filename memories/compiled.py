"""Shape buckets and ``torch.compile`` of the backbone's encoder layers (opt-in).

A compiled graph is specialised to its input shape, so a server that compiles must run a small
fixed set of shapes: :class:`Buckets` rounds a batch up to the next batch size and length of
its sets (padding rows are copies of a real row whose outputs are dropped; padding tokens are
masked). :func:`compile_backbone` compiles every encoder layer (the SPARTAN memory between
layers stays eager: its grouping of rows changes with every batch), then runs every bucket once
at start-up, compiled and eager, and refuses to serve if any output differs from eager by more
than ``tolerance``. Only the fp32 mode compiles: compiled int8 layers were measured 1.4e-3 away
from eager int8 on MiniLM (a different activation rounding), so they are not "the same model".

Whether compiling pays is measured in docs/performance.md (section 3); it is off by default.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from memories.backbone import Backbone, Encoded
from memories.errors import ConfigError


@dataclass(frozen=True)
class Buckets:
    """Batch sizes and sequence lengths a compiled backbone runs (each sorted, at least one)."""

    batch_sizes: tuple[int, ...]
    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        for name, values in (("batch sizes", self.batch_sizes), ("lengths", self.lengths)):
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ConfigError(f"bucket {name} must be positive and strictly increasing, got {values}")

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return [(b, s) for b in self.batch_sizes for s in self.lengths]

    def batch_size(self, rows: int) -> int:
        """The smallest bucket batch size that holds ``rows``."""
        return _round_up(self.batch_sizes, rows, "rows")

    def length(self, tokens: int) -> int:
        """The smallest bucket length that holds ``tokens``."""
        return _round_up(self.lengths, tokens, "tokens")

    def fit(self, batch: Encoded, pad_id: int) -> Encoded:
        """``batch`` padded to its bucket; unchanged if it is longer or wider than every bucket
        (that shape then compiles on first use, or runs eager past dynamo's recompile limit)."""
        rows, tokens = batch.input_ids.shape
        if rows > self.batch_sizes[-1] or tokens > self.lengths[-1]:
            return batch
        return pad_batch(batch, self.batch_size(rows), self.length(tokens), pad_id)


def _round_up(values: tuple[int, ...], n: int, what: str) -> int:
    index = bisect.bisect_left(values, n)
    if index == len(values):
        raise ConfigError(f"{n} {what} exceed the largest bucket ({values[-1]})")
    return values[index]


def pad_batch(batch: Encoded, rows: int, length: int, pad_id: int) -> Encoded:
    """``batch`` [B, S] padded to [rows, length]: extra tokens masked, extra rows copies of row 0."""
    b, s = batch.input_ids.shape
    assert b <= rows, f"{b} rows do not fit a bucket of {rows}"
    assert s <= length, f"{s} tokens do not fit a bucket of {length}"

    def grow(t: torch.Tensor, fill: int) -> torch.Tensor:
        out = torch.full((rows, length), fill, dtype=t.dtype)
        out[:b, :s] = t
        out[b:, :s] = t[0]
        return out

    types = None if batch.token_type_ids is None else grow(batch.token_type_ids, 0)
    mask = grow(batch.attention_mask, 0)
    return Encoded(grow(batch.input_ids, pad_id), mask, types)


def compile_backbone(
    backbone: Backbone,
    buckets: Buckets,
    tolerance: float = 1e-4,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Compile the encoder layers in place, warm every bucket and check it against eager.

    Returns what it did (seconds, worst difference per shape). Raises ConfigError when the
    backbone is not fp32 or a compiled output differs from eager by more than ``tolerance``
    (the layers are then restored to eager).
    """
    if backbone.precision != "fp32":
        raise ConfigError(f"torch.compile is supported for the fp32 backbone only, not {backbone.precision}")
    if buckets.lengths[-1] > backbone.max_positions:
        raise ConfigError(
            f"bucket length {buckets.lengths[-1]} exceeds the backbone's {backbone.max_positions}"
        )
    import torch._dynamo

    # One graph per bucket shape, shared by all layers (same code, parameters are inputs).
    limit = len(buckets.shapes) + 2
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    pad_id = backbone.tokenizer.pad_token_id or 0
    generator = torch.Generator().manual_seed(0)
    batches: dict[tuple[int, int], Encoded] = {}
    for rows, length in buckets.shapes:
        ids = torch.randint(4, len(backbone.tokenizer), (rows, length), generator=generator)
        batches[(rows, length)] = pad_batch(Encoded(ids, torch.ones_like(ids), None), rows, length, pad_id)
    with torch.no_grad():
        eager = {shape: backbone.forward(batch) for shape, batch in batches.items()}  # [B, S, d] each
        originals = backbone.compile_layers()
        started = time.perf_counter()
        worst: dict[str, float] = {}
        for (rows, length), batch in batches.items():
            tick = time.perf_counter()
            diff = (backbone.forward(batch) - eager[(rows, length)]).abs().max().item()
            worst[f"{rows}x{length}"] = diff
            seconds = time.perf_counter() - tick
            progress(f"compiled {rows}x{length} in {seconds:.1f} s, max |compiled - eager| {diff:.1e}")
            if not diff <= tolerance:
                backbone.restore_layers(originals)
                raise ConfigError(
                    f"compiled output differs from eager by {diff:.2e} at {rows}x{length} "
                    f"(tolerance {tolerance:.0e}); serving eager is the safe choice"
                )
    return {"seconds": round(time.perf_counter() - started, 1), "max_abs_diff": worst}
