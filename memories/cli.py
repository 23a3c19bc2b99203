"""The ``spartan`` command line: train, eval, parents, bench, reproduce, serve, keys, backbones.

Each subcommand parses its options, loads what it needs and calls one function of the package;
no model work happens at import time. Errors of the package's exception tree end the command
with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest import cli as loadtest_cli
from memories.errors import SpartanError
from memories.methods import METHODS
from memories.precision import PRECISIONS, RESIDENT_DTYPES
from memories.spartan import SpartanConfig
from service.errors import ServiceError

if TYPE_CHECKING:  # the heavy modules load inside the commands that need them
    from memories.backbone import Backbone
    from memories.data import Example, TaskSpec
    from memories.evaluate import Predictor
    from memories.memfile import MemoryFile


def _add_spartan_options(parser: argparse.ArgumentParser) -> None:
    defaults = SpartanConfig()
    group = parser.add_argument_group("memory hyper-parameters")
    group.add_argument("--parents", type=int, default=defaults.num_parents, help="Np, parents per layer")
    group.add_argument("--children", type=int, default=defaults.num_children, help="Nc, children per parent")
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="K, parents chosen per token")
    group.add_argument(
        "--child-temperature", type=float, default=defaults.child_temperature, help="divides child logits"
    )


def _spartan_config(args: argparse.Namespace) -> SpartanConfig:
    return SpartanConfig(args.parents, args.children, args.top_k, args.child_temperature)


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_train(args: argparse.Namespace) -> int:
    from memories.backbones import load_backbone
    from memories.train import TrainOptions, train

    options = TrainOptions(
        task=args.task,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        steps=args.steps,
        few_shot=args.few_shot,
        method=args.method,
        max_train_examples=args.max_train_examples,
        max_dev_examples=args.max_dev_examples,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio,
        seed=args.seed,
        max_seq_length=args.max_seq_length,
        eval_every=args.eval_every,
        pooling=args.pooling,
        spartan=_spartan_config(args),
        bottleneck=args.bottleneck,
        dtype=args.dtype,
    )
    _set_threads(args.threads)
    backbone = load_backbone(args.backbone)
    result = train(options, backbone, _log, command=args.command_line)
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
    from memories.backbones import load_backbone
    from memories.memfile import check_backbone, read_memory
    from memories.precision import FP32_LAYERS, set_precision

    memfile = read_memory(args.memory)
    meta = memfile.metadata
    spec, examples, task = _split_for(args, meta.task, meta.labels, meta.task_type)
    layers = FP32_LAYERS if fp32_layers is None else fp32_layers
    backbone = set_precision(load_backbone(args.backbone or meta.backbone), precision, layers)
    check_backbone(meta, backbone)
    return memfile, backbone, spec, examples, task


def _run_facts(args: argparse.Namespace, task: str, examples: int, backbone: Backbone) -> dict[str, object]:
    """What every report about a memory on a data split starts with."""
    return {
        "memory": str(args.memory),
        "task": task,
        "split": args.split,
        "examples": examples,
        "backbone": backbone.name,
    }


def _eval_and_report(
    args: argparse.Namespace,
    backbone: Backbone,
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
        result = evaluate(backbone, predictor, spec, examples, max_seq_length, args.batch_size, bar.update)
    report = {
        **_run_facts(args, spec.name, len(examples), backbone),
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
    from memories.backbones import load_backbone
    from memories.checkpoint import read_checkpoint
    from memories.methods import load_baseline

    if args.precision != "fp32" or args.resident_dtype not in ("auto", "float32"):
        raise SpartanError(
            "baseline checkpoints are evaluated in fp32 only (drop --precision/--resident-dtype)"
        )
    meta, _ = read_checkpoint(args.memory)
    spec, examples, _ = _split_for(args, meta.task, meta.labels, meta.task_type)
    backbone = load_backbone(args.backbone or meta.backbone)
    model, _ = load_baseline(args.memory, backbone)
    predictor = model.predictor(backbone, meta.pooling)
    max_length = args.max_seq_length or meta.max_seq_length
    return _eval_and_report(args, backbone, predictor, spec, examples, max_length, {"method": meta.method})


def cmd_eval(args: argparse.Namespace) -> int:
    from memories.checkpoint import FORMAT_NAME as BASELINE_FORMAT
    from memories.checkpoint import file_format
    from memories.evaluate import memory_predictor
    from memories.precision import FP32_LAYERS

    _set_threads(args.threads)
    if file_format(args.memory) == BASELINE_FORMAT:
        return _eval_baseline(args)
    fp32_layers = tuple(args.int8_fp32_layers) if args.int8_fp32_layers is not None else FP32_LAYERS
    memfile, backbone, spec, examples, _ = _memory_on_data(args, args.precision, fp32_layers)
    meta = memfile.metadata
    facts: dict[str, object] = {
        "method": "spartan",
        "precision": backbone.precision,
        "int8_fp32_layers": list(fp32_layers) if backbone.precision == "int8" else None,
        "file_dtype": memfile.dtype,
        "resident_dtype": args.resident_dtype,
    }
    predictor = memory_predictor(backbone, memfile.to_packed(args.resident_dtype))
    return _eval_and_report(
        args, backbone, predictor, spec, examples, args.max_seq_length or meta.max_seq_length, facts
    )


def _write_report(report: dict[str, object], path: Path | None, command: str) -> None:
    report["command"] = command
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {path}")


def cmd_bench_http(args: argparse.Namespace) -> int:
    from memories.backbones import load_backbone
    from service.bench_http import HttpBenchOptions, format_http_table, run_http_bench

    options = HttpBenchOptions(
        tasks=args.tasks,
        requests=args.requests,
        concurrency=args.concurrency,
        rounds=args.rounds,
        threads=args.threads,
        max_batch_size=args.batch_size,
        pin=args.pin,
        texts_per_request=args.texts_per_request,
    )
    _set_threads(args.threads)
    report = run_http_bench(load_backbone(args.backbone or "minilm"), options, _log)
    print(format_http_table(report))
    _write_report(report, args.json, args.command_line)
    return 0


def cmd_parents(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from memories.parents import parent_labels, plot_parent_labels

    _set_threads(args.threads)
    memfile, backbone, _, examples, task = _memory_on_data(args)
    meta = memfile.metadata
    if meta.task_type != "classification":
        raise SpartanError("parents needs a classification memory (labels to count)")
    with tqdm(total=len(examples), desc=f"parents {task}/{args.split}", unit="ex", file=sys.stderr) as bar:
        result = parent_labels(
            backbone,
            memfile.to_packed(),
            meta.labels,
            examples,
            args.max_seq_length or meta.max_seq_length,
            args.layer,
            progress=bar.update,
        )
    report = {
        **_run_facts(args, task, len(examples), backbone),
        "spartan": {"num_parents": meta.num_parents, "num_children": meta.num_children, "top_k": meta.top_k},
        **result.to_json(),
        "command": args.command_line,
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        title = (
            f"{task} {args.split}: gold labels of the inputs picking each parent of layer {result.layer + 1}"
        )
        plot_parent_labels(result, title, args.json.with_suffix(".png"))
        _log(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.http:
        return cmd_bench_http(args)
    from memories.backbones import load_backbone
    from memories.bench import BenchOptions, format_table, needs_compiled, needs_int8, run_bench
    from memories.compiled import Buckets, compile_backbone
    from memories.precision import set_precision

    options = BenchOptions(
        batch_size=args.batch_size,
        seq_lengths=tuple(args.seq),
        rounds=args.rounds,
        threads=args.threads,
        spartan=_spartan_config(args),
    )
    if args.variants:
        options = dataclasses.replace(options, variants=tuple(args.variants))
    if args.layer_rounds is not None:
        options = dataclasses.replace(options, layer_rounds=args.layer_rounds)
    _set_threads(args.threads)
    spec = args.backbone or "roberta-base-random"
    backbone = load_backbone(spec)
    int8 = set_precision(load_backbone(spec), "int8") if needs_int8(options) else None
    compiled = None
    if needs_compiled(options):
        compiled = load_backbone(spec)
        buckets = Buckets((options.batch_size,), tuple(sorted(options.seq_lengths)))
        done = compile_backbone(compiled, buckets, progress=_log)
        _log(f"compiled {len(buckets.shapes)} shapes in {done['seconds']} s")
    report = run_bench(backbone, options, _log, int8, compiled)
    print(format_table(report))
    _write_report(report, args.json, args.command_line)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings

    overrides = {
        name: value
        for name, value in {
            "backbone": args.backbone,
            "registry": args.registry,
            "registry_dir": args.registry_dir,
            "redis_url": args.redis_url,
            "seed_dir": args.seed_dir,
            "threads": args.threads,
            "precision": args.precision,
            "resident_dtype": args.resident_dtype,
            "host": args.host,
            "port": args.port,
        }.items()
        if value is not None
    }
    settings = ServiceSettings(**overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One worker: each worker would hold its own backbone copy and split the metrics. Scale with replicas.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level="info",
        access_log=settings.access_log,
    )
    return 0


def cmd_reproduce_grid(args: argparse.Namespace) -> int:
    from memories.backbones import load_backbone
    from memories.reproduce import GridOptions, format_markdown, run_grid, write_table

    options = GridOptions(
        data=args.data,
        out=args.out,
        checkpoints=args.checkpoints,
        tasks=tuple(args.tasks),
        methods=tuple(args.methods),
        seeds=tuple(args.seeds),
        steps=args.steps,
        few_shot=args.few_shot,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        eval_every=args.eval_every,
        max_dev_examples=args.max_dev_examples,
    )
    _set_threads(args.threads)
    run_grid(options, load_backbone(args.backbone), args.command_line, _log)
    table = write_table(args.out, args.title or f"{args.backbone}: {args.out.name}")
    print(format_markdown(table))
    _log(f"wrote {args.out}/table.json, table.md and table.png")
    return 0


def cmd_reproduce_table(args: argparse.Namespace) -> int:
    from memories.reproduce import format_markdown, write_table

    print(format_markdown(write_table(args.out, args.title or args.out.name)))
    return 0


def cmd_reproduce_storage(args: argparse.Namespace) -> int:
    import tempfile

    from memories.backbones import load_backbone
    from memories.reproduce import storage_table

    with tempfile.TemporaryDirectory(prefix="spartan-storage-") as scratch:
        report = storage_table(
            load_backbone(args.backbone), args.tasks, Path(scratch), spartan=_spartan_config(args)
        )
    report["command"] = args.command_line
    print(json.dumps(report, indent=2))
    _write_report(report, args.json, args.command_line)
    return 0


def cmd_reproduce_train_speed(args: argparse.Namespace) -> int:
    from memories.backbones import load_backbone
    from memories.reproduce import train_speed

    _set_threads(args.threads)
    report = train_speed(
        load_backbone(args.backbone), tuple(args.methods), args.batch_size, args.seq_length, args.rounds, _log
    )
    report["command"] = args.command_line
    print(json.dumps({k: v for k, v in report.items() if k != "seconds"}, indent=2))
    _write_report(report, args.json, args.command_line)
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    from service.auth import add_key

    key = add_key(args.file, args.tenant, args.role)
    _log(f"added a {args.role} key for tenant {args.tenant!r} to {args.file} (only its hash is stored)")
    print(key)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from memories.backbones import CATALOGUE

    for spec in CATALOGUE.values():
        print(f"{spec.name:22} {spec.description}")
    print(f"{'<directory>':22} a local Hugging Face checkpoint (BERT, RoBERTa or MPNet family)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spartan", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
        help="what is trained: a SPARTAN memory (served) or a baseline (adapters, full, probe)",
    )
    train.add_argument(
        "--lr",
        type=float,
        help="default: the method's paper value (spartan/probe 1e-3, adapters 1e-4, full 2e-5)",
    )
    train.add_argument("--bottleneck", type=int, default=64, help="adapter bottleneck width")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--warmup-ratio", type=float, default=0.0)
    train.add_argument("--seed", type=int, default=42)
    train.add_argument("--max-seq-length", type=int, default=128)
    train.add_argument("--eval-every", type=int, default=500, help="steps between dev evaluations")
    train.add_argument("--pooling", choices=("cls", "mean"), help="default: the backbone's")
    train.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="on-disk precision")
    train.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    _add_spartan_options(train)
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a memory file on a data split")
    _memory_on_data_flags(ev)
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--threads", type=int)
    ev.add_argument("--precision", choices=PRECISIONS, default="fp32", help="backbone precision mode")
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

    bench = sub.add_parser("bench", help="throughput: bare backbone vs SPARTAN variants vs mixed tasks")
    bench.add_argument(
        "--http", action="store_true", help="engine in-process vs through HTTP (serving overhead)"
    )
    bench.add_argument("--backbone", help="default: roberta-base-random (model bench), minilm (--http)")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--seq", type=int, nargs="+", default=[64, 128])
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--json", type=Path, help="write the full report here")
    bench.add_argument("--layer-rounds", type=int, help="interleaved per-layer rounds (default 30; 0: skip)")
    bench.add_argument(
        "--variants",
        nargs="+",
        help="any of: bare spartan-dense spartan-gather mixed-dense (the default), their -int8 and "
        "-compiled forms, pfeiffer houlsby (the paper's adapter baselines)",
    )
    bench.add_argument("--tasks", type=int, default=8, help="--http: memories the requests rotate over")
    bench.add_argument("--requests", type=int, default=512, help="--http: requests per side and round")
    bench.add_argument("--concurrency", type=int, default=64, help="--http: requests in flight")
    bench.add_argument(
        "--pin", action="store_true", help="--http: server/engine on CPU 0, load generator elsewhere"
    )
    bench.add_argument("--texts-per-request", type=int, default=1, help="--http: texts in each request")
    _add_spartan_options(bench)
    bench.set_defaults(func=cmd_bench)

    serve = sub.add_parser("serve", help="run the HTTP service (settings: SPARTAN_* environment variables)")
    serve.add_argument("--backbone", help="default: minilm")
    serve.add_argument("--registry", choices=("file", "redis"))
    serve.add_argument("--registry-dir", type=Path, help="file registry root (default ./registry)")
    serve.add_argument("--redis-url")
    serve.add_argument("--seed-dir", type=Path, help="upload <task>.safetensors from here if absent")
    serve.add_argument("--threads", type=int, help="torch threads (default: the CPU quota)")
    serve.add_argument("--precision", choices=PRECISIONS, help="backbone precision mode (default fp32)")
    serve.add_argument(
        "--resident-dtype",
        choices=RESIDENT_DTYPES,
        help="dtype the cache keeps memories in (default auto: as each file stores them)",
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)

    reproduce = sub.add_parser(
        "reproduce", help="the paper's accuracy tables: every method on every task, resumable"
    ).add_subparsers(dest="reproduce_command", required=True)
    grid = reproduce.add_parser("grid", help="train every missing (task, method, seed) cell, then the table")
    grid.add_argument("--data", type=Path, required=True, help="data root (<data>/<task>/train.jsonl)")
    grid.add_argument("--backbone", default="minilm")
    grid.add_argument("--tasks", nargs="+", required=True)
    grid.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    grid.add_argument("--seeds", type=int, nargs="+", default=[1])
    grid.add_argument("--steps", type=int, default=1000, help="optimizer steps per cell (every method)")
    grid.add_argument("--few-shot", action="store_true", help="train on fewshot200.jsonl")
    grid.add_argument("--batch-size", type=int, default=16)
    grid.add_argument("--max-seq-length", type=int, default=64)
    grid.add_argument("--eval-every", type=int, default=500)
    grid.add_argument("--max-dev-examples", type=int, help="random subset of each dev split")
    grid.add_argument("--out", type=Path, required=True, help="cell JSONs and the table (commit these)")
    grid.add_argument("--checkpoints", type=Path, default=Path("runs/grid"), help="trained files (large)")
    grid.add_argument("--title", help="plot title")
    grid.add_argument("--threads", type=int)
    grid.set_defaults(func=cmd_reproduce_grid)
    table = reproduce.add_parser("table", help="rebuild table.json/md/png from the cells in --out")
    table.add_argument("--out", type=Path, required=True)
    table.add_argument("--title")
    table.set_defaults(func=cmd_reproduce_table)

    storage = reproduce.add_parser("storage", help="measured bytes per task of every method (appendix E)")
    storage.add_argument("--backbone", default="roberta-base-random", help="the paper's: RoBERTa-base")
    storage.add_argument("--tasks", type=int, default=9, help="T, tasks sharing one backbone")
    storage.add_argument("--json", type=Path, help="write the report here")
    _add_spartan_options(storage)
    storage.set_defaults(func=cmd_reproduce_storage)

    speed = reproduce.add_parser(
        "train-speed", help="fine-tuning inst/min of every method, interleaved in one process (Table 2)"
    )
    speed.add_argument("--backbone", default="minilm")
    speed.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    speed.add_argument("--batch-size", type=int, default=16)
    speed.add_argument("--seq-length", type=int, default=64)
    speed.add_argument("--rounds", type=int, default=10)
    speed.add_argument("--threads", type=int, default=1)
    speed.add_argument("--json", type=Path, help="write the report here")
    speed.set_defaults(func=cmd_reproduce_train_speed)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys_add = keys.add_parser("add", help="create a key, store its hash, print the key once")
    keys_add.add_argument("--file", type=Path, required=True, help="keys file (SPARTAN_API_KEYS_FILE)")
    keys_add.add_argument("--tenant", required=True)
    keys_add.add_argument("--role", choices=("tenant", "admin"), default="tenant")
    keys_add.set_defaults(func=cmd_keys_add)

    loadtest_cli.register(sub)
    backbones = sub.add_parser("backbones", help="list the named backbones")
    backbones.set_defaults(func=cmd_backbones)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["spartan", *argv])
    _quiet_transformers()
    try:
        status: int = args.func(args)
    except (SpartanError, ServiceError) as exc:
        print(f"spartan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
