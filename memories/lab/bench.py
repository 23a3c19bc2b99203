"""Throughput benchmark: bare backbone vs backbone + SPARTAN, measured in one process and run.

For each sequence length the variants run interleaved, round after round (the order rotates
every round), on one fixed batch of random token ids. Two estimates are reported:

* ``best``: instances per minute from each variant's fastest round, and ratios of those. On a
  shared machine, other tenants only ever add time, so the minimum is the steadiest estimate of
  what the code costs; these are the headline numbers.
* ``median``: instances per minute from the median time, and the median over rounds of the
  per-round ratio (variants of one round ran seconds apart), which shows how noisy the run was.

Variants:
* ``bare``: the frozen backbone alone;
* ``spartan-dense``: one memory, every child via two GEMMs and a top-K mask (production path);
* ``spartan-gather``: one memory, only the chosen parents' children gathered per token;
* ``mixed-dense``: every row of the batch uses a different memory (per-row keys, batched GEMMs);
* ``lora-xs``: one rank-16 LoRA-XS memory (memories.loraxs) for every row; ``mixed-lora-xs``: a
  different one per row; ``mixed-kinds``: a different memory per row, half SPARTAN, half LoRA-XS
  (rows alternating); not run unless asked for;
* ``pfeiffer``, ``houlsby``: the paper's adapter baselines (memories.lab.adapters), one task, with
  its head; not run unless asked for;
* ``bare-int8``, ``spartan-dense-int8``, ``mixed-dense-int8``: the same on the backbone's int8
  mode (memories.precision; a second copy of the backbone, quantised), so int8 vs fp32 and
  SPARTAN's cost in int8 mode are measured in the same run; ``*-bf16`` likewise on a bf16 copy,
  and ``*-auto`` on a copy in the mode precision ``auto`` picks on this host (memories.autoprecision,
  the decision in the report).
* ``bare-compiled``, ``spartan-dense-compiled``, ``mixed-dense-compiled``: the same on a copy
  whose encoder layers are compiled for the benchmark's shapes (memories.compiled).
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from memories.backbone import Backbone, Encoded, LayerMemory
from memories.backbones import default_cache_dir
from memories.config import ExitConfig, LoraXSConfig, SpartanConfig
from memories.errors import ConfigError
from memories.exits import ExitClassifiers, PackedExits
from memories.lab.adapters import Adapter
from memories.lab.baselines import build_model
from memories.lab.host import machine
from memories.lab.timing import interleaved, median_ratio
from memories.loraxs import lora_xs_shapes, prepare_factors
from memories.model import PackedMemory, TaskMemory, head_shapes, pack_tensors, run_batch
from memories.precision import FP32_LAYERS
from memories.spartan import Router, SpartanLayer, spartan_dense, spartan_gather

VARIANTS = (
    "bare",
    "spartan-dense",
    "spartan-gather",
    "mixed-dense",
    "bare-int8",
    "spartan-dense-int8",
    "mixed-dense-int8",
    "bare-bf16",
    "spartan-dense-bf16",
    "mixed-dense-bf16",
    "bare-auto",
    "spartan-dense-auto",
    "mixed-dense-auto",
    "bare-compiled",
    "spartan-dense-compiled",
    "mixed-dense-compiled",
    "pfeiffer",
    "houlsby",
    "lora-xs",
    "mixed-lora-xs",
    "mixed-kinds",
    "exits-stay",
    "exits-leave-quarter",
    "exits-leave-half",
    "exits-mixed",
)
DEFAULT_VARIANTS = VARIANTS[:4]
EXIT_VARIANTS = VARIANTS[-4:]
"""Early exit on random weights, where a confidence means nothing, so thresholds force the depth:
a task with exits after a quarter, half and three quarters of the layers, nothing leaving
(``stay``: the exits' own cost) or every row leaving at the first (``leave-quarter``); a task with
one exit at half depth that every row takes (``leave-half``); and a batch of half rows leaving at
a quarter and half rows of a task without exits (``mixed``). Each is compared with
``spartan-dense``; the ideal ratio is the layers not run."""


@dataclass(frozen=True)
class BenchOptions:
    batch_size: int = 32
    seq_lengths: tuple[int, ...] = (64, 128)
    rounds: int = 3
    threads: int = 1
    spartan: SpartanConfig = field(default_factory=SpartanConfig)
    seed: int = 0
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    layer_rounds: int = 30

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown or not self.variants:
            raise ConfigError(f"unknown or no variants {unknown}; choose from {', '.join(VARIANTS)}")
        if self.rounds < 1 or self.batch_size < 1 or not self.seq_lengths:
            raise ConfigError("rounds, batch size and at least one sequence length are required")


def random_batch(backbone: Backbone, batch_size: int, seq_length: int, seed: int) -> Encoded:
    """Full-length rows of random ids (no padding), framed by the tokenizer's special tokens."""
    generator = torch.Generator().manual_seed(seed)
    vocab = len(backbone.tokenizer)
    ids = torch.randint(4, vocab, (batch_size, seq_length), generator=generator)
    ids[:, 0] = backbone.tokenizer.cls_token_id
    ids[:, -1] = backbone.tokenizer.sep_token_id
    return Encoded(ids, torch.ones_like(ids), None)


def _gather_memory(task: TaskMemory) -> LayerMemory:
    layers = [layer for layer in task.layers if isinstance(layer, SpartanLayer)]

    def apply(index: int, hidden: torch.Tensor) -> torch.Tensor:
        layer = layers[index]
        return spartan_gather(hidden, layer.parent_keys, layer.child_keys, layer.child_values, layer.config)

    return apply


def adapter_forward(backbone: Backbone, batch: Encoded, kind: str) -> Callable[[], torch.Tensor]:
    """One inference call of a random 2-class adapter task of ``kind`` (pfeiffer or houlsby) on
    ``batch``; the weights are non-zero, so nothing is skipped."""
    assert kind in ("pfeiffer", "houlsby"), f"not an adapter kind: {kind}"
    model = build_model("houlsby" if kind == "houlsby" else "pfeiffer", backbone, 2).requires_grad_(False)
    for param in model.parameters():
        torch.nn.init.normal_(param, std=0.02)
    predictor = model.predictor(backbone, backbone.pooling)
    return lambda: predictor(batch)


COPIES = ("int8", "bf16", "auto", "compiled")
"""Variant suffixes that run on a second copy of the backbone (a precision mode, auto's choice, or
compiled)."""


def needed_copies(options: BenchOptions) -> list[str]:
    """The copies (of :data:`COPIES`) the chosen variants run on."""
    return [kind for kind in COPIES if any(name.endswith(f"-{kind}") for name in options.variants)]


def _variants(
    backbone: Backbone,
    batch: Encoded,
    options: BenchOptions,
    copies: Mapping[str, Backbone],
) -> dict[str, Callable[[], object]]:
    rows = batch.input_ids.shape[0]
    torch.manual_seed(options.seed)
    tasks = [
        TaskMemory(backbone.hidden_size, backbone.num_layers, 2, options.spartan).requires_grad_(False)
        for _ in range(rows)
    ]
    packed: list[PackedMemory] = [task.pack(backbone.pooling) for task in tasks]
    gather = _gather_memory(tasks[0])
    variants: dict[str, Callable[[], object]] = {
        "bare": lambda: backbone.forward(batch),
        "spartan-dense": lambda: run_batch(backbone, batch, [packed[0]] * rows),
        "spartan-gather": lambda: backbone.forward(batch, gather),
        "mixed-dense": lambda: run_batch(backbone, batch, packed),
    }
    if {"lora-xs", "mixed-lora-xs", "mixed-kinds"} & set(options.variants):
        lora = _lora_xs_tasks(backbone, rows, options.seed)
        kinds = [packed[r] if r % 2 == 0 else lora[r] for r in range(rows)]
        variants["lora-xs"] = functools.partial(run_batch, backbone, batch, [lora[0]] * rows)
        variants["mixed-lora-xs"] = functools.partial(run_batch, backbone, batch, lora)
        variants["mixed-kinds"] = functools.partial(run_batch, backbone, batch, kinds)
    if set(EXIT_VARIANTS) & set(options.variants):
        variants.update(exit_variants(backbone, batch, packed[0]))
    for kind in ("pfeiffer", "houlsby"):
        if kind in options.variants:
            variants[kind] = adapter_forward(backbone, batch, kind)
    for kind, copy in copies.items():
        # As the service keeps them (resident dtype auto): the layers in a bf16 copy's dtype.
        own = (
            packed
            if copy.dtype == torch.float32
            else [t.pack(backbone.pooling, copy.dtype, torch.float32) for t in tasks]
        )
        variants[f"bare-{kind}"] = functools.partial(copy.forward, batch)
        variants[f"spartan-dense-{kind}"] = functools.partial(run_batch, copy, batch, [own[0]] * rows)
        variants[f"mixed-dense-{kind}"] = functools.partial(run_batch, copy, batch, own)
    return variants


def exit_variants(backbone: Backbone, batch: Encoded, plain: PackedMemory) -> dict[str, Callable[[], object]]:
    """The :data:`EXIT_VARIANTS` on ``batch``: ``plain``'s memory with random exits added (two
    classes, so a confidence is at least 0.5 and a 0.5 threshold lets every row leave).
    Each returns run_batch's output, whose ``exit_layers`` say where the rows left."""
    last = backbone.num_layers - 2  # the last layer an exit may follow

    def at(fraction: float) -> int:
        return min(last, max(0, round(fraction * backbone.num_layers) - 1))

    quarter, half = at(0.25), at(0.5)  # 12 layers: after layers 3 and 6 (2 layers: both after 1)

    def with_exits(*layers: int) -> PackedMemory:
        config = ExitConfig(layers=layers, threshold=1.0)
        exits = ExitClassifiers(config, backbone.hidden_size, plain.num_outputs).requires_grad_(False)
        return dataclasses.replace(plain, exits=PackedExits.of(exits))

    three, one = with_exits(*sorted({quarter, half, at(0.75)})), with_exits(half)
    rows = batch.input_ids.shape[0]
    halves = [three if r % 2 == 0 else plain for r in range(rows)]
    return {
        "exits-stay": functools.partial(
            run_batch, backbone, batch, [three] * rows, exit_thresholds=[1.0] * rows
        ),
        "exits-leave-quarter": functools.partial(
            run_batch, backbone, batch, [three] * rows, exit_thresholds=[0.5] * rows
        ),
        "exits-leave-half": functools.partial(
            run_batch, backbone, batch, [one] * rows, exit_thresholds=[0.5] * rows
        ),
        "exits-mixed": functools.partial(
            run_batch,
            backbone,
            batch,
            halves,
            exit_thresholds=[0.5 if r % 2 == 0 else None for r in range(rows)],
        ),
    }


def _lora_xs_tasks(backbone: Backbone, count: int, seed: int) -> list[PackedMemory]:
    """``count`` random rank-16 LoRA-XS tasks, packed (the backbone's factors prepared first)."""
    config = LoraXSConfig()
    prepare_factors(backbone, config.rank, default_cache_dir())
    generator = torch.Generator().manual_seed(seed)
    shapes = lora_xs_shapes(backbone.num_layers, config) | head_shapes(backbone.hidden_size, 2)
    return [
        pack_tensors(
            {name: 0.02 * torch.randn(shape, generator=generator) for name, shape in shapes.items()},
            config,
            backbone.num_layers,
            backbone.pooling,
        )
        for _ in range(count)
    ]


def _memory_ops(
    packed: list[tuple[torch.Tensor, torch.Tensor]], config: SpartanConfig, router: Router | None
) -> dict[str, Callable[[torch.Tensor], None]]:
    """The dense op in place on a layer output: one memory, or one per row (incl. the engine's stack)."""

    def shared(hidden: torch.Tensor) -> None:
        spartan_dense(hidden, packed[0][0], packed[0][1], config, inplace=True, router=router)

    def per_row(hidden: torch.Tensor) -> None:
        keys = torch.stack([k for k, _ in packed])
        values = torch.stack([v for _, v in packed])
        spartan_dense(hidden, keys, values, config, inplace=True, router=router)

    return {"shared": shared, "per_row": per_row}


def _adapter_ops(hidden_size: int, dtype: torch.dtype) -> dict[str, Callable[[torch.Tensor], object]]:
    """One bottleneck-64 adapter (random weights) on a layer output: Pfeiffer's and Houlsby's."""
    ops: dict[str, Callable[[torch.Tensor], object]] = {}
    for name, act in (("adapter-relu", torch.nn.ReLU()), ("adapter-swish", torch.nn.SiLU())):
        adapter = Adapter(hidden_size, 64, act).requires_grad_(False).to(dtype)
        torch.nn.init.normal_(adapter.up.weight, std=0.02)
        ops[name] = adapter.forward
    return ops


def layer_bench(
    backbone: Backbone, batch_size: int, seq: int, rounds: int, config: SpartanConfig, index: int = 0
) -> dict[str, object]:
    """Encoder layer ``index`` bare vs followed by the dense memory (one memory; one per row), interleaved;
    plus the cost of one adapter alone, from which the adapter baselines' per-layer ratios follow.

    A layer at batch 32 takes a few hundred milliseconds, so many interleaved rounds fit in the
    time of a few full forwards and the ratios resist a noisy host far better.
    """
    torch.manual_seed(0)
    layer = backbone.layer(index)
    x = torch.nn.functional.layer_norm(
        torch.randn(batch_size, seq, backbone.hidden_size), (backbone.hidden_size,)
    ).to(backbone.dtype)
    memories = [SpartanLayer(backbone.hidden_size, config).requires_grad_(False) for _ in range(batch_size)]
    packed = [(k.to(backbone.dtype), v.to(backbone.dtype)) for k, v in (m.packed() for m in memories)]

    def run_layer() -> torch.Tensor:
        out = layer(x)
        hidden: torch.Tensor = out[0] if isinstance(out, tuple) else out
        return hidden

    router = backbone.routing.router(config, backbone.dtype) if backbone.routing else None
    ops = _memory_ops(packed, config, router)
    times = interleaved(
        {
            "bare": run_layer,
            "spartan-dense": lambda: ops["shared"](run_layer()),
            "mixed-dense": lambda: ops["per_row"](run_layer()),
        },
        rounds,
    )
    best = {name: min(ts) for name, ts in times.items()}
    # The op alone takes milliseconds: hundreds of repeats cost little and their minimum is steady.
    hidden = run_layer()
    adapters = _adapter_ops(backbone.hidden_size, backbone.dtype)
    alone = interleaved(
        {name: functools.partial(op, hidden) for name, op in {**ops, **adapters}.items()}, 10 * rounds
    )
    op = {name: min(ts) for name, ts in alone.items()}
    return {
        "precision": backbone.precision,
        "routing": "fused" if router else "eager",
        "layer_index": index,
        "milliseconds_best": {name: round(1000 * t, 3) for name, t in best.items()},
        "milliseconds_median": {name: round(1000 * statistics.median(ts), 3) for name, ts in times.items()},
        "memory_op_alone_ms": {name: round(1000 * t, 3) for name, t in op.items()},
        "ratios": {
            "spartan-dense/bare": {
                "best": round(best["bare"] / best["spartan-dense"], 4),
                "median_paired": median_ratio(times["bare"], times["spartan-dense"]),
                "from_op_alone": round(best["bare"] / (best["bare"] + op["shared"]), 4),
            },
            "mixed-dense/spartan-dense": {
                "best": round(best["spartan-dense"] / best["mixed-dense"], 4),
                "median_paired": median_ratio(times["spartan-dense"], times["mixed-dense"]),
                "from_op_alone": round((best["bare"] + op["shared"]) / (best["bare"] + op["per_row"]), 4),
            },
            # Pfeiffer: one ReLU adapter per layer; Houlsby: two swish adapters per layer.
            "pfeiffer/bare": {"from_op_alone": round(best["bare"] / (best["bare"] + op["adapter-relu"]), 4)},
            "houlsby/bare": {
                "from_op_alone": round(best["bare"] / (best["bare"] + 2 * op["adapter-swish"]), 4)
            },
        },
    }


def run_bench(
    backbone: Backbone,
    options: BenchOptions,
    progress: Callable[[str], None] = print,
    copies: Mapping[str, Backbone] | None = None,
) -> dict[str, object]:
    """Measure every variant at every sequence length; returns the JSON-ready report.
    ``copies``: per suffix of :func:`needed_copies` the backbone's copy those variants run on: in
    int8 or bf16 mode (memories.precision), in auto's mode, or compiled for (batch size, every
    sequence length)."""
    copies = dict(copies or {})
    for kind in needed_copies(options):
        copy = copies.get(kind)
        ready = copy is not None and (
            copy.compiled if kind == "compiled" else kind == "auto" or copy.precision == kind
        )
        if not ready:
            raise ConfigError(f"the *-{kind} variants need the backbone's {kind} copy")
    torch.set_num_threads(options.threads)
    results: dict[str, object] = {}
    layers: dict[str, object] = {}
    for seq in options.seq_lengths:
        batch = random_batch(backbone, options.batch_size, seq, options.seed)
        every = _variants(backbone, batch, options, copies)
        variants = {k: v for k, v in every.items() if k in options.variants}

        def report_round(r: int, times: dict[str, list[float]], seq: int = seq) -> None:
            progress(
                f"seq {seq} round {r + 1}/{options.rounds}: "
                + ", ".join(f"{name} {ts[-1]:.2f}s" for name, ts in times.items())
            )

        times = interleaved(variants, options.rounds, report_round)
        per_variant = {
            name: {
                "best_inst_per_min": round(60.0 * options.batch_size / min(ts), 1),
                "median_inst_per_min": round(60.0 * options.batch_size / statistics.median(ts), 1),
                "seconds": [round(t, 4) for t in ts],
            }
            for name, ts in times.items()
        }
        pairs = [(name, "bare") for name in times if name != "bare" and "bare" in times]
        suffixed = [(f"spartan-dense-{k}", f"bare-{k}") for k in COPIES]
        suffixed += [(f"mixed-dense-{k}", f"spartan-dense-{k}") for k in COPIES]
        for a, b in [
            ("mixed-dense", "spartan-dense"),
            ("mixed-lora-xs", "lora-xs"),
            ("mixed-kinds", "mixed-dense"),
            ("lora-xs", "spartan-dense"),
            *((name, "spartan-dense") for name in EXIT_VARIANTS),
            *suffixed,
            ("spartan-dense-compiled", "spartan-dense"),
        ]:
            if {a, b} <= set(times):
                pairs.append((a, b))
        ratios = {
            f"{a}/{b}": {
                "best": round(min(times[b]) / min(times[a]), 4),
                "median_paired": median_ratio(times[b], times[a]),
            }
            for a, b in pairs
        }
        results[str(seq)] = {"variants": per_variant, "ratios": ratios}
        if options.layer_rounds:
            progress(f"seq {seq}: per-layer comparison, {options.layer_rounds} interleaved rounds")
            layers[str(seq)] = layer_bench(
                backbone, options.batch_size, seq, options.layer_rounds, options.spartan
            )
            if "int8" in copies:
                # The first layer int8 mode quantises (memories.precision keeps FP32_LAYERS in fp32).
                int8 = copies["int8"]
                index = next((i for i in range(int8.num_layers) if i not in FP32_LAYERS), 0)
                layers[f"{seq}-int8"] = layer_bench(
                    int8, options.batch_size, seq, options.layer_rounds, options.spartan, index
                )
            if "bf16" in copies:
                layers[f"{seq}-bf16"] = layer_bench(
                    copies["bf16"], options.batch_size, seq, options.layer_rounds, options.spartan
                )
    return {
        "backbone": backbone.name,
        "batch_size": options.batch_size,
        "threads": options.threads,
        "rounds": options.rounds,
        "estimates": "best = from each variant's fastest round; median_paired = median of per-round ratios",
        "spartan": {
            "num_parents": options.spartan.num_parents,
            "num_children": options.spartan.num_children,
            "top_k": options.spartan.top_k,
            "child_temperature": options.spartan.child_temperature,
        },
        "machine": machine(),
        "results": results,
        "layer": layers,
    }


def format_table(report: dict[str, object]) -> str:
    """A Markdown table: inst/min per variant and sequence length, with ratios (best, median paired)."""
    results = report["results"]
    assert isinstance(results, dict)
    lines = [
        "| seq | variant | inst/min (best) | inst/min (median) | ratio (best) | ratio (median paired) |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for seq, result in results.items():
        for name, numbers in result["variants"].items():
            ratio = result["ratios"].get(
                f"{name}/bare", {"best": 1.0, "median_paired": 1.0} if name == "bare" else None
            )
            best, paired = (f"{ratio['best']:.4f}", f"{ratio['median_paired']:.4f}") if ratio else ("", "")
            lines.append(
                f"| {seq} | {name} | {numbers['best_inst_per_min']} | {numbers['median_inst_per_min']} "
                f"| {best} | {paired} |"
            )
        for pair, ratio in result["ratios"].items():
            if not pair.endswith("/bare"):  # relative to another variant than bare fp32
                best, paired = ratio["best"], ratio["median_paired"]
                lines.append(f"| {seq} | {pair.replace('/', ' / ')} | | | {best:.4f} | {paired:.4f} |")
    layer_results = report.get("layer") or {}
    assert isinstance(layer_results, dict)
    if layer_results:
        lines += [
            "",
            "| seq (precision) | layer: bare ms | memory op alone ms | per-row op ms | adapter ms "
            "| memory / bare | mixed / single | pfeiffer / bare | houlsby / bare |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for seq, layer in layer_results.items():
            ms, op, ratio = layer["milliseconds_best"], layer["memory_op_alone_ms"], layer["ratios"]
            estimates = [
                ratio[name]["from_op_alone"]
                for name in (
                    "spartan-dense/bare",
                    "mixed-dense/spartan-dense",
                    "pfeiffer/bare",
                    "houlsby/bare",
                )
            ]
            times = f"{ms['bare']} | {op['shared']} | {op['per_row']} | {op['adapter-relu']}"
            lines.append(f"| {seq} | {times} | " + " | ".join(f"{e:.4f}" for e in estimates) + " |")
    return "\n".join(lines)
