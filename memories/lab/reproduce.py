"""Reproduce the paper's tables: every method on every task (one resumable grid), storage, training speed.

:func:`run_grid` trains each (task, method, seed) cell with :func:`~memories.train.train` under
one budget (steps, batch, sequence length) and writes one JSON per cell to the output folder;
a cell whose JSON exists is skipped, so an interrupted grid resumes where it stopped.
:func:`summarise` turns the cells into the table (``table.json``, ``table.md``, ``table.png``):
the task's GLUE metric per method (mean over seeds), the average over tasks, the training
throughput per method, and the paper's scores of the same tasks beside ours. Checkpoints go to
a separate folder (they are large and not committed).
:func:`storage_table` measures what each method stores per task (the paper's appendix E), and
:func:`train_speed` each method's fine-tuning throughput, all methods interleaved in one process.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memories.atomic import atomic_write, write_figure, write_json
from memories.backbone import Backbone, Encoded
from memories.config import DEFAULT_LR, MEMORY_KINDS, METHODS, Method, RoutedFFNConfig, SpartanConfig
from memories.data import TaskSpec
from memories.errors import ConfigError
from memories.lab.baselines import build_model
from memories.lab.bench import random_batch
from memories.lab.host import machine
from memories.lab.timing import interleaved
from memories.memfile import check_backbone, parse_memory
from memories.methods import SavedTask, TaskModel, trainable_parameters
from memories.routed_ffn import RoutedFFNs
from memories.train import TrainOptions, train


@dataclass(frozen=True)
class GridOptions:
    """One budget for every cell of the grid."""

    data: Path
    out: Path  # one JSON per cell, and the table
    checkpoints: Path
    tasks: tuple[str, ...]
    methods: tuple[Method, ...] = METHODS
    seeds: tuple[int, ...] = (1,)
    steps: int = 1000
    few_shot: bool = False
    batch_size: int = 16
    max_seq_length: int = 64
    eval_every: int = 500
    max_dev_examples: int | None = None

    def __post_init__(self) -> None:
        if not self.tasks or not self.methods or not self.seeds:
            raise ConfigError("a grid needs at least one task, method and seed")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; choose from {METHODS}")

    def cells(self) -> list[tuple[str, Method, int]]:
        return [(t, m, s) for t in self.tasks for s in self.seeds for m in self.methods]


def cell_path(out: Path, task: str, method: str, seed: int) -> Path:
    return out / f"{task}-{method}-s{seed}.json"


def run_grid(
    options: GridOptions, backbone: Backbone, command: str, log: Callable[[str], None] = print
) -> list[Path]:
    """Train every missing cell; returns the JSON paths of all cells."""
    cells = options.cells()
    paths = []
    for n, (task, method, seed) in enumerate(cells, start=1):
        path = cell_path(options.out, task, method, seed)
        paths.append(path)
        if path.exists():
            log(f"[{n}/{len(cells)}] {task} {method} seed {seed}: done before, skipped")
            continue
        log(f"[{n}/{len(cells)}] {task} {method} seed {seed}")
        train_options = TrainOptions(
            task=task,
            data=options.data,
            out=options.checkpoints / f"{path.stem}.safetensors",
            steps=options.steps,
            few_shot=options.few_shot,
            method=method,
            batch_size=options.batch_size,
            seed=seed,
            max_seq_length=options.max_seq_length,
            eval_every=options.eval_every,
            max_dev_examples=options.max_dev_examples,
        )
        result = train(train_options, backbone, log, command, build_model)
        cell = {
            "task": task,
            "method": method,
            "seed": seed,
            "backbone": backbone.name,
            "few_shot": options.few_shot,
            "steps": result.steps,
            "best_step": result.best_step,
            "batch_size": options.batch_size,
            "max_seq_length": options.max_seq_length,
            "lr": train_options.learning_rate,
            "dev": result.best.metrics,
            "seconds": round(result.seconds, 1),
            "train_examples_per_minute": round(result.train_examples_per_minute, 1),
            "trainable_parameters": result.trainable_parameters,
            "file_bytes": result.file_bytes,
            "command": command,
            "machine": machine(),
        }
        write_json(path, cell)
    return paths


def summarise(out: Path, methods: tuple[Method, ...] = METHODS) -> dict[str, Any]:
    """The table of every cell JSON in ``out``: score (mean over seeds) per task and method."""
    cells = [json.loads(p.read_text()) for p in sorted(out.glob("*-s*.json"))]
    if not cells:
        raise ConfigError(f"no grid cells in {out}")
    present = [m for m in methods if any(c["method"] == m for c in cells)]
    tasks = sorted({c["task"] for c in cells})
    scores: dict[str, dict[str, float]] = {}
    seeds: dict[str, dict[str, int]] = {}
    for task in tasks:
        scores[task], seeds[task] = {}, {}
        for method in present:
            values = [c["dev"]["score"] for c in cells if c["task"] == task and c["method"] == method]
            if values:
                scores[task][method] = statistics.fmean(values)
                seeds[task][method] = len(values)
    complete = [t for t in tasks if all(m in scores[t] for m in present)]
    average = {m: statistics.fmean(scores[t][m] for t in complete) for m in present} if complete else {}
    speed = {
        m: statistics.median(c["train_examples_per_minute"] for c in cells if c["method"] == m)
        for m in present
    }
    budget = {k: cells[0][k] for k in ("backbone", "few_shot", "steps", "batch_size", "max_seq_length")}
    return {
        "methods": present,
        "tasks": tasks,
        "score": scores,
        "seeds": seeds,
        "average_over": complete,
        "average": average,
        "train_examples_per_minute": speed,
        "cells": len(cells),
        "budget": budget,
        "paper": paper_columns(budget["few_shot"], present, tasks, complete),
    }


# The paper's dev scores (x 100; RoBERTa-base, mean of 3 seeds; MNLI = matched dev set; QQP scored
# by accuracy, the other tasks by GLUE's metric): Table 1 trains on the full data, Table 3 on 200.
PAPER_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")
_PAPER_TABLE1 = {
    "full": (60.5, 94.3, 88.2, 91.3, 90.7, 87.5, 92.4, 75.3, 47.9),
    "pfeiffer": (59.7, 94.2, 88.0, 89.5, 90.3, 86.8, 92.4, 76.8, 50.7),
    "houlsby": (59.1, 94.3, 86.9, 89.9, 90.5, 87.1, 92.6, 76.8, 51.6),
    "spartan": (60.5, 94.4, 89.2, 89.6, 90.3, 86.5, 91.9, 75.0, 52.1),
}
_PAPER_TABLE3 = {
    "full": (34.6, 87.3, 77.7, 71.8, 74.4, 57.7, 77.8, 53.9, 34.7),
    "pfeiffer": (39.7, 87.5, 78.6, 74.3, 79.8, 54.4, 76.1, 52.6, 39.9),
    "houlsby": (37.7, 87.1, 77.9, 75.1, 75.1, 55.2, 75.8, 51.0, 38.0),
    "spartan": (38.3, 87.6, 78.7, 71.8, 79.0, 52.1, 75.4, 49.7, 42.3),
}


def paper_columns(
    few_shot: bool, present: list[Method], tasks: list[str], complete: list[str]
) -> dict[str, Any]:
    """The paper's scores (as fractions, like ours) for the methods and tasks in our table, and
    their average over the tasks our average covers, so the two averages compare like with like."""
    paper = _PAPER_TABLE3 if few_shot else _PAPER_TABLE1
    methods = [m for m in present if m in paper]
    score = {
        t: {m: paper[m][PAPER_TASKS.index(t)] / 100 for m in methods} if t in PAPER_TASKS else {}
        for t in tasks
    }
    known = bool(complete) and all(score[t] for t in complete)
    return {
        "source": "Table 3, 200 examples" if few_shot else "Table 1, full data",
        "methods": methods,
        "score": score,
        "average": {m: statistics.fmean(score[t][m] for t in complete) for m in methods} if known else {},
    }


def format_markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: tasks as rows, methods as columns (scores x 100), and the paper's
    scores of the same tasks in a last column."""
    methods: list[str] = table["methods"]
    paper: dict[str, Any] = table["paper"]
    heading = f"paper ({paper['source']}): " + " / ".join(paper["methods"])
    lines = [
        "| task | " + " | ".join(methods) + f" | {heading} |",
        "|---|" + "---:|" * len(methods) + "---|",
    ]
    for task in table["tasks"]:
        row = [_cell(table, task, m) for m in methods]
        lines.append(f"| {task} | " + " | ".join(row) + f" | {_paper_cell(paper['score'][task])} |")
    if table["average"]:
        lines.append(
            f"| **average** ({len(table['average_over'])} tasks) | "
            + " | ".join(f"**{100 * table['average'][m]:.1f}**" for m in methods)
            + f" | {_paper_cell(paper['average'])} |"
        )
    lines.append(
        "| train inst/min (median) | "
        + " | ".join(f"{table['train_examples_per_minute'][m]:.0f}" for m in methods)
        + " | |"
    )
    return "\n".join(lines) + "\n"


def _paper_cell(scores: dict[str, float]) -> str:
    return " / ".join(f"{100 * v:.1f}" for v in scores.values()) if scores else "-"


def _cell(table: dict[str, Any], task: str, method: str) -> str:
    score = table["score"][task].get(method)
    if score is None:
        return "-"
    runs = table["seeds"][task][method]
    return f"{100 * score:.1f}" + (f" ({runs})" if runs > 1 else "")


def plot_table(table: dict[str, Any], title: str, path: Path) -> None:
    """Grouped bars: one group per task (and the average), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: list[str] = table["methods"]
    rows = [(t, table["score"][t]) for t in table["tasks"]]
    if table["average"]:
        rows.append(("average", table["average"]))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows)), 4.0))
    for i, method in enumerate(methods):
        xs = [n + i * width for n in range(len(rows))]
        ax.bar(xs, [100 * scores.get(method, float("nan")) for _, scores in rows], width, label=method)
    ax.set_xticks([n + 0.4 - width / 2 for n in range(len(rows))], [name for name, _ in rows])
    ax.set_ylabel("dev score (task's GLUE metric) x 100")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=len(methods))
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    plt.close(fig)


def write_table(out: Path, title: str) -> dict[str, Any]:
    """Summarise ``out`` into ``table.json``, ``table.md`` and ``table.png`` beside the cells."""
    table = summarise(out)
    write_json(out / "table.json", table)
    atomic_write(out / "table.md", format_markdown(table).encode())
    plot_table(table, title, out / "table.png")
    return table


# The paper's appendix E: parameters (millions) and storage (GB) for the nine GLUE tasks.
PAPER_STORAGE_T9 = {
    "full": {"parameters_m": 1107.0, "gb": 4.43},
    "houlsby": {"parameters_m": 144.23, "gb": 0.58},
    "pfeiffer": {"parameters_m": 133.62, "gb": 0.53},
    "spartan": {"parameters_m": 133.62, "gb": 0.53},
}


def _served_costs(data: bytes, backbone: Backbone, rounds: int = 20) -> dict[str, Any]:
    """A memory file as a server holds it (resident as stored) and the time to load it."""
    seconds, packed = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        memfile = parse_memory(data)
        check_backbone(memfile.metadata, backbone)
        packed = memfile.to_packed("auto")
        seconds.append(time.perf_counter() - started)
    assert packed is not None, "at least one round"
    resident = packed.nbytes()
    return {
        "resident_bytes_per_task": resident,
        "tasks_per_gib_resident": int(2**30 // resident),
        "cold_load_ms_median": round(1000 * statistics.median(seconds), 2),
    }


def storage_table(
    backbone: Backbone, tasks: int, scratch: Path, num_outputs: int = 2, spartan: SpartanConfig | None = None
) -> dict[str, Any]:
    """Measured bytes per task of every method (fp32 and fp16 files of a fresh 2-class model)
    and for ``tasks`` tasks (backbone once + a file per task; full fine-tuning: a file per task),
    beside the paper's formula N + 2T(P + PC)dL and its appendix E numbers. For the served
    kinds (SPARTAN, LoRA-XS) also what a server keeps and pays per task: resident bytes, tasks
    per GiB of cache, and the cold-load time of a file (parse, validate, pack; median of 20)."""
    from safetensors.torch import save_file

    config = spartan or SpartanConfig()
    scratch.mkdir(parents=True, exist_ok=True)
    backbone_file = scratch / "backbone.safetensors"
    save_file(
        {n: p.detach().contiguous() for n, p in backbone.model.state_dict().items()}, str(backbone_file)
    )
    backbone_bytes = backbone_file.stat().st_size
    backbone_file.unlink()
    n_backbone = sum(p.numel() for p in backbone.model.parameters())
    spec = TaskSpec("storage", "classification", tuple(f"c{i}" for i in range(num_outputs)), "accuracy")
    rows: dict[str, Any] = {}
    for method in METHODS:
        model = build_model(method, backbone, num_outputs, config)
        row: dict[str, Any] = {"parameters": trainable_parameters(model)}
        for dtype in ("float32", "float16"):
            path = scratch / f"{method}-{dtype}.safetensors"
            size = model.save(path, SavedTask(backbone, spec, backbone.pooling, 128, {}), dtype)
            shared = 0 if method == "full" else backbone_bytes
            row[dtype] = {"bytes_per_task": size, f"bytes_for_{tasks}_tasks": shared + tasks * size}
            if method in MEMORY_KINDS:
                row[dtype] |= _served_costs(path.read_bytes(), backbone)
            path.unlink()
        shared_params = 0 if method == "full" else n_backbone
        row[f"parameters_for_{tasks}_tasks"] = shared_params + tasks * row["parameters"]
        rows[method] = row
    d, layers = backbone.hidden_size, backbone.num_layers
    p, c = config.num_parents, config.num_children
    return {
        "backbone": backbone.name,
        "backbone_parameters": n_backbone,
        "backbone_file_bytes": backbone_bytes,
        "tasks": tasks,
        "spartan": {"num_parents": p, "num_children": c, "top_k": config.top_k},
        "methods": rows,
        "paper_formula": {
            "expression": "N + 2T(P + PC)dL",
            "per_task": 2 * (p + p * c) * d * layers,
            f"for_{tasks}_tasks": n_backbone + 2 * tasks * (p + p * c) * d * layers,
        },
        "paper_appendix_e_t9": PAPER_STORAGE_T9,
        "machine": machine(),
    }


def train_speed(
    backbone: Backbone,
    methods: tuple[Method, ...] = METHODS,
    batch_size: int = 16,
    seq_length: int = 64,
    rounds: int = 10,
    progress: Callable[[str], None] = print,
    routed: Sequence[RoutedFFNConfig] = (),
) -> dict[str, Any]:
    """Fine-tuning throughput of every method, measured in one process on one fixed batch:
    one training step (forward, backward, clipping, AdamW) of each method per round, the order
    rotating every round, so the methods share whatever the host does. Returns training
    instances per minute (best and median round) and ratios to SPARTAN's. Each of ``routed``
    adds SPARTAN with that routed FFN (memories.routed_ffn), as ``spartan+routed-E/K``."""
    batch = random_batch(backbone, batch_size, seq_length, seed=0)
    labels = torch.arange(batch_size) % 2
    steps: dict[str, Callable[[], object]] = {}
    for method in methods:
        torch.manual_seed(0)
        model = build_model(method, backbone, 2)
        steps[method] = _train_step(model, backbone, batch, labels, DEFAULT_LR[method])
    for config in routed:  # blocks clustered on the timed batch: random ids, so only speed counts
        torch.manual_seed(0)
        model = build_model("spartan", backbone, 2)
        step = _train_step(model, backbone, batch, labels, DEFAULT_LR["spartan"])
        ffns = RoutedFFNs(backbone, config, batch)
        steps[f"spartan+routed-{config.experts}/{config.active}"] = functools.partial(_routed, ffns, step)

    def report_round(r: int, times: dict[str, list[float]]) -> None:
        progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {ts[-1]:.2f}s" for n, ts in times.items()))

    times = interleaved(steps, rounds, report_round, grad=True)
    best = {m: 60.0 * batch_size / min(ts) for m, ts in times.items()}
    median = {m: 60.0 * batch_size / statistics.median(ts) for m, ts in times.items()}
    reference = "spartan" if "spartan" in times else methods[0]
    return {
        "backbone": backbone.name,
        "batch_size": batch_size,
        "seq_length": seq_length,
        "rounds": rounds,
        "threads": torch.get_num_threads(),
        "train_inst_per_min_best": {m: round(v, 1) for m, v in best.items()},
        "train_inst_per_min_median": {m: round(v, 1) for m, v in median.items()},
        f"over_{reference}_best": {m: round(best[m] / best[reference], 4) for m in best},
        "seconds": {m: [round(t, 4) for t in ts] for m, ts in times.items()},
        "machine": machine(),
    }


def _routed(ffns: RoutedFFNs, step: Callable[[], None]) -> None:
    with ffns.active():
        step()


def _train_step(
    model: TaskModel, backbone: Backbone, batch: Encoded, labels: torch.Tensor, lr: float
) -> Callable[[], None]:
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=lr)
    model.train()

    def step() -> None:
        logits = model(backbone, batch, backbone.pooling)  # [B, 2]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()

    return step
