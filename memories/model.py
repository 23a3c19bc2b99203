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
* A LoRA-XS task (memories.loraxs) packs the same way: per layer its r x r matrices, one per
  adapted site, and the head; it changes linear layers inside each encoder layer, not its output.
* :func:`run_batch` runs one backbone pass for a batch whose rows may each name a different
  memory, of either kind. SPARTAN rows are grouped by memory hyper-parameters; inside a group
  every row gets its own keys and values (a per-row stack and a batched GEMM), or one shared
  GEMM when the whole group uses one memory. LoRA-XS rows are grouped by rank and sites: the
  factor GEMMs are shared by the group, the r x r product is per row. A SPARTAN task may carry
  early exits (memories.exits): its rows that are sure enough after an exit layer leave the
  batch there, and the others run on as a smaller batch.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from memories.backbone import Backbone, Encoded, Pooling, pool
from memories.config import LORA_XS_SITES, ExitConfig, LoraXSConfig, LoraXSSite, MemoryKind, SpartanConfig
from memories.exits import ExitClassifiers, PackedExits, exit_shapes
from memories.fused import FusedRouting
from memories.loraxs import add_delta, apply_delta, linear_hooks, require_factors
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


def head_shapes(hidden_size: int, num_outputs: int) -> dict[str, tuple[int, ...]]:
    """``state_dict`` name -> shape of a task's :class:`Head` (``head.*``), every kind's."""
    d = hidden_size
    return {
        "head.dense.weight": (d, d),
        "head.dense.bias": (d,),
        "head.out.weight": (num_outputs, d),
        "head.out.bias": (num_outputs,),
    }


class TaskMemory(nn.Module):
    """All trainable tensors of one task: a memory per backbone layer, the head, optional exits.

    The exits are initialised from a generator of their own, so a memory trained with exits is
    the memory trained without them (same seed): the exits read its states, never change them.
    """

    def __init__(
        self,
        hidden_size: int,
        num_layers: int,
        num_outputs: int,
        config: SpartanConfig,
        exits: ExitConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(SpartanLayer(hidden_size, config) for _ in range(num_layers))
        self.head = Head(hidden_size, num_outputs)
        self.exits: ExitClassifiers | None = None
        if exits is not None:
            exits.check(num_layers, num_outputs)
            with torch.random.fork_rng():
                torch.manual_seed(torch.initial_seed() + 1)
                self.exits = ExitClassifiers(exits, hidden_size, num_outputs)

    @staticmethod
    def shapes(
        hidden_size: int,
        num_layers: int,
        num_outputs: int,
        config: SpartanConfig,
        exits: ExitConfig | None = None,
    ) -> dict[str, tuple[int, ...]]:
        """``state_dict`` name -> shape, without building the module (a cold load checks every
        uploaded file against it; tests/memories/test_model.py checks it against the module)."""
        np_, nc, d = config.num_parents, config.num_children, hidden_size
        shapes: dict[str, tuple[int, ...]] = {}
        for i in range(num_layers):
            shapes[f"layers.{i}.parent_keys"] = (np_, d)
            shapes[f"layers.{i}.child_keys"] = (np_, nc, d)
            shapes[f"layers.{i}.child_values"] = (np_, nc, d)
        shapes.update(head_shapes(hidden_size, num_outputs))
        if exits is not None:
            shapes.update(exit_shapes(exits, hidden_size, num_outputs))
        return shapes

    def forward(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> torch.Tensor:
        """Training path (differentiable): logits [B, num_outputs]."""
        return self.training_outputs(backbone, batch, pooling)[0]

    def training_outputs(self, backbone: Backbone, batch: Encoded, pooling: Pooling) -> list[torch.Tensor]:
        """Every output a training loss is taken on, each [B, num_outputs]: the head's logits, then
        per exit its logits z_m and its ensembled log p_m (a cross-entropy on log p_m is its NLL)."""
        layers = self.layers
        exit_layers = set(self.exits.config.layers) if self.exits is not None else set()
        pooled: list[torch.Tensor] = []  # [B, d] after each exit layer, detached

        def apply(index: int, hidden: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = layers[index](hidden)
            if index in exit_layers:
                pooled.append(pool(out.detach(), batch.attention_mask, pooling))
            return out

        hidden = backbone.forward(batch, apply)  # [B, S, d]
        outputs: list[torch.Tensor] = [self.head(pool(hidden, batch.attention_mask, pooling))]
        if self.exits is not None:
            logits, log_probs = self.exits(pooled)
            outputs += [t for pair in zip(logits, log_probs, strict=True) for t in pair]
        return outputs

    def pack(
        self, pooling: Pooling, dtype: torch.dtype = torch.float32, head_dtype: torch.dtype | None = None
    ) -> PackedMemory:
        """A detached copy in inference form, the layers resident in ``dtype``, the head in
        ``head_dtype`` (default: ``dtype``)."""
        tensors = {name: t.detach().clone() for name, t in self.state_dict().items()}
        exits = self.exits.config if self.exits is not None else None
        return pack_tensors(tensors, self.config, len(self.layers), pooling, dtype, head_dtype, exits)


def pack_tensors(
    tensors: Mapping[str, torch.Tensor],
    config: SpartanConfig | LoraXSConfig,
    num_layers: int,
    pooling: Pooling,
    dtype: torch.dtype = torch.float32,
    head_dtype: torch.dtype | None = None,
    exits: ExitConfig | None = None,
) -> PackedMemory:
    """The inference form of a task's tensors (``TaskMemory.state_dict`` names, or a LoRA-XS
    memory's): the layers resident in ``dtype``, the head and the ``exits`` in ``head_dtype``
    (default: ``dtype``). SPARTAN keys are packed in fp32, then cast. The result is a copy, in
    one memory mapping of its own (:func:`in_own_mapping`)."""
    head_dtype = dtype if head_dtype is None else head_dtype
    for name, wanted in (("resident", dtype), ("head", head_dtype)):
        assert wanted in RESIDENT_DTYPES, f"{name} dtype must be one of {RESIDENT_DTYPES}, got {wanted}"
    layers: list[tuple[torch.Tensor, ...]] = []
    for i in range(num_layers):
        if isinstance(config, LoraXSConfig):
            layers.append(tuple(tensors[f"layers.{i}.{site}"].to(dtype) for site in config.sites))
            continue
        parent_keys, child_keys, child_values = (
            tensors[f"layers.{i}.{name}"].float() for name in ("parent_keys", "child_keys", "child_values")
        )
        keys = pack_keys(parent_keys, child_keys, config.child_temperature)  # [Np + Nc*Np, d]
        layers.append((keys.to(dtype), pack_values(child_values).to(dtype)))
    head = [
        tensors[f"head.{name}"].to(head_dtype)
        for name in ("dense.weight", "dense.bias", "out.weight", "out.bias")
    ]
    exit_names = sorted(name for name in tensors if name.startswith("exits.")) if exits else []
    exit_tensors = [tensors[name].to(head_dtype) for name in exit_names]
    per_layer = len(layers[0])
    owned = in_own_mapping([t for group in layers for t in group] + head + exit_tensors)
    packed = tuple(tuple(owned[per_layer * i : per_layer * (i + 1)]) for i in range(num_layers))
    dense_w, dense_b, out_w, out_b = owned[per_layer * num_layers : per_layer * num_layers + 4]
    packed_exits = None
    if exits is not None:
        packed_exits = PackedExits.from_tensors(
            exits, dict(zip(exit_names, owned[per_layer * num_layers + 4 :], strict=True))
        )
    return PackedMemory(config, pooling, packed, (dense_w, dense_b, out_w, out_b), packed_exits)


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
    """A task ready to serve: per layer its method's tensors, SPARTAN's (keys [Np + Nc*Np, d],
    values [Nc*Np, d]) or LoRA-XS's (R [r, r] per adapted site, in ``config.sites`` order), and
    the head's (dense weight [d, d], dense bias [d], out weight [num_outputs, d], out bias
    [num_outputs]); the layers in one resident dtype (fp32, fp16 or bf16), the head in one (its
    own or theirs), and a SPARTAN task's early exits if it has any (in the head's dtype)."""

    config: SpartanConfig | LoraXSConfig
    pooling: Pooling
    layers: tuple[tuple[torch.Tensor, ...], ...]
    head: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    exits: PackedExits | None = None

    @property
    def kind(self) -> MemoryKind:
        return "lora-xs" if isinstance(self.config, LoraXSConfig) else "spartan"

    @property
    def num_outputs(self) -> int:
        return self.head[2].shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The layers' resident dtype."""
        return self.layers[0][0].dtype

    def layer(self, index: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        """Layer ``index``'s tensors in ``dtype``, the hidden states' (a no-op when resident in it;
        else a per-batch cast of a few hundred KB): SPARTAN's (keys, values), LoRA-XS's R per site."""
        return tuple(t.to(dtype) for t in self.layers[index])

    def site(self, index: int, site: LoraXSSite, dtype: torch.dtype) -> torch.Tensor:
        """A LoRA-XS task's R [r, r] of ``site`` in layer ``index``, in ``dtype``."""
        assert isinstance(self.config, LoraXSConfig), "only LoRA-XS tasks have sites"
        return self.layers[index][self.config.sites.index(site)].to(dtype)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head in eval mode (dense, tanh, out) in fp32: pooled [B, d] -> [B, num_outputs]."""
        dense_w, dense_b, out_w, out_b = (t.float() for t in self.head)
        hidden = torch.tanh(nn.functional.linear(pooled, dense_w, dense_b))  # [B, d]
        return nn.functional.linear(hidden, out_w, out_b)

    def nbytes(self) -> int:
        """Resident bytes of every tensor (what a byte-bounded cache charges for this task)."""
        tensors = [t for group in self.layers for t in group] + list(self.head)
        tensors += self.exits.tensors if self.exits is not None else []
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class BatchOutput:
    """Per row: the head output [num_outputs of that row's task], or for a row that left early
    its exit's log-probabilities (the same softmax); the layer it left after (the last layer for
    a row that ran them all); optionally the routing.

    ``routing[r]`` is row r's parent gate per layer it ran, [L_r, S, Np] (zero outside the top-K),
    or None for a LoRA-XS row (it has no parents).
    """

    logits: list[torch.Tensor]
    exit_layers: list[int]
    routing: list[torch.Tensor | None] | None = None


def _group_rows(memories: Sequence[PackedMemory]) -> list[list[int]]:
    """Row indices grouped by memory hyper-parameters (rows of one group share a GEMM shape):
    SPARTAN shapes, or LoRA-XS rank and sites."""
    groups: dict[SpartanConfig | LoraXSConfig, list[int]] = {}
    for row, memory in enumerate(memories):
        groups.setdefault(memory.config, []).append(row)
    return list(groups.values())


def _rows_by_memory(memories: Sequence[PackedMemory], rows: Sequence[int]) -> dict[int, list[int]]:
    by_memory: dict[int, list[int]] = {}
    for row in rows:
        by_memory.setdefault(id(memories[row]), []).append(row)
    return by_memory


@dataclass(frozen=True)
class _Group:
    """Positions among the running rows whose memories share a shape; ``shared``: one memory."""

    positions: list[int]
    shared: bool
    config: SpartanConfig | LoraXSConfig


class _MixedApply:
    """The memories of one mixed batch: SPARTAN's after every layer (the backbone calls this
    object), LoRA-XS's inside it (:meth:`lora`, the adapted linear layers' hook).

    ``running`` lists the batch rows still in the backbone, in the order of the hidden state's
    rows; groups hold positions in it. Rows that leave early are dropped with :meth:`keep`."""

    def __init__(self, memories: Sequence[PackedMemory], record: bool, backbone: Backbone) -> None:
        self.memories = memories
        self.routing_kernels: FusedRouting | None = backbone.routing
        self.running = list(range(len(memories)))
        ranks = [m.config.rank for m in memories if isinstance(m.config, LoraXSConfig)]
        self.factors = require_factors(backbone, max(ranks)) if ranks else None
        self._regroup()
        # routing[layer] = [(batch rows, gate [len(rows), S, Np]), ...]
        self.routing: list[list[tuple[list[int], torch.Tensor]]] | None = [] if record else None

    def _regroup(self) -> None:
        running = [self.memories[row] for row in self.running]
        groups = [
            _Group(positions, len(_rows_by_memory(running, positions)) == 1, running[positions[0]].config)
            for positions in _group_rows(running)
        ]
        self.spartan = [g for g in groups if isinstance(g.config, SpartanConfig)]
        self.lora_xs = [g for g in groups if isinstance(g.config, LoraXSConfig)]

    def keep(self, positions: Sequence[int]) -> None:
        """Only the rows at these positions of the running ones run on."""
        self.running = [self.running[p] for p in positions]
        self._regroup()

    def _apply_group(self, index: int, x: torch.Tensor, group: _Group) -> torch.Tensor:
        rows = [self.running[p] for p in group.positions]
        config = group.config
        assert isinstance(config, SpartanConfig), "a SPARTAN group"
        if group.shared:
            keys, values = self.memories[rows[0]].layer(index, x.dtype)  # [M, d], [Nc*Np, d]
        else:
            per_row = [self.memories[r].layer(index, x.dtype) for r in rows]  # views or cast copies
            keys = torch.stack([k for k, _ in per_row])  # [G, M, d]
            values = torch.stack([v for _, v in per_row])  # [G, Nc*Np, d]
        record: list[torch.Tensor] | None = [] if self.routing is not None else None
        router = self.routing_kernels.router(config, x.dtype) if self.routing_kernels else None
        out = spartan_dense(x, keys, values, config, record, inplace=True, router=router)
        if self.routing is not None and record:
            self.routing[-1].append((rows, record[0]))
        return out

    def __call__(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        if self.routing is not None:
            self.routing.append([])
        if len(self.spartan) == 1 and len(self.spartan[0].positions) == hidden.shape[0]:
            return self._apply_group(index, hidden, self.spartan[0])
        for group in self.spartan:
            idx = torch.tensor(group.positions)
            hidden[idx] = self._apply_group(index, hidden[idx], group)  # the layer's fresh output: ours
        return hidden

    def lora(self, index: int, site: LoraXSSite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adapted linear layer ``site`` of layer ``index``: x [B', S, in] -> y [B', S, out]
        plus each LoRA-XS row's ((x Bᵀ) Rᵀ) Aᵀ, added in place (y is the layer's fresh output)."""
        assert self.factors is not None, "LoRA-XS rows without factors"
        factors = self.factors.to(x.dtype)
        for group in self.lora_xs:
            config = group.config
            assert isinstance(config, LoraXSConfig), "a LoRA-XS group"
            if site not in config.sites:
                continue
            down, up_t = factors.pair(index, site, config.rank)  # [r, in], [r, out]
            rows = [self.running[p] for p in group.positions]
            if group.shared:
                r = self.memories[rows[0]].site(index, site, x.dtype)  # [r, r]
            else:
                r = torch.stack([self.memories[row].site(index, site, x.dtype) for row in rows])  # [G, r, r]
            if len(group.positions) == x.shape[0] and group.shared and y.is_contiguous():
                add_delta(y, x, down, r, up_t)
            elif len(group.positions) == x.shape[0]:
                y += apply_delta(x, down, r, up_t)
            else:
                idx = torch.tensor(group.positions)
                y.index_add_(0, idx, apply_delta(x[idx], down, r, up_t))
        return y

    def lora_sites(self) -> tuple[LoraXSSite, ...]:
        """Every site some LoRA-XS row of the batch adapts, in the canonical order."""
        wanted = {site for g in self.lora_xs if isinstance(g.config, LoraXSConfig) for site in g.config.sites}
        return tuple(site for site in LORA_XS_SITES if site in wanted)

    def routing_per_row(self, batch_size: int) -> list[torch.Tensor | None]:
        """Row r -> its gates stacked over the layers it ran, [L_r, S, Np]; None for LoRA-XS rows."""
        assert self.routing is not None, "routing was not recorded"
        per_row: list[list[torch.Tensor]] = [[] for _ in range(batch_size)]
        for layer in self.routing:
            for rows, gate in layer:
                for pos, row in enumerate(rows):
                    per_row[row].append(gate[pos])
        return [torch.stack(gates) if gates else None for gates in per_row]


class _TaskExits:
    """One task's rows of a batch that may leave early (threshold below 1) and their exit state:
    the latest exit's logits and every exit's log_softmax so far, batch-sized tensors indexed by
    the rows' places here, so an exit costs a few tensor ops per task, not per row."""

    def __init__(self, memory: PackedMemory, rows: list[int], thresholds: list[float]) -> None:
        assert memory.exits is not None, "only tasks with exits"
        self.exits = memory.exits
        self.pooling = memory.pooling
        self.rows = rows
        self.place = {row: n for n, row in enumerate(rows)}
        self.thresholds = torch.tensor(thresholds)  # [G]
        count, classes = len(self.exits.config.layers), memory.num_outputs
        self.previous = torch.zeros(len(rows), classes)  # z of the latest exit [G, C]
        self.history = torch.zeros(count, len(rows), classes)  # log_softmax(z_j) [E, G, C]

    def run(self, m: int, rows: list[int], pooled: torch.Tensor) -> torch.Tensor:
        """Exit m for ``rows`` (still running, in order): pooled [G', d] -> log p_m [G', C]."""
        every = len(rows) == len(self.rows)  # no row of this task has left yet: no indexing
        sel = slice(None) if every else torch.tensor([self.place[r] for r in rows])
        z = self.exits.logits(m, pooled, self.previous[sel] if m else None)  # [G', C]
        self.previous[sel] = z
        self.history[m, sel] = torch.log_softmax(z, dim=-1)
        return self.exits.ensemble_stacked(m, self.history[: m + 1, sel])


class _EarlyExits:
    """The exit policy of one batch (memories.backbone.ExitPolicy): after a layer where some
    running rows' tasks have an exit, those rows' exits run (grouped by task) and the rows whose
    confidence exceeds their threshold leave; their answers and exit layers are kept here. Rows
    whose threshold is 1.0 never leave, so their exits are not run at all."""

    def __init__(
        self,
        apply: _MixedApply,
        memories: Sequence[PackedMemory],
        thresholds: Sequence[float | None],
        attention_mask: torch.Tensor,
    ) -> None:
        self.apply = apply
        self.attention_mask = attention_mask  # [B, S]
        self.tasks: dict[int, _TaskExits] = {}  # id(memory) -> its rows that may leave
        eligible: dict[int, list[int]] = {}
        limits: dict[int, list[float]] = {}
        for row, (memory, given) in enumerate(zip(memories, thresholds, strict=True)):
            if memory.exits is None:
                continue
            threshold = given if given is not None else memory.exits.config.threshold
            if threshold < 1.0:
                eligible.setdefault(id(memory), []).append(row)
                limits.setdefault(id(memory), []).append(threshold)
        for key, rows in eligible.items():
            self.tasks[key] = _TaskExits(memories[rows[0]], rows, limits[key])
        self.task_of = {row: task for task in self.tasks.values() for row in task.rows}
        self.layers = {layer for task in self.tasks.values() for layer in task.exits.config.layers}
        self.answers: dict[int, torch.Tensor] = {}  # row -> log p_m [C] of the exit it left at
        self.left_at: dict[int, int] = {}  # row -> the layer it left after

    def __call__(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B', S, d] of the running rows -> bool [B'], True = leaves after this layer."""
        leaving = torch.zeros(hidden.shape[0], dtype=torch.bool)
        if index not in self.layers:
            return leaving
        running = self.apply.running
        groups: dict[int, list[int]] = {}  # id(task) -> positions among the running rows
        for position, row in enumerate(running):
            task = self.task_of.get(row)
            if task is not None and index in task.exits.config.layers:
                groups.setdefault(id(task), []).append(position)
        for positions in groups.values():
            rows = [running[p] for p in positions]
            task = self.task_of[rows[0]]
            whole = len(positions) == len(running)
            states = hidden if whole else hidden[torch.tensor(positions)]  # [G', S, d]
            pooled = pool(states, self.attention_mask[rows], task.pooling).float()  # [G', d]
            log_p = task.run(task.exits.config.layers.index(index), rows, pooled)  # [G', C]
            sure = log_p.exp().amax(dim=-1) > task.thresholds[[task.place[r] for r in rows]]  # [G']
            for n in sure.nonzero().flatten().tolist():
                self.answers[rows[n]], self.left_at[rows[n]] = log_p[n], index
                leaving[positions[n]] = True
        if leaving.any():
            self.apply.keep((~leaving).nonzero().flatten().tolist())
        return leaving


def run_batch(
    backbone: Backbone,
    batch: Encoded,
    memories: Sequence[PackedMemory],
    record_routing: bool = False,
    exit_thresholds: Sequence[float | None] | None = None,
) -> BatchOutput:
    """One backbone pass; row r uses ``memories[r]`` (rows may repeat or mix tasks freely).

    A row whose task has exits may leave early: when its confidence at an exit exceeds
    ``exit_thresholds[r]`` (None, or no list: the task's own threshold; 1.0: never)."""
    batch_size = batch.input_ids.shape[0]
    assert len(memories) == batch_size, f"{len(memories)} memories for {batch_size} rows"
    thresholds = list(exit_thresholds) if exit_thresholds is not None else [None] * batch_size
    assert len(thresholds) == batch_size, f"{len(thresholds)} exit thresholds for {batch_size} rows"
    assert all(t is None or 0.0 < t <= 1.0 for t in thresholds), f"exit thresholds in (0, 1]: {thresholds}"
    apply = _MixedApply(memories, record_routing, backbone)
    exits = None
    if any(m.exits is not None for m in memories):
        exits = _EarlyExits(apply, memories, thresholds, batch.attention_mask)
        exits = exits if exits.tasks else None  # no row may leave: nothing to run after any layer
    adapted = linear_hooks(backbone, apply.lora_sites(), apply.lora) if apply.lora_xs else nullcontext()
    with torch.no_grad(), adapted:
        hidden = backbone.forward(batch, apply, exits)  # [B', S, d]: the rows in apply.running
        ran = apply.running
        logits: list[torch.Tensor] = [torch.empty(0)] * batch_size
        exit_layers = [backbone.num_layers - 1] * batch_size
        if exits is not None:
            for row, answer in exits.answers.items():
                logits[row], exit_layers[row] = answer, exits.left_at[row]
        mask = batch.attention_mask[ran]  # [B', S]
        # Pooled once per pooling kind for the rows that ran every layer: [B', d] each
        pooled = {kind: pool(hidden, mask, kind).float() for kind in {memories[r].pooling for r in ran}}
        ran_memories = [memories[r] for r in ran]
        for positions in _rows_by_memory(ran_memories, range(len(ran))).values():
            memory = ran_memories[positions[0]]
            out = memory.classify(pooled[memory.pooling][positions])  # [G, num_outputs]
            for pos, position in enumerate(positions):
                logits[ran[position]] = out[pos]
    routing = apply.routing_per_row(batch_size) if record_routing else None
    return BatchOutput(logits, exit_layers, routing)
