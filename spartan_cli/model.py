"""Commands on the model core: ``train``, ``eval``, ``parents``, ``exit-sweep``, ``backbones``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from memories.config import METHODS, TRAIN_PRECISIONS, LoraXSConfig
from memories.errors import SpartanError
from memories.precision import PRECISION_SETTINGS, RESIDENT_DTYPES
from spartan_cli.common import (
    add_spartan_options,
    backbone,
    cache_dir,
    exit_config,
    log,
    lora_xs_config,
    options_from,
    routed_ffn_config,
    set_threads,
    spartan_config,
    write_report,
)

if TYPE_CHECKING:  # the heavy modules load inside the commands that need them
    from memories.backbone import Backbone
    from memories.data import Example, TaskSpec
    from memories.evaluate import Predictor
    from memories.memfile import MemoryFile


def cmd_train(args: argparse.Namespace) -> int:
    from memories.lab.baselines import build_model
    from memories.train import TrainOptions, train

    options = options_from(
        args,
        TrainOptions,
        spartan=spartan_config(args),
        exits=exit_config(args),
        lora_xs=lora_xs_config(args),
        routed_ffn=routed_ffn_config(args),
    )
    set_threads(args.threads)
    model = backbone(args.backbone)
    if options.method == "lora-xs":
        from memories.loraxs import prepare_factors

        prepare_factors(model, options.lora_xs.rank, cache_dir(), log)
    result = train(options, model, log, args.command_line, build_model)
    summary = {
        "out": str(result.out),
        "method": result.method,
        "trainable_parameters": result.trainable_parameters,
        "file_bytes": result.file_bytes,
        "best_step": result.best_step,
        "steps": result.steps,
        "seconds": round(result.seconds, 1),
        "train_examples_per_minute": round(result.train_examples_per_minute, 1),
        "dev": result.best.metrics,
    }
    print(json.dumps(summary, indent=2))
    return 0


def _memory_on_data_flags(parser: argparse.ArgumentParser) -> None:
    """The flags :func:`_memory_on_data` reads, for every command that runs a memory on a split."""
    parser.add_argument("--memory", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--task", help="default: the task recorded in the memory")
    parser.add_argument("--backbone", help="default: the backbone recorded in the memory")
    parser.add_argument("--max-seq-length", type=int, help="default: the memory's")


def _split_for(
    args: argparse.Namespace, recorded_task: str, labels: Sequence[str], task_type: str
) -> tuple[TaskSpec, list[Example], str]:
    """The task spec and examples of ``args.split``, checked against what a trained file predicts."""
    from memories.data import read_examples, split_path, task_spec

    task = args.task or recorded_task
    if not task:
        raise SpartanError("the memory names no task; pass --task")
    examples = read_examples(split_path(args.data, task, args.split))
    spec = task_spec(task, examples)
    if spec.labels != tuple(labels) or spec.task_type != task_type:
        raise SpartanError(
            f"the memory predicts {task_type} {list(labels)}, "
            f"the data is {spec.task_type} {list(spec.labels)}"
        )
    return spec, examples, task


def _memory_on_data(
    args: argparse.Namespace, precision: str = "fp32", fp32_layers: tuple[int, ...] | None = None
) -> tuple[MemoryFile, Backbone, TaskSpec, list[Example], str]:
    """The memory file (``args.memory``), its backbone in ``precision``, the task spec and the
    examples of ``args.split``, checked against each other; shared by eval and parents."""
    from memories.loraxs import prepare_factors
    from memories.memfile import check_backbone, read_memory
    from memories.precision import FP32_LAYERS, set_precision

    memfile = read_memory(args.memory)
    meta = memfile.metadata
    spec, examples, task = _split_for(args, meta.task, meta.labels, meta.task_type)
    layers = FP32_LAYERS if fp32_layers is None else fp32_layers
    model = backbone(args.backbone or meta.backbone)
    if meta.lora_xs is not None and meta.backbone_fingerprint == model.fingerprint:
        prepare_factors(model, meta.lora_xs.rank, cache_dir(), log)  # from the fp32 weights: first
    check_backbone(meta, model)
    set_precision(model, precision, layers)
    return memfile, model, spec, examples, task


def _run_facts(args: argparse.Namespace, task: str, examples: int, model: Backbone) -> dict[str, object]:
    """What every report about a memory on a data split starts with."""
    return {
        "memory": str(args.memory),
        "task": task,
        "split": args.split,
        "examples": examples,
        "backbone": model.name,
    }


def _eval_and_report(
    args: argparse.Namespace,
    model: Backbone,
    predictor: Predictor,
    spec: TaskSpec,
    examples: list[Example],
    max_seq_length: int,
    facts: dict[str, object],
) -> int:
    """Score ``predictor`` on the examples with a progress bar; print the metrics or a JSON report."""
    from tqdm import tqdm

    from memories.evaluate import evaluate

    started = time.perf_counter()
    with tqdm(total=len(examples), desc=f"eval {spec.name}/{args.split}", unit="ex", file=sys.stderr) as bar:
        result = evaluate(model, predictor, spec, examples, max_seq_length, args.batch_size, bar.update)
    report = {
        **_run_facts(args, spec.name, len(examples), model),
        **facts,
        "metrics": result.metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"{spec.name} {args.split} ({len(examples)} examples): "
            + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
        )
    return 0


def _eval_baseline(args: argparse.Namespace) -> int:
    """``spartan eval`` on a baseline checkpoint (adapters, full fine-tuning, probe): fp32 only."""
    from memories.lab.baselines import load_baseline
    from memories.lab.checkpoint import read_checkpoint

    if args.precision != "fp32" or args.resident_dtype not in ("auto", "float32"):
        raise SpartanError(
            "baseline checkpoints are evaluated in fp32 only (drop --precision/--resident-dtype)"
        )
    meta, _ = read_checkpoint(args.memory)
    spec, examples, _ = _split_for(args, meta.task, meta.labels, meta.task_type)
    model = backbone(args.backbone or meta.backbone)
    baseline, _ = load_baseline(args.memory, model)
    predictor = baseline.predictor(model, meta.pooling)
    max_length = args.max_seq_length or meta.max_seq_length
    return _eval_and_report(args, model, predictor, spec, examples, max_length, {"method": meta.method})


def cmd_eval(args: argparse.Namespace) -> int:
    from memories.evaluate import memory_predictor
    from memories.lab.checkpoint import FORMAT_NAME as BASELINE_FORMAT
    from memories.lab.checkpoint import file_format
    from memories.precision import FP32_LAYERS

    set_threads(args.threads)
    if file_format(args.memory) == BASELINE_FORMAT:
        return _eval_baseline(args)
    fp32_layers = tuple(args.int8_fp32_layers) if args.int8_fp32_layers is not None else FP32_LAYERS
    auto = args.precision == "auto"
    memfile, model, spec, examples, _ = _memory_on_data(args, "fp32" if auto else args.precision, fp32_layers)
    meta = memfile.metadata
    decision = None
    if auto:  # decided on this memory, as the service decides on its memories
        from memories.autoprecision import decide

        model, decision = decide(model, [memfile.to_packed("float32")], log=log)
    facts: dict[str, object] = {
        "method": meta.kind,
        "precision_setting": args.precision,
        "precision": model.precision,
        "precision_decision": decision.to_json() if decision is not None else None,
        "int8_fp32_layers": list(fp32_layers) if model.precision == "int8" else None,
        "file_dtype": memfile.dtype,
        "resident_dtype": args.resident_dtype,
    }
    predictor = memory_predictor(model, memfile.to_packed(args.resident_dtype, model.dtype))
    return _eval_and_report(
        args, model, predictor, spec, examples, args.max_seq_length or meta.max_seq_length, facts
    )


def cmd_parents(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from memories.lab.parents import parent_labels, plot_parent_labels

    set_threads(args.threads)
    memfile, model, _, examples, task = _memory_on_data(args)
    meta = memfile.metadata
    if meta.task_type != "classification":
        raise SpartanError("parents needs a classification memory (labels to count)")
    with tqdm(total=len(examples), desc=f"parents {task}/{args.split}", unit="ex", file=sys.stderr) as bar:
        result = parent_labels(
            model,
            memfile.to_packed(),
            meta.labels,
            examples,
            args.max_seq_length or meta.max_seq_length,
            args.layer,
            progress=bar.update,
        )
    report = {
        **_run_facts(args, task, len(examples), model),
        "spartan": {"num_parents": meta.num_parents, "num_children": meta.num_children, "top_k": meta.top_k},
        **result.to_json(),
    }
    write_report(report, args.json, args.command_line)
    print(json.dumps(report, indent=2))
    if args.json is not None:
        title = (
            f"{task} {args.split}: gold labels of the inputs picking each parent of layer {result.layer + 1}"
        )
        plot_parent_labels(result, title, args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    return 0


def cmd_exit_sweep(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from memories.hardware import cpu
    from memories.lab.early_exit import SweepOptions, plot_sweep, sweep
    from memories.lab.host import machine

    confined: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    precision, threads, budget = args.precision, args.threads, None
    if args.profile is not None:  # the device's CPU budget, precision and threads, as the probe runs
        from loadtest.cgroup import Limits, confine_self
        from loadtest.profiles import PROFILES_FILE, load_profile

        profile = load_profile(args.profile, args.profiles or PROFILES_FILE)
        profile.check_host(args.profile, cpu())
        precision, threads = profile.precision, profile.threads
        limits = Limits(cpus=profile.cpus, cpuset=profile.cpuset)
        budget = {"profile": args.profile, "cpus": limits.cpus, "cpuset": limits.cpuset, "threads": threads}
        confined = confine_self(limits, f"exit-sweep-{os.getpid()}")
    set_threads(threads)
    memfile, model, spec, examples, task = _memory_on_data(args, precision)
    meta = memfile.metadata
    options = options_from(args, SweepOptions, max_seq_length=args.max_seq_length or meta.max_seq_length)
    with confined:
        result = sweep(model, memfile.to_packed("auto", model.dtype), spec, examples, options, log)
    report = {
        **_run_facts(args, task, len(examples), model),
        "precision": model.precision,
        "budget": budget,
        "machine": machine(),
        **result,
    }
    write_report(report, args.json, args.command_line)
    if args.json is not None:
        title = f"{task} {args.split} on {model.name}: early exit, thresholds swept"
        plot_sweep(report, args.json.with_suffix(".png"), title)
        log(f"wrote {args.json.with_suffix('.png')}")
    else:
        print(json.dumps(report, indent=2))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from memories.backbones import CATALOGUE

    for spec in CATALOGUE.values():
        print(f"{spec.name:22} {spec.description}")
    print(f"{'<directory>':22} a local Hugging Face checkpoint (BERT, RoBERTa or MPNet family)")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="train a memory (or a baseline) for a task")
    train.add_argument("--task", required=True, help="task name (e.g. sst2, bbc, or your own)")
    train.add_argument(
        "--data", type=Path, required=True, help="data root (<data>/<task>/train.jsonl) or task folder"
    )
    train.add_argument(
        "--backbone", default="minilm", help="short name (see 'spartan backbones') or directory"
    )
    train.add_argument("--out", type=Path, required=True, help="memory file to write (.safetensors)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="epochs over the train split (default 3)")
    length.add_argument("--steps", type=int, help="optimizer steps")
    train.add_argument(
        "--few-shot", action="store_true", help="train on fewshot200.jsonl, 1000 steps by default"
    )
    train.add_argument("--max-train-examples", type=int, help="random subset of the train split")
    train.add_argument("--max-dev-examples", type=int, help="random subset of the dev split")
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument(
        "--method",
        choices=METHODS,
        default="spartan",
        help="what is trained: a SPARTAN or LoRA-XS memory (served) or a baseline (adapters, full, probe)",
    )
    train.add_argument(
        "--lr",
        type=float,
        help="default: the method's paper value (spartan/lora-xs/probe 1e-3, adapters 1e-4, full 2e-5)",
    )
    train.add_argument("--bottleneck", type=int, default=64, help="adapter bottleneck width")
    train.add_argument(
        "--rank", type=int, default=LoraXSConfig().rank, help="LoRA-XS: r, the side of each r x r matrix"
    )
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--warmup-ratio", type=float, default=0.0)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--max-seq-length", type=int, default=128)
    train.add_argument("--eval-every", type=int, default=500, help="steps between dev evaluations")
    train.add_argument("--pooling", choices=("cls", "mean"), help="default: the backbone's")
    train.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="on-disk precision")
    train.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    train.add_argument(
        "--precision",
        choices=TRAIN_PRECISIONS,
        default="fp32",
        help="bf16: forward passes under bf16 autocast (fast with AMX/AVX512-BF16, slow without)",
    )
    train.add_argument(
        "--routed-ffn",
        type=int,
        nargs=2,
        metavar=("EXPERTS", "ACTIVE"),
        help="SPT's routed FFN in the training steps: the backbone's FFNs cut into EXPERTS blocks, "
        "each token running ACTIVE of them (evaluation and serving stay dense; memories.routed_ffn)",
    )
    add_spartan_options(train)
    exits = train.add_argument_group("early exits (memories.exits)")
    exits.add_argument(
        "--exits", type=int, nargs="+", metavar="LAYER", help="train exits after these layers (0-based)"
    )
    exits.add_argument("--exit-hidden", type=int, default=128, help="hidden width of each exit")
    exits.add_argument(
        "--exit-threshold",
        type=float,
        default=0.9,
        help="confidence a row must exceed to leave at an exit (the task's default; 1.0: never)",
    )
    exits.add_argument(
        "--exits-on",
        type=Path,
        metavar="MEMORY",
        help="train only the exits, on this trained memory (kept as it is; its pooling and length)",
    )
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a memory file on a data split")
    _memory_on_data_flags(ev)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--threads", type=int)
    ev.add_argument(
        "--precision",
        choices=PRECISION_SETTINGS,
        default="fp32",
        help="backbone precision mode; auto: the one the service would pick here for this memory",
    )
    ev.add_argument(
        "--resident-dtype",
        choices=RESIDENT_DTYPES,
        default="auto",
        help="dtype the memory is kept in, as the service's cache would (default: as stored)",
    )
    ev.add_argument(
        "--int8-fp32-layers",
        type=int,
        nargs="*",
        help="int8: encoder layers kept in fp32 (default: 0; give none for all-int8)",
    )
    ev.add_argument("--json", action="store_true", help="print a JSON report")
    ev.set_defaults(func=cmd_eval)

    parents = sub.add_parser(
        "parents", help="which parent each input picks, against its label (the paper's Figure 2)"
    )
    _memory_on_data_flags(parents)
    parents.add_argument("--layer", type=int, default=-1, help="encoder layer, negative from the end")
    parents.add_argument("--threads", type=int)
    parents.add_argument("--json", type=Path, help="write the report here and the plot beside it")
    parents.set_defaults(func=cmd_parents)

    exit_sweep = sub.add_parser(
        "exit-sweep", help="early exit: dev score and throughput of a memory with exits, thresholds swept"
    )
    _memory_on_data_flags(exit_sweep)
    exit_sweep.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0]
    )
    exit_sweep.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    exit_sweep.add_argument("--timed-examples", type=int, default=256, help="first n examples, timed")
    exit_sweep.add_argument("--rounds", type=int, default=3)
    exit_sweep.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32")
    exit_sweep.add_argument("--threads", type=int)
    exit_sweep.add_argument(
        "--profile", help="run inside this device profile's CPU budget (root; its precision and threads)"
    )
    exit_sweep.add_argument("--profiles", type=Path, help="device profiles file (default: the shipped one)")
    exit_sweep.add_argument("--json", type=Path, help="write the report here and the plot beside it")
    exit_sweep.set_defaults(func=cmd_exit_sweep)

    backbones = sub.add_parser("backbones", help="list the named backbones")
    backbones.set_defaults(func=cmd_backbones)
