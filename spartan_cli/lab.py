"""Research commands: ``bench`` (model throughput) and ``reproduce`` (the paper's tables)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from memories.config import FUSED_SETTINGS, METHODS
from spartan_cli.common import (
    add_spartan_options,
    backbone,
    log,
    options_from,
    set_threads,
    spartan_config,
    write_report,
)


def cmd_bench(args: argparse.Namespace) -> int:
    from memories.autoprecision import decide
    from memories.compiled import Buckets, compile_backbone
    from memories.fused import fuse_routing
    from memories.lab.bench import BenchOptions, format_table, needed_copies, run_bench
    from memories.model import TaskMemory
    from memories.precision import set_precision

    options = options_from(args, BenchOptions, spartan=spartan_config(args))
    set_threads(args.threads)
    model = backbone(args.backbone)
    copies = {}
    decision = None
    for kind in needed_copies(options):
        copy = backbone(args.backbone)
        if kind == "compiled":
            buckets = Buckets((options.batch_size,), tuple(sorted(options.seq_lengths)))
            done = compile_backbone(copy, buckets, progress=log)
            log(f"compiled {len(buckets.shapes)} shapes in {done['seconds']} s")
        elif kind == "auto":  # probed with a random memory, as the service probes a registry without one
            probe = TaskMemory(copy.hidden_size, copy.num_layers, 2, options.spartan).requires_grad_(False)
            copy, decision = decide(copy, [probe.pack(copy.pooling)], log=log)
        else:
            set_precision(copy, kind)
        copies[kind] = copy
    routing = fuse_routing([model, *copies.values()], args.fused_routing, [options.spartan])
    log(f"memory routing: {routing}")
    report = run_bench(model, options, log, copies)
    report["routing"] = routing
    if decision is not None:
        report["auto_decision"] = decision.to_json()
    print(format_table(report))
    write_report(report, args.json, args.command_line)
    return 0


def cmd_reproduce_grid(args: argparse.Namespace) -> int:
    from memories.lab.reproduce import GridOptions, format_markdown, run_grid, write_table

    options = options_from(args, GridOptions)
    set_threads(args.threads)
    run_grid(options, backbone(args.backbone), args.command_line, log)
    table = write_table(args.out, args.title or f"{args.backbone}: {args.out.name}")
    print(format_markdown(table))
    log(f"wrote {args.out}/table.json, table.md and table.png")
    return 0


def cmd_reproduce_table(args: argparse.Namespace) -> int:
    from memories.lab.reproduce import format_markdown, write_table

    print(format_markdown(write_table(args.out, args.title or args.out.name)))
    return 0


def cmd_reproduce_storage(args: argparse.Namespace) -> int:
    from memories.lab.reproduce import storage_table

    with tempfile.TemporaryDirectory(prefix="spartan-storage-") as scratch:
        report = storage_table(
            backbone(args.backbone), args.tasks, Path(scratch), spartan=spartan_config(args)
        )
    write_report(report, args.json, args.command_line)
    print(json.dumps(report, indent=2))
    return 0


def cmd_reproduce_train_speed(args: argparse.Namespace) -> int:
    from memories.lab.reproduce import train_speed

    set_threads(args.threads)
    from memories.config import RoutedFFNConfig

    routed = [RoutedFFNConfig(experts=e, active=k) for e, k in args.routed_ffn or []]
    report = train_speed(
        backbone(args.backbone),
        tuple(args.methods),
        args.batch_size,
        args.seq_length,
        args.rounds,
        log,
        routed,
    )
    write_report(report, args.json, args.command_line)
    print(json.dumps({k: v for k, v in report.items() if k != "seconds"}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="throughput: bare backbone vs SPARTAN variants vs mixed tasks")
    bench.add_argument("--backbone", default="roberta-base-random")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--seq", dest="seq_lengths", type=int, nargs="+", default=[64, 128])
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--json", type=Path, help="write the full report here")
    bench.add_argument("--layer-rounds", type=int, help="interleaved per-layer rounds (default 30; 0: skip)")
    bench.add_argument(
        "--variants",
        nargs="+",
        help="any of: bare spartan-dense spartan-gather mixed-dense (the default); bare, spartan-dense "
        "and mixed-dense with -int8, -bf16, -auto (the mode precision auto picks here) or -compiled; "
        "pfeiffer houlsby (the paper's adapter baselines); lora-xs mixed-lora-xs mixed-kinds; "
        "exits-stay exits-leave-quarter exits-leave-half exits-mixed (early exit at forced depths)",
    )
    bench.add_argument(
        "--fused-routing",
        choices=FUSED_SETTINGS,
        default="auto",
        help="the SPARTAN op's routing as one compiled kernel (memories.fused): auto = on bf16 "
        "backbones when a C++ compiler is there",
    )
    add_spartan_options(bench)
    bench.set_defaults(func=cmd_bench)

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
    add_spartan_options(storage)
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
    speed.add_argument(
        "--routed-ffn",
        type=int,
        nargs=2,
        action="append",
        metavar=("EXPERTS", "ACTIVE"),
        help="also time SPARTAN with this routed FFN (spartan train --routed-ffn); repeatable",
    )
    speed.add_argument("--json", type=Path, help="write the report here")
    speed.set_defaults(func=cmd_reproduce_train_speed)
