"""``spartan loadtest``: calibrate, probe, serve (the cgroup runner), run, scenarios.

Registered into the ``spartan`` command by :func:`register`; heavy imports happen inside the
commands, never at import time.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from loadtest.errors import LoadTestError
from loadtest.profiles import PROFILES_FILE, VARIANTS

if TYPE_CHECKING:
    from loadtest.calibrate import ProbeOptions


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(report: dict[str, object], path: Path | None) -> None:
    text = json.dumps(report, indent=2)
    if path is None:
        print(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    _log(f"wrote {path}")


def _probe_options(args: argparse.Namespace) -> ProbeOptions:
    from loadtest.calibrate import ProbeOptions

    return ProbeOptions(batch_size=args.batch_size, seq_length=args.seq_length, seconds=args.seconds)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from loadtest.calibrate import calibrate
    from memories.backbones import load_backbone

    options = _probe_options(args)
    backbone = load_backbone(args.backbone)
    with torch.inference_mode():
        report = calibrate(args.profile, backbone, options, args.command_line, _log, args.profiles)
    report["command"] = args.command_line
    _write_json(report, args.json)
    return 0 if report["within_tolerance"] else 1


def cmd_probe(args: argparse.Namespace) -> int:
    from loadtest.calibrate import measure_profile
    from memories.backbones import load_backbone
    from memories.bench import machine

    options = _probe_options(args)
    backbone = load_backbone(args.backbone)
    report = measure_profile(
        args.profile,
        backbone,
        options,
        args.rounds,
        _log,
        args.profiles,
        args.threads,
        args.cpuset,
        tuple(args.variants),
    )
    report.update({"backbone": args.backbone, "command": args.command_line, "machine": machine()})
    _write_json(report, args.json)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The cgroup runner: ``spartan serve`` inside the profile's budget, in the foreground."""
    from loadtest.profiles import load_profile
    from service.launcher import start_server

    profile = load_profile(args.profile, args.profiles)
    settings = {"threads": str(profile.threads)}
    if args.backbone:
        settings["backbone"] = args.backbone
    if args.seed_dir:
        settings["seed_dir"] = str(args.seed_dir)
    log = args.log or Path(tempfile.mkstemp(prefix="spartan-serve-", suffix=".log")[1])
    limits = profile.limits
    _log(
        f"starting spartan serve in a cgroup: {limits.cpus} cores on CPUs {limits.cpuset}, "
        f"{profile.mem_limit} memory, {profile.threads} torch threads; log {log}"
    )
    server = start_server(settings, log, ready_timeout=600, limits=limits, port=args.port)
    _log(f"ready at {server.url} (profile {args.profile}); Ctrl-C stops it")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while (reason := server.exit_reason()) is None:
            time.sleep(0.5)
        _log(f"spartan serve {reason}")
        return 1
    except KeyboardInterrupt:
        _log("stopping (admitted requests finish first)")
        return 0
    finally:
        server.stop()


def _setting(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise LoadTestError(f"--server-setting takes NAME=VALUE, got {item!r}")
    return name.lower(), value


def cmd_run(args: argparse.Namespace) -> int:
    from loadtest.report import plot
    from loadtest.run import RunOptions, run_load_test

    options = RunOptions(
        scenario=args.scenario,
        data=args.data,
        texts=args.texts,
        backbone=args.backbone,
        url=args.url,
        profile=args.profile,
        profiles=args.profiles,
        duration_s=args.duration,
        max_requests=args.requests,
        concurrency=args.concurrency,
        texts_per_request=args.texts_per_request,
        max_seq_length=args.max_seq_length,
        server_settings=tuple(_setting(item) for item in args.server_setting),
        seed=args.seed,
        api_key=args.api_key,
    )
    report, samples = run_load_test(options, args.command_line, _log)
    _write_json(report, args.json)
    if args.json is not None:
        title = (
            f"{args.scenario}" + (f", profile {args.profile}" if args.profile else "") + f", {args.backbone}"
        )
        seconds = report["seconds"]
        assert isinstance(seconds, float), "summarise() reports the run's seconds"
        plot(samples, seconds, title, args.json.with_suffix(".png"))
        _log(f"wrote {args.json.with_suffix('.png')}")
    latency = report["latency_s"]
    _log(f"{report['inst_per_min']} inst/min, latency {latency}, errors {report['errors']}")
    return 0 if report["server_exit"] is None else 1


def cmd_serving(args: argparse.Namespace) -> int:
    from loadtest.serving import ServingOptions, run_serving
    from memories.backbones import load_backbone
    from memories.bench import machine

    options = ServingOptions(
        backbone=args.backbone,
        measurements=tuple(args.measure),
        registries=tuple(args.registry),
        memory_dtype=args.memory_dtype,
        cold_tasks=args.cold_tasks,
        swaps=args.swaps,
        density_tasks=args.density_tasks,
        sweep_tasks=args.sweep_tasks,
        sweep_cache_mb=args.sweep_cache_mb,
        redis_url=args.redis_url,
    )
    report = run_serving(load_backbone(args.backbone), options, _log)
    report.update({"command": args.command_line, "machine": machine()})
    _write_json(report, args.json)
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from loadtest.curve import CurveOptions, plot_curve, run_curve
    from memories.bench import machine

    options = CurveOptions(
        data=args.data,
        texts=args.texts,
        backbone=args.backbone,
        rates=tuple(args.rates),
        seconds_per_point=args.seconds,
        p95_budget_s=args.p95_budget,
    )
    report = run_curve(options, _log)
    report.update({"command": args.command_line, "machine": machine()})
    _write_json(report, args.json)
    if args.json is not None:
        plot_curve(report, args.json.with_suffix(".png"))
        _log(f"wrote {args.json.with_suffix('.png')}")
    return 0


def cmd_scenarios(args: argparse.Namespace) -> int:
    from loadtest.scenarios import SCENARIOS

    for scenario in SCENARIOS.values():
        print(f"{scenario.name:14} {scenario.description}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    loadtest = sub.add_parser("loadtest", help="device profiles, cgroup runner and load generator")
    commands = loadtest.add_subparsers(dest="loadtest_command", required=True)

    def probe_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--profile", required=True, help="a profile of the profiles file")
        parser.add_argument("--profiles", type=Path, default=PROFILES_FILE, help="the profiles file")
        parser.add_argument("--backbone", default="roberta-base-random", help="the paper's: RoBERTa-base")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--seq-length", type=int, default=64)
        parser.add_argument("--seconds", type=float, default=30.0, help="per probe (at least 3 batches)")
        parser.add_argument("--json", type=Path, help="write the report here (default: stdout)")

    calibrate = commands.add_parser(
        "calibrate", help="find the CPU quota at which the bare backbone matches the paper; write it back"
    )
    probe_flags(calibrate)
    calibrate.set_defaults(func=cmd_calibrate)

    probe = commands.add_parser(
        "probe", help="bare vs SPARTAN (and adapters) inst/min in-process under a profile's budget"
    )
    probe_flags(probe)
    probe.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        default=["bare", "spartan"],
        help="what runs beside the bare backbone (the paper's Table 1: spartan pfeiffer houlsby)",
    )
    probe.add_argument("--rounds", type=int, default=3)
    probe.add_argument("--threads", type=int, help="torch threads (default: the profile's)")
    probe.add_argument("--cpuset", help="CPUs (default: the profile's), e.g. 0-1")
    probe.set_defaults(func=cmd_probe)

    serve = commands.add_parser(
        "serve", help="run spartan serve inside a profile's cgroup (no Docker needed)"
    )
    serve.add_argument("--profile", required=True)
    serve.add_argument("--profiles", type=Path, default=PROFILES_FILE, help="the profiles file")
    serve.add_argument("--backbone", help="default: SPARTAN_BACKBONE or minilm")
    serve.add_argument("--seed-dir", type=Path, help="memories uploaded at start-up if absent")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log", type=Path, help="server output (default: a temp file)")
    serve.set_defaults(func=cmd_serve)

    serving = commands.add_parser(
        "serving", help="cold load, hot-swap propagation, tasks per GiB and RSS over a task sweep"
    )
    serving.add_argument("--backbone", default="roberta-base-random", help="the paper's: RoBERTa-base")
    serving.add_argument("--measure", nargs="+", default=["cold", "swap", "density", "sweep"])
    serving.add_argument("--registry", nargs="+", default=["file", "redis"], help="for cold and swap")
    serving.add_argument("--memory-dtype", choices=("float32", "float16"), default="float16")
    serving.add_argument("--cold-tasks", type=int, default=40)
    serving.add_argument("--swaps", type=int, default=40)
    serving.add_argument("--density-tasks", type=int, default=100)
    serving.add_argument("--sweep-tasks", type=int, default=1000)
    serving.add_argument("--sweep-cache-mb", type=int, default=64)
    serving.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    serving.add_argument("--json", type=Path, help="write the report here (default: stdout)")
    serving.set_defaults(func=cmd_serving)

    curve = commands.add_parser(
        "curve", help="batching policies: offered load vs inst/min and p95 (JSON + PNG)"
    )
    curve.add_argument("--data", type=Path, required=True, help="data root, e.g. ../shared/data")
    curve.add_argument("--texts", default="sst2", help="data set whose dev texts are sent")
    curve.add_argument("--backbone", default="roberta-base-random")
    curve.add_argument("--rates", type=float, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8], help="req/s")
    curve.add_argument("--seconds", type=float, default=30.0, help="per rate")
    curve.add_argument("--p95-budget", type=float, default=1.0, help="seconds")
    curve.add_argument("--json", type=Path, help="write the report here, the plot beside it")
    curve.set_defaults(func=cmd_curve)

    run = commands.add_parser("run", help="run a load-test scenario; JSON report and PNG plot")
    run.add_argument("--scenario", required=True, help="see: spartan loadtest scenarios")
    run.add_argument("--data", type=Path, required=True, help="data root (e.g. ../shared/data)")
    run.add_argument("--texts", default="sst2", help="data set whose dev texts are sent")
    run.add_argument("--backbone", default="minilm")
    target = run.add_mutually_exclusive_group()
    target.add_argument("--url", help="a running server on loopback (default: start one)")
    target.add_argument("--profile", help="start the server inside this device profile's cgroup")
    run.add_argument("--profiles", type=Path, default=PROFILES_FILE, help="the profiles file")
    run.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    run.add_argument("--requests", type=int, help="stop after this many requests")
    run.add_argument("--concurrency", type=int, help="closed-loop clients (default: the scenario's)")
    run.add_argument("--texts-per-request", type=int, help="texts per request (default: the scenario's)")
    run.add_argument("--max-seq-length", type=int, default=64, help="tokens per input (as calibrated)")
    run.add_argument(
        "--server-setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a SPARTAN_* setting (without prefix) for the server started here, e.g. request_timeout_s=120",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--api-key", help="for a server with keys (admin: it uploads memories)")
    run.add_argument("--json", type=Path, help="report path; the PNG is written beside it")
    run.set_defaults(func=cmd_run)

    scenarios = commands.add_parser("scenarios", help="list the named scenarios")
    scenarios.set_defaults(func=cmd_scenarios)
