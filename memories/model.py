"""A task's memory plus head, and batches whose rows use different tasks.

* :class:`TaskMemory` is the trainable unit: one :class:`~memories.spartan.SpartanLayer` per
  backbone layer and a classification/regression :class:`Head`. Its ``state_dict`` names are the
  tensor names of the memory file.
* :class:`PackedMemory` is the frozen inference form of a task: per layer the packed keys
  ``[P; CK]`` and values ``CV`` ready for :func:`~memories.spartan.spartan_dense`, and the head's
  weights. It is kept resident in fp32, fp16 or bf16 (half the bytes per task in a cache) and
  computed in the backbone's dtype (fp32, or bf16 in bf16 mode): other dtypes are cast per
  batch and layer (in a batch of 32 tasks, 768 small casts: about 5% of a bf16 pass on AMX).
  The head always runs in fp32.
* :func:`run_batch` runs one backbone pass for a batch whose rows may each name a different
  memory. Rows are grouped by memory hyper-parameters; inside a group every row gets its own
  keys and values (a per-row stack and a batched GEMM), or one shared GEMM when the whole group
  uses one memory.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from memories.backbone import Backbone, Encoded, Pooling, pool
from memories.config import SpartanConfig
from memories.fused import FusedRouting
from memories.spartan import SpartanLayer, pack_keys, pack_values, spartan_dense

RESIDENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Head(nn.Module):
    """dense (d -> d), tanh, dropout, out (d -> num_outputs): RoBERTa's classification head."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled [B, d] -> logits [B, num_outputs]."""
        logits: torch.Tensor = self.out(self.dropout(torch.tanh(self.dense(self.dropout(pooled)))))
        return logits


class TaskMemory(nn.Module):
    """All trainable tensors of one task: a memory per backbone layer and the head."""

    def __init__(self, hidden_size: int, num_layers: int, num_outputs: int, config: SpartanConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(SpartanLayer(hidden_size, config) for _ in range(num_layers))
        self.head = Head(hidden_size, num_outputs)

    @staticmethod
    def shapes(
        hidden_size: int, num_layers: int, num_outputs: int, config: SpartanConfig
    ) -> dict[str, tuple[int, ...]]:
        """``state_dict`` name -> shape, without building the module (a cold load checks every
        uploaded file against it; tests/memories/test_model.py checks it against the module)."""
        np_, nc, d = config.num_parents, config.num_children, hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(num_layers):
            shapes[f"layers.{i}.parent_keys"] = (np_, d)
            shapes[f"layers.{i}.child_keys"] = (np_, nc, d)
            shapes[f"layers.{i}.child_values"] = (np_, nc, d)
        shapes.update(
            {
                "head.dense.weight": (d, d),
                "head.dense.bias": (d,),
                "head.out.weight": (num_outputs, d),
                "head.out.bias": (num_outputs,),
            }
        )
        return shapes

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        """Training path (differentiable): logits [B, num_outputs]."""
        layers = self.layers

        def apply(index: int, hidden: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = layers[index](hidden)
            return out

        hidden = backbone.forward(batch, apply)  # [B, S, d]
        logits: torch.Tensor = self.head(pool(hidden, batch.attention_mask, pooling))
        return logits

    def pack(
        self, pooling: Pooling, dtype: torch.dtype = torch.float32, head_dtype: torch.dtype | None = None
    ) -> PackedMemory:
        """A detached copy in inference form, the layers resident in ``dtype``, the head in
        ``head_dtype`` (default: ``dtype``)."""
        tensors = {name: t.detach().clone() for name, t in self.state_dict().items()}
        return pack_tensors(tensors, self.config, len(self.layers), pooling, dtype, head_dtype)


def pack_tensors(
    tensors: Mapping[str, torch.Tensor],
    config: SpartanConfig,
    num_layers: int,
    pooling: Pooling,
    dtype: torch.dtype = torch.float32,
    head_dtype: torch.dtype | None = None,
) -> PackedMemory:
    """The inference form of a task's tensors (``TaskMemory.state_dict`` names): the layers
    resident in ``dtype``, the head in ``head_dtype`` (default: ``dtype``). Keys are packed in
    fp32, then cast. The result is a copy, in one memory mapping of its own (:func:`in_own_mapping`)."""
    head_dtype = dtype if head_dtype is None else head_dtype
    for name, wanted in (("resident", dtype), ("head", head_dtype)):
        assert wanted in RESIDENT_DTYPES, f"{name} dtype must be one of {RESIDENT_DTYPES}, got {wanted}"
    layers = []
    for i in range(num_layers):
        parent_keys, child_keys, child_values = (
            tensors[f"layers.{i}.{name}"].float() for name in ("parent_keys", "child_keys", "child_values")
        )
        keys = pack_keys(parent_keys, child_keys, config.child_temperature)  # [Np + Nc*Np, d]
        layers.append((keys.to(dtype), pack_values(child_values).to(dtype)))
    head = [
        tensors[f"head.{name}"].to(head_dtype)
        for name in ("dense.weight", "dense.bias", "out.weight", "out.bias")
    ]
    owned = in_own_mapping([t for pair in layers for t in pair] + head)
    pairs = tuple((owned[2 * i], owned[2 * i + 1]) for i in range(num_layers))
    dense_w, dense_b, out_w, out_b = owned[2 * num_layers :]
    return PackedMemory(config, pooling, pairs, (dense_w, dense_b, out_w, out_b))


def in_own_mapping(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Contiguous copies of ``tensors`` in one anonymous memory mapping of their own.

    A cache keeps thousands of memories and evicts them in any order. As malloc blocks, their
    freed tensors left holes in the heap, between batch activations, and the resident set grew
    past the cache's budget until a memory limit killed the process (docs/reliability.md,
    section 6). A mapping goes back to the system whole once the last of its tensors is gone.
    """
    align = 64  # bytes: every dtype's alignment, and a cache line
    offsets, total = [], 0
    for tensor in tensors:
        offsets.append(total)
        total += -(-tensor.numel() * tensor.element_size() // align) * align
    flat = torch.frombuffer(mmap.mmap(-1, max(total, align)), dtype=torch.uint8)  # keeps the mapping alive
    copies = []
    for tensor, offset in zip(tensors, offsets, strict=True):
        size = tensor.numel() * tensor.element_size()
        copy = flat[offset : offset + size].view(tensor.dtype).view(tensor.shape)
        copy.copy_(tensor)
        copies.append(copy)
    return copies


@dataclass(frozen=True, eq=False)
class PackedMemory:
    """A task ready to serve: per layer (keys [Np + Nc*Np, d], values [Nc*Np, d]) and the head's
    (dense weight [d, d], dense bias [d], out weight [num_outputs, d], out bias [num_outputs]);
    the layers in one resident dtype (fp32, fp16 or bf16), the head in one (its own or theirs)."""

    config: SpartanConfig
    pooling: Pooling
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

    @property
    def num_outputs(self) -> int:
        return self.head[2].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The layers' resident dtype."""
        return self.layers[0][0].dtype

    def layer(self, index: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``index``'s (keys, values) in ``dtype``, the hidden states' (a no-op when resident
        in it; else a per-batch cast of a few hundred KB)."""
        keys, values = self.layers[index]
        return keys.to(dtype), values.to(dtype)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head in eval mode (dense, tanh, out) in fp32: pooled [B, d] -> [B, num_outputs]."""
        dense_w, dense_b, out_w, out_b = (t.float() for t in self.head)
        hidden = torch.tanh(nn.functional.linear(pooled, dense_w, dense_b))  # [B, d]
        return nn.functional.linear(hidden, out_w, out_b)

    def nbytes(self) -> int:
        """Resident bytes of every tensor (what a byte-bounded cache charges for this task)."""
        tensors = [t for pair in self.layers for t in pair] + list(self.head)
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class BatchOutput:
    """Per row: the head output [num_outputs of that row's task]; optionally the routing.

    ``routing[r]`` is row r's parent gate per layer, [L, S, Np] (zero outside the top-K).
    """

    logits: list[torch.Tensor]
    routing: list[torch.Tensor] | None = None


def _group_rows(memories: Sequence[PackedMemory]) -> list[list[int]]:
    """Row indices grouped by memory hyper-parameters (rows of one group share a GEMM shape)."""
    groups: dict[SpartanConfig, list[int]] = {}
    for row, memory in enumerate(memories):
        groups.setdefault(memory.config, []).append(row)
    return list(groups.values())


def _rows_by_memory(memories: Sequence[PackedMemory], rows: Sequence[int]) -> dict[int, list[int]]:
    by_memory: dict[int, list[int]] = {}
    for row in rows:
        by_memory.setdefault(id(memories[row]), []).append(row)
    return by_memory


class _MixedApply:
    """The per-layer memory of one mixed batch (called by the backbone after every layer)."""

    def __init__(self, memories: Sequence[PackedMemory], record: bool, routing: FusedRouting | None) -> None:
        self.memories = memories
        self.routing_kernels = routing
        self.groups = _group_rows(memories)
        self.shared = [len(_rows_by_memory(memories, rows)) == 1 for rows in self.groups]
        # routing[layer] = [(rows, gate [len(rows), S, Np]), ...]
        self.routing: list[list[tuple[list[int], torch.Tensor]]] | None = [] if record else None

    def _apply_group(
        self, index: int, x: torch.Tensor, rows: list[int], shared: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        first = self.memories[rows[0]]
        if shared:
            keys, values = first.layer(index, x.dtype)  # [M, d], [Nc*Np, d]
        else:
            per_row = [self.memories[r].layer(index, x.dtype) for r in rows]  # views or cast copies
            keys = torch.stack([k for k, _ in per_row])  # [G, M, d]
            values = torch.stack([v for _, v in per_row])  # [G, Nc*Np, d]
        record: list[torch.Tensor] | None = [] if self.routing is not None else None
        router = self.routing_kernels.router(first.config, x.dtype) if self.routing_kernels else None
        out = spartan_dense(x, keys, values, first.config, record, inplace=True, router=router)
        return out, (record[0] if record else None)

    def __call__(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        if self.routing is not None:
            self.routing.append([])
        if len(self.groups) == 1:
            out, gate = self._apply_group(index, hidden, self.groups[0], self.shared[0])
            if self.routing is not None and gate is not None:
                self.routing[-1].append((self.groups[0], gate))
            return out
        for rows, shared in zip(self.groups, self.shared, strict=True):
            idx = torch.tensor(rows)
            part, gate = self._apply_group(index, hidden[idx], rows, shared)
            hidden[idx] = part  # the layer's fresh output: ours to overwrite
            if self.routing is not None and gate is not None:
                self.routing[-1].append((rows, gate))
        return hidden

    def routing_per_row(self, batch_size: int) -> list[torch.Tensor]:
        """Row r -> its gates stacked over layers, [L, S, Np]."""
        assert self.routing is not None, "routing was not recorded"
        per_row: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
        for layer in self.routing:
            for rows, gate in layer:
                for pos, row in enumerate(rows):
                    per_row[row].append(gate[pos])
        return [torch.stack(gates) for gates in per_row]


def run_batch(
    backbone: Backbone,
    batch: Encoded,
    memories: Sequence[PackedMemory],
    record_routing: bool = False,
) -> BatchOutput:
    """One backbone pass; row r uses ``memories[r]`` (rows may repeat or mix tasks freely)."""
    batch_size = batch.input_ids.shape[0]
    assert len(memories) == batch_size, f"{len(memories)} memories for {batch_size} rows"
    apply = _MixedApply(memories, record_routing, backbone.routing)
    with torch.no_grad():
        hidden = backbone.forward(batch, apply)  # [B, S, d]
        logits: list[torch.Tensor] = [torch.empty(0)] * batch_size
        # Pooled once per pooling kind for the whole batch: [B, d] each
        pooled = {
            kind: pool(hidden, batch.attention_mask, kind).float() for kind in {m.pooling for m in memories}
        }
        for rows in _rows_by_memory(memories, range(batch_size)).values():
            memory = memories[rows[0]]
            out = memory.classify(pooled[memory.pooling][rows])  # [G, num_outputs]
            for pos, row in enumerate(rows):
                logits[row] = out[pos]
    routing = apply.routing_per_row(batch_size) if record_routing else None
    return BatchOutput(logits, routing)
