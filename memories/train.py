"""Train a task on a frozen backbone: a SPARTAN memory, or one of the paper's baselines.

One loop for every method (:mod:`memories.methods`, :mod:`memories.lab.baselines`; ``--method``),
so a comparison differs only in what is trained: AdamW at the method's paper learning rate
(SPARTAN 1e-3, adapters 1e-4, full fine-tuning 2e-5) unless one is given, batch 16, a linear
learning-rate decay, gradient clipping at 1.0. Training runs for a number of epochs or of steps;
the few-shot mode trains on ``fewshot200.jsonl`` for 1000 steps (the paper's Table 2). The dev
split is evaluated every ``eval_every`` steps and at the end; each new best checkpoint is written
atomically to the output path at once, so an interrupted run still leaves its best memory behind.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from pydantic_core import to_jsonable_python
from tqdm import tqdm

from memories.backbone import Backbone, Pooling
from memories.config import (
    DEFAULT_LR,
    ExitConfig,
    LoraXSConfig,
    Method,
    RoutedFFNConfig,
    SpartanConfig,
    TrainPrecision,
)
from memories.data import Example, TaskSpec, read_examples, split_path, targets, task_spec
from memories.errors import ConfigError
from memories.evaluate import Evaluation, evaluate, tokenize_examples
from memories.memfile import FileDType, read_memory
from memories.methods import (
    ModelBuilder,
    SavedTask,
    SpartanModel,
    TaskModel,
    build_served,
    trainable_parameters,
)
from memories.routed_ffn import RoutedFFNs

FEW_SHOT_SPLIT = "fewshot200"
FEW_SHOT_STEPS = 1000


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides a training run (recorded in the memory file's summary)."""

    task: str
    data: Path
    out: Path
    epochs: float | None = None
    steps: int | None = None
    few_shot: bool = False
    train_split: str = "train"
    dev_split: str = "dev"
    max_train_examples: int | None = None
    max_dev_examples: int | None = None
    method: Method = "spartan"
    batch_size: int = 16
    lr: float | None = None  # None: the method's paper learning rate
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    seed: int = 42
    max_seq_length: int = 128
    eval_every: int = 500
    eval_batch_size: int = 64
    pooling: Pooling | None = None
    spartan: SpartanConfig = field(default_factory=SpartanConfig)
    bottleneck: int = 64  # adapters only
    lora_xs: LoraXSConfig = field(default_factory=LoraXSConfig)  # lora-xs only
    dtype: FileDType = "float32"
    precision: TrainPrecision = "fp32"  # bf16: forward passes under bf16 autocast (weights stay fp32)
    exits: ExitConfig | None = None  # early exits trained beside the memory (memories.exits)
    exits_on: Path | None = None  # train only the exits, on this trained memory (kept frozen)
    routed_ffn: RoutedFFNConfig | None = None  # SPT's routed FFN in training steps (evaluation stays dense)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.eval_every < 1 or (self.lr is not None and self.lr <= 0):
            raise ConfigError("batch_size and eval_every must be >= 1 and lr > 0")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.exits is not None and self.method != "spartan":
            raise ConfigError(f"early exits are trained with a SPARTAN memory, not with {self.method!r}")
        if self.exits_on is not None and self.exits is None:
            raise ConfigError("exits_on trains exits on a memory: say which exit layers (--exits)")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass(frozen=True)
class TrainResult:
    best: Evaluation
    best_step: int
    steps: int
    seconds: float
    train_examples_per_minute: float
    out: Path
    method: Method
    trainable_parameters: int
    file_bytes: int


def _subsample(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    if limit is None or len(examples) <= limit:
        return examples
    return random.Random(seed).sample(examples, limit)


def _total_steps(options: TrainOptions, train_size: int) -> int:
    if options.steps is not None:
        return options.steps
    if options.few_shot:
        return FEW_SHOT_STEPS
    epochs = options.epochs if options.epochs is not None else 3.0
    return max(1, math.ceil(epochs * train_size / options.batch_size))


def _batches(size: int, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch: the indices 0..size-1 shuffled and cut into batches."""
    order = torch.randperm(size, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, size, batch_size)]


def train(
    options: TrainOptions,
    backbone: Backbone,
    log: Callable[[str], None] = print,
    command: str = "",
    build: ModelBuilder = build_served,
) -> TrainResult:
    """Run one training; returns the best dev evaluation. The best memory is at ``options.out``.

    ``build`` makes the model of ``options.method``: the served methods by default, every method
    with memories.lab.baselines.build_model."""
    base = read_memory(options.exits_on) if options.exits_on is not None else None
    if base is not None:  # the exits read the memory's states: its pooling and its input length
        options = replace(options, pooling=base.metadata.pooling, max_seq_length=base.metadata.max_seq_length)
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    train_split = FEW_SHOT_SPLIT if options.few_shot else options.train_split
    train_path = split_path(options.data, options.task, train_split)
    dev_path = split_path(options.data, options.task, options.dev_split)
    train_set = _subsample(read_examples(train_path), options.max_train_examples, options.seed)
    dev_set = _subsample(read_examples(dev_path), options.max_dev_examples, options.seed)
    spec: TaskSpec = task_spec(options.task, train_set)
    train_targets = targets(spec, train_set, str(train_path))
    targets(spec, dev_set, str(dev_path))  # fail before training, not after
    pooling = options.pooling or backbone.pooling
    regression = spec.task_type == "regression"

    if base is not None:
        if base.metadata.labels != list(spec.labels):
            raise ConfigError(
                f"{options.exits_on} predicts {base.metadata.labels}, the data {list(spec.labels)}"
            )
        assert options.exits is not None, "checked by TrainOptions"
        task: TaskModel = SpartanModel.exits_on(backbone, base, options.exits)
    elif options.exits is not None:
        task = SpartanModel(backbone, len(spec.labels) or 1, options.spartan, options.exits)
    else:
        task = build(
            options.method,
            backbone,
            len(spec.labels) or 1,
            options.spartan,
            options.bottleneck,
            options.lora_xs,
        )
    routed = (
        RoutedFFNs(
            backbone,
            options.routed_ffn,
            tokenize_examples(backbone, train_set[:ROUTED_SAMPLE], options.max_seq_length),
        )
        if options.routed_ffn is not None
        else None
    )
    trained = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=options.learning_rate, weight_decay=options.weight_decay)
    total = _total_steps(options, len(train_set))
    warmup = int(options.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            (step + 1) / max(1, warmup)
            if step < warmup
            else max(0.0, (total - step) / max(1, total - warmup))
        ),
    )
    loss_fn: torch.nn.Module = torch.nn.MSELoss() if regression else torch.nn.CrossEntropyLoss()
    log(
        f"training {spec.name} ({spec.task_type}, {len(train_set)} train / {len(dev_set)} dev) on "
        f"{backbone.name}: {options.method} ({trainable_parameters(task):,} parameters), {total} steps of "
        f"{options.batch_size}, lr {options.learning_rate}"
        + (f", memory {options.spartan}" if options.method == "spartan" else "")
        + (f", {options.lora_xs}" if options.method == "lora-xs" else "")
        + (f", routed FFN in training {options.routed_ffn}" if options.routed_ffn is not None else "")
    )

    best: Evaluation | None = None
    best_step = 0
    file_bytes = 0
    pending: list[list[int]] = []
    seen = 0
    loss_ema: float | None = None
    started = time.perf_counter()
    train_seconds = 0.0

    def run_eval(step: int) -> None:
        nonlocal best, best_step, file_bytes
        result = evaluate(
            backbone,
            task.predictor(backbone, pooling),
            spec,
            dev_set,
            options.max_seq_length,
            options.eval_batch_size,
        )
        improved = best is None or result.metrics["score"] > best.metrics["score"]
        log(f"step {step}: dev {_fmt(result.metrics)}" + ("  (best, saved)" if improved else ""))
        if improved:
            best, best_step = result, step
            file_bytes = _save(
                options, backbone, task, spec, pooling, step, total, result, seen, train_seconds, command
            )

    task.train()
    bar = tqdm(total=total, desc=f"train {spec.name}", unit="step", file=sys.stderr, mininterval=2.0)
    for step in range(1, total + 1):
        if not pending:
            pending = _batches(len(train_set), options.batch_size, generator)
        rows = pending.pop(0)
        tick = time.perf_counter()
        batch = tokenize_examples(backbone, [train_set[i] for i in rows], options.max_seq_length)
        with (
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=options.precision == "bf16"),
            routed.active() if routed is not None else contextlib.nullcontext(),
        ):
            outputs = [
                o.float() for o in task.training_outputs(backbone, batch, pooling)
            ]  # each [B, outputs]
        if regression:
            gold = torch.tensor([train_targets[i] for i in rows], dtype=torch.float32)
            loss = torch.stack([loss_fn(o[:, 0], gold) for o in outputs]).sum()
        else:
            gold = torch.tensor([train_targets[i] for i in rows])
            loss = torch.stack([loss_fn(o, gold) for o in outputs]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in task.clip_groups():
            torch.nn.utils.clip_grad_norm_(group, 1.0)
        optimizer.step()
        scheduler.step()
        train_seconds += time.perf_counter() - tick
        seen += len(rows)
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        bar.update(1)
        bar.set_postfix(
            loss=f"{loss_ema:.4f}", best=f"{best.metrics['score']:.4f}" if best else "-", refresh=False
        )
        if step % options.eval_every == 0 or step == total:
            run_eval(step)
    bar.close()
    assert best is not None, "the final step always evaluates"
    return TrainResult(
        best,
        best_step,
        total,
        time.perf_counter() - started,
        60.0 * seen / max(train_seconds, 1e-9),
        options.out,
        options.method,
        trainable_parameters(task),
        file_bytes,
    )


ROUTED_SAMPLE = 256
"""Training examples the routed FFN's blocks are clustered on."""


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())


def _save(
    options: TrainOptions,
    backbone: Backbone,
    task: TaskModel,
    spec: TaskSpec,
    pooling: Pooling,
    step: int,
    total: int,
    result: Evaluation,
    seen: int,
    train_seconds: float,
    command: str,
) -> int:
    summary = {
        "method": options.method,
        "trainable_parameters": trainable_parameters(task),
        "lr": options.learning_rate,
        "data": options.data.name,
        "train_split": FEW_SHOT_SPLIT if options.few_shot else options.train_split,
        "dev_split": options.dev_split,
        "step": step,
        "total_steps": total,
        "examples_seen": seen,
        "train_examples_per_minute": round(60.0 * seen / max(train_seconds, 1e-9), 1),
        "dev_metrics": {k: round(v, 6) for k, v in result.metrics.items()},
        "options": to_jsonable_python(asdict(options)),  # numbers as numbers, nested options as objects
        "command": command,
    }
    return task.save(
        options.out, SavedTask(backbone, spec, pooling, options.max_seq_length, summary), options.dtype
    )
