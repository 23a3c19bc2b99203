"""``spartan loadtest``: calibrate, probe, serve (the cgroup runner), run, serving, curve,
http-bench, scenarios. The harness (``loadtest``) is imported inside each command only."""

from __future__ import annotations

import argparse
import json
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from memories.precision import PRECISIONS
from spartan_cli.common import backbone, log, options_from, set_threads, write_report

if TYPE_CHECKING:
    from loadtest.calibrate import ProbeOptions


def _emit(report: dict[str, object], path: Path | None, command: str) -> None:
    """The report to ``path`` (atomically), or to stdout without one."""
    write_report(report, path, command)
    if path is None:
        print(json.dumps(report, indent=2))


def _profiles(args: argparse.Namespace) -> Path:
    from loadtest.profiles import PROFILES_FILE

    return args.profiles or PROFILES_FILE


def _probe_options(args: argparse.Namespace) -> ProbeOptions:
    from loadtest.calibrate import ProbeOptions

    return options_from(args, ProbeOptions)


def cmd_calibrate(args: argparse.Namespace) -> int:
    import torch

    from loadtest.calibrate import calibrate

    options = _probe_options(args)
    model = backbone(args.backbone)
    with torch.inference_mode():
        report = calibrate(
            args.profile, model, options, args.command_line, log, _profiles(args), args.env_file
        )
    _emit(report, args.json, args.command_line)
    return 0 if report["within_tolerance"] else 1


def cmd_probe(args: argparse.Namespace) -> int:
    from loadtest.calibrate import measure_profile
    from memories.lab.host import machine

    report = measure_profile(
        args.profile,
        backbone(args.backbone),
        _probe_options(args),
        args.rounds,
        log,
        _profiles(args),
        args.threads,
        args.cpuset,
        tuple(args.variants),
    )
    report.update({"backbone": args.backbone, "machine": machine()})
    _emit(report, args.json, args.command_line)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The cgroup runner: ``spartan serve`` inside the profile's budget, in the foreground."""
    from loadtest.launcher import start_server
    from loadtest.profiles import load_profile
    from memories.hardware import cpu

    profile = load_profile(args.profile, _profiles(args))
    profile.check_host(args.profile, cpu())
    settings = {"threads": str(profile.threads), "precision": profile.precision}
    if args.backbone:
        settings["backbone"] = args.backbone
    if args.seed_dir:
        settings["seed_dir"] = str(args.seed_dir)
    log_file = args.log or Path(tempfile.mkstemp(prefix="spartan-serve-", suffix=".log")[1])
    limits = profile.limits
    log(
        f"starting spartan serve in a cgroup: {limits.cpus} cores on CPUs {limits.cpuset}, "
        f"{profile.mem_limit} memory, {profile.threads} torch threads; log {log_file}"
    )
    server = start_server(settings, log_file, ready_timeout=600, limits=limits, port=args.port)
    log(f"ready at {server.url} (profile {args.profile}); Ctrl-C stops it")

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while (reason := server.exit_reason()) is None:
            time.sleep(0.5)
        log(f"spartan serve {reason}")
        return 1
    except KeyboardInterrupt:
        log("stopping (admitted requests finish first)")
        return 0
    finally:
        server.stop()


def _setting(item: str) -> tuple[str, str]:
    from loadtest.errors import LoadTestError

    name, sep, value = item.partition("=")
    if not sep or not name:
        raise LoadTestError(f"--server-setting takes NAME=VALUE, got {item!r}")
    return name.lower(), value


def cmd_run(args: argparse.Namespace) -> int:
    from loadtest.report import plot
    from loadtest.run import RunOptions, run_load_test

    options = options_from(
        args,
        RunOptions,
        server_settings=tuple(_setting(item) for item in args.server_setting),
    )
    report, samples = run_load_test(options, args.command_line, log)
    _emit(report, args.json, args.command_line)
    if args.json is not None:
        title = (
            f"{args.scenario}" + (f", profile {args.profile}" if args.profile else "") + f", {args.backbone}"
        )
        seconds = report["seconds"]
        assert isinstance(seconds, float), "summarise() reports the run's seconds"
        plot(samples, seconds, title, args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    latency = report["latency_s"]
    log(f"{report['inst_per_min']} inst/min, latency {latency}, errors {report['errors']}")
    return 0 if report["server_exit"] is None else 1


def cmd_serving(args: argparse.Namespace) -> int:
    from loadtest.serving import ServingOptions, run_serving
    from memories.lab.host import machine

    report = run_serving(backbone(args.backbone), options_from(args, ServingOptions), log)
    report["machine"] = machine()
    _emit(report, args.json, args.command_line)
    return 0


def cmd_curve(args: argparse.Namespace) -> int:
    from loadtest.curve import CurveOptions, plot_curve, run_curve
    from memories.lab.host import machine

    report = run_curve(options_from(args, CurveOptions), log)
    report["machine"] = machine()
    _emit(report, args.json, args.command_line)
    if args.json is not None:
        plot_curve(report, args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    return 0


def cmd_http_bench(args: argparse.Namespace) -> int:
    from loadtest.http_bench import HttpBenchOptions, format_http_table, run_http_bench

    options = options_from(args, HttpBenchOptions)
    set_threads(args.threads)
    report = run_http_bench(backbone(args.backbone), options, log)
    print(format_http_table(report))
    write_report(report, args.json, args.command_line)
    return 0


def cmd_startup(args: argparse.Namespace) -> int:
    from loadtest.startup import StartupOptions, run_startup
    from memories.lab.host import machine

    report = run_startup(options_from(args, StartupOptions), log)
    report["machine"] = machine()
    _emit(report, args.json, args.command_line)
    return 0


def cmd_noisy_neighbour(args: argparse.Namespace) -> int:
    from loadtest.neighbours import NeighbourOptions, plot_neighbours, run_noisy_neighbour

    options = options_from(
        args, NeighbourOptions, server_settings=tuple(_setting(item) for item in args.server_setting)
    )
    report, samples = run_noisy_neighbour(options, args.command_line, log)
    _emit(report, args.json, args.command_line)
    if args.json is not None:
        plot_neighbours(samples, f"noisy neighbour, {args.backbone}", args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    log(f"target: {report['target']}")
    return 0 if report["server_exit"] is None else 1


def cmd_hostile_clients(args: argparse.Namespace) -> int:
    from loadtest.hostile import HostileOptions, plot_hostile, run_hostile_clients

    options = options_from(
        args, HostileOptions, server_settings=tuple(_setting(item) for item in args.server_setting)
    )
    report, samples = run_hostile_clients(options, args.command_line, log)
    _emit(report, args.json, args.command_line)
    if args.json is not None:
        plot_hostile(samples, f"slow and hostile clients, {args.backbone}", args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    log(f"target: {report['target']}")
    return 0 if report["server_exit"] is None else 1


def cmd_rolling_restart(args: argparse.Namespace) -> int:
    from loadtest.rolling import RollingOptions, plot_rolling, run_rolling_restart

    options = options_from(args, RollingOptions)
    report, samples, events = run_rolling_restart(options, args.command_line, log)
    _emit(report, args.json, args.command_line)
    if args.json is not None:
        title = f"rolling restart behind haproxy, {args.backbone}"
        seconds = report["seconds"]
        assert isinstance(seconds, float), "summarise reports seconds"
        plot_rolling(samples, seconds, events, title, args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    log(f"{report['requests']} requests, {report['failed_requests']} failed: {report['errors'] or 'none'}")
    return 0 if report["target_zero_failed"] else 1


def cmd_soak(args: argparse.Namespace) -> int:
    from loadtest.soak import SoakOptions, plot_soak, run_soak

    options = options_from(
        args,
        SoakOptions,
        kind=args.kind,
        server_settings=tuple(_setting(item) for item in args.server_setting),
    )
    report = run_soak(options, args.command_line, log)
    _emit(report, args.json, args.command_line)
    if args.json is not None:
        plot_soak(report, args.json.with_suffix(".png"))
        log(f"wrote {args.json.with_suffix('.png')}")
    targets = report["targets"]
    assert isinstance(targets, dict)
    log(f"targets: {targets['met']}")
    return 0 if report["server_exit"] is None and all(targets["met"].values()) else 1


def cmd_scenarios(args: argparse.Namespace) -> int:
    from loadtest.scenarios import SCENARIOS

    for scenario in SCENARIOS.values():
        print(f"{scenario.name:14} {scenario.description}")
    return 0


PROFILES_HELP = "the profiles file (default: the one shipped with loadtest)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    loadtest = sub.add_parser("loadtest", help="device profiles, cgroup runner, load generator, HTTP bench")
    commands = loadtest.add_subparsers(dest="loadtest_command", required=True)

    def probe_flags(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--profile", required=True, help="a profile of the profiles file")
        parser.add_argument("--profiles", type=Path, help=PROFILES_HELP)
        parser.add_argument("--backbone", default="roberta-base-random", help="the paper's: RoBERTa-base")
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--seq-length", type=int, default=64)
        parser.add_argument("--seconds", type=float, default=30.0, help="per probe (at least 3 batches)")
        parser.add_argument("--json", type=Path, help="write the report here (default: stdout)")

    calibrate = commands.add_parser(
        "calibrate", help="find the CPU quota at which the bare backbone matches the paper; write it back"
    )
    probe_flags(calibrate)
    calibrate.add_argument(
        "--env-file",
        type=Path,
        help="write the quota as this host's into this .env file (docker compose reads ./.env) "
        "instead of into the profiles file",
    )
    calibrate.set_defaults(func=cmd_calibrate)

    probe = commands.add_parser(
        "probe", help="bare vs SPARTAN (and adapters) inst/min in-process under a profile's budget"
    )
    probe_flags(probe)
    probe.add_argument(
        "--variants",
        nargs="+",
        default=["bare", "spartan"],
        help="what runs beside the bare backbone: spartan pfeiffer houlsby (the paper's Table 1)",
    )
    probe.add_argument("--rounds", type=int, default=3)
    probe.add_argument("--threads", type=int, help="torch threads (default: the profile's)")
    probe.add_argument("--cpuset", help="CPUs (default: the profile's), e.g. 0-1")
    probe.set_defaults(func=cmd_probe)

    serve = commands.add_parser(
        "serve", help="run spartan serve inside a profile's cgroup (no Docker needed)"
    )
    serve.add_argument("--profile", required=True)
    serve.add_argument("--profiles", type=Path, help=PROFILES_HELP)
    serve.add_argument("--backbone", help="default: SPARTAN_BACKBONE or minilm")
    serve.add_argument("--seed-dir", type=Path, help="memories uploaded at start-up if absent")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log", type=Path, help="server output (default: a temp file)")
    serve.set_defaults(func=cmd_serve)

    serving = commands.add_parser(
        "serving", help="cold load, hot-swap propagation, tasks per GiB and RSS over a task sweep"
    )
    serving.add_argument("--backbone", default="roberta-base-random", help="the paper's: RoBERTa-base")
    serving.add_argument(
        "--measure", dest="measurements", nargs="+", default=["cold", "swap", "density", "sweep"]
    )
    serving.add_argument(
        "--registry", dest="registries", nargs="+", default=["file", "redis"], help="for cold and swap"
    )
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
    curve.add_argument("--seconds", dest="seconds_per_point", type=float, default=30.0, help="per rate")
    curve.add_argument("--p95-budget", dest="p95_budget_s", type=float, default=1.0, help="seconds")
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
    target.add_argument(
        "--server-cpus", dest="server_cpuset", help="start the server on these CPUs only, e.g. 0 (no quota)"
    )
    run.add_argument("--profiles", type=Path, help=PROFILES_HELP)
    run.add_argument("--duration", dest="duration_s", type=float, default=30.0, help="seconds of load")
    run.add_argument("--requests", dest="max_requests", type=int, help="stop after this many requests")
    run.add_argument("--concurrency", type=int, help="closed-loop clients (default: the scenario's)")
    run.add_argument("--tasks", type=int, help="tasks (default: the scenario's)")
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

    http = commands.add_parser(
        "http-bench", help="the engine in-process vs through HTTP, interleaved (serving overhead)"
    )
    http.add_argument("--backbone", default="minilm")
    http.add_argument("--tasks", type=int, default=8, help="memories the requests rotate over")
    http.add_argument("--requests", type=int, default=512, help="requests per side and round")
    http.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    http.add_argument("--rounds", type=int, default=3)
    http.add_argument("--threads", type=int, default=1)
    http.add_argument("--batch-size", dest="max_batch_size", type=int, default=32)
    http.add_argument("--pin", action="store_true", help="server/engine on CPU 0, load generator elsewhere")
    http.add_argument("--texts-per-request", type=int, default=1, help="texts in each request")
    http.add_argument("--precision", choices=PRECISIONS, default="fp32", help="backbone mode of both sides")
    http.add_argument("--json", type=Path, help="write the full report here")
    http.set_defaults(func=cmd_http_bench)

    startup = commands.add_parser(
        "startup", help="seconds from process start to ready per precision setting (auto's cost)"
    )
    startup.add_argument("--backbone", default="minilm")
    startup.add_argument(
        "--settings",
        nargs="+",
        default=["fp32", "auto", "auto-cached"],
        help="fp32 int8 bf16, auto (first start: measures), auto-cached (reuses a decision)",
    )
    startup.add_argument("--reps", type=int, default=2)
    startup.add_argument("--threads", type=int, default=1)
    startup.add_argument("--seed-dir", type=Path, help="memories the server seeds (auto probes with them)")
    startup.add_argument("--json", type=Path, help="write the report here (default: stdout)")
    startup.set_defaults(func=cmd_startup)

    neighbour = commands.add_parser(
        "noisy-neighbour",
        help="one tenant floods, another sends a light stream: the light tenant's latency alone vs flooded",
    )
    neighbour.add_argument("--data", type=Path, required=True, help="data root; dev texts are sent")
    neighbour.add_argument("--texts", default="sst2", help="data set whose texts are sent")
    neighbour.add_argument("--backbone", default="minilm")
    neighbour.add_argument(
        "--duration", dest="duration_s", type=float, default=30.0, help="seconds per phase"
    )
    neighbour.add_argument("--flood-clients", type=int, default=48, help="the flooding tenant's closed loop")
    neighbour.add_argument("--flood-texts", type=int, default=8, help="texts per flood request")
    neighbour.add_argument("--light-rate", type=float, default=4.0, help="light tenant's requests per second")
    neighbour.add_argument("--max-seq-length", type=int, default=64)
    neighbour.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    neighbour.add_argument(
        "--server-setting", action="append", default=[], metavar="NAME=VALUE", help="a SPARTAN_* setting"
    )
    neighbour.add_argument("--seed", type=int, default=0)
    neighbour.add_argument("--json", type=Path, help="report path; the PNG is written beside it")
    neighbour.set_defaults(func=cmd_noisy_neighbour)

    hostile = commands.add_parser(
        "hostile-clients",
        help="slow headers, idle connections, slow bodies, clients that never read: a light client's latency",
    )
    hostile.add_argument("--data", type=Path, required=True, help="data root; dev texts are sent")
    hostile.add_argument("--texts", default="sst2", help="data set whose texts are sent")
    hostile.add_argument("--backbone", default="minilm")
    hostile.add_argument("--duration", dest="duration_s", type=float, default=30.0, help="seconds per phase")
    hostile.add_argument(
        "--light-rate", type=float, default=4.0, help="the light client's requests per second"
    )
    hostile.add_argument("--slow-headers", type=int, default=200, help="connections dribbling headers")
    hostile.add_argument("--idle", type=int, default=2000, help="connections sending nothing")
    hostile.add_argument("--slow-bodies", type=int, default=50, help="uploads sending 1 kB/s")
    hostile.add_argument("--non-readers", type=int, default=50, help="clients never reading their answer")
    hostile.add_argument("--max-seq-length", type=int, default=64)
    hostile.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    hostile.add_argument(
        "--server-setting", action="append", default=[], metavar="NAME=VALUE", help="a SPARTAN_* setting"
    )
    hostile.add_argument("--seed", type=int, default=0)
    hostile.add_argument("--json", type=Path, help="report path; the PNG is written beside it")
    hostile.set_defaults(func=cmd_hostile_clients)

    rolling = commands.add_parser(
        "rolling-restart",
        help="two replicas on Redis behind haproxy, each restarted with SIGTERM under load: failed requests",
    )
    rolling.add_argument("--data", type=Path, required=True, help="data root; dev texts are sent")
    rolling.add_argument("--texts", default="sst2", help="data set whose texts are sent")
    rolling.add_argument("--backbone", default="minilm")
    rolling.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the replicas' registry")
    rolling.add_argument(
        "--haproxy-config", type=Path, default=Path("deploy/haproxy/haproxy.cfg"), help="the proxy's config"
    )
    rolling.add_argument("--concurrency", type=int, default=8, help="closed-loop clients through the proxy")
    rolling.add_argument(
        "--settle", dest="settle_s", type=float, default=10.0, help="seconds of load around each restart"
    )
    rolling.add_argument("--drain", dest="drain_s", type=float, default=2.0, help="each replica's drain_s")
    rolling.add_argument("--rounds", type=int, default=1, help="restarts of every replica")
    rolling.add_argument("--seed", type=int, default=0)
    rolling.add_argument("--json", type=Path, help="report path; the PNG is written beside it")
    rolling.set_defaults(func=cmd_rolling_restart)

    for kind, summary in (
        (
            "soak",
            "long mixed load: Zipf tenants, hot swaps, uploads and deletes, 2x bursts; RSS, p95 drift",
        ),
        (
            "overload",
            "normal load, then 2x capacity for 10 minutes, then normal: shedding, deadline, recovery",
        ),
    ):
        soak = commands.add_parser(kind, help=summary)
        soak.add_argument("--data", type=Path, required=True, help="data root; dev texts are sent")
        soak.add_argument("--texts", default="sst2", help="data set whose texts are sent")
        soak.add_argument("--backbone", default="minilm")
        soak.add_argument("--tenants", type=int, default=4)
        soak.add_argument("--tasks-per-tenant", type=int, default=12)
        soak.add_argument("--texts-per-request", type=int, default=8)
        soak.add_argument("--base-load", type=float, default=0.6, help="x the capacity measured first")
        soak.add_argument(
            "--burst-load", type=float, default=2.0, help="x capacity in a burst / the overload"
        )
        if kind == "soak":
            soak.add_argument("--duration", dest="duration_s", type=float, default=1800.0, help="seconds")
            soak.add_argument("--burst-every", dest="burst_every_s", type=float, default=180.0)
            soak.add_argument("--burst", dest="burst_s", type=float, default=20.0, help="seconds per burst")
            soak.add_argument("--warmup", dest="warmup_s", type=float, default=120.0)
            soak.add_argument(
                "--compare", dest="compare_s", type=float, default=120.0, help="p95 drift windows"
            )
            soak.add_argument("--hot-swap-every", dest="hot_swap_every_s", type=float, default=5.0)
            soak.add_argument("--churn-every", dest="churn_every_s", type=float, default=15.0)
        else:
            soak.add_argument(
                "--normal", dest="normal_s", type=float, default=60.0, help="seconds before and after"
            )
            soak.add_argument(
                "--overload", dest="overload_s", type=float, default=600.0, help="seconds at 2x"
            )
            soak.add_argument("--recover-within", dest="recover_within_s", type=float, default=5.0)
        soak.add_argument("--sample-every", dest="sample_every_s", type=float, default=5.0)
        soak.add_argument("--server-cpus", dest="server_cpuset", help="cpuset for the server, e.g. 0")
        soak.add_argument(
            "--server-setting", action="append", default=[], metavar="NAME=VALUE", help="a SPARTAN_* setting"
        )
        soak.add_argument("--seed", type=int, default=0)
        soak.add_argument("--json", type=Path, help="report path; the PNG is written beside it")
        soak.set_defaults(func=cmd_soak, kind=kind)

    scenarios = commands.add_parser("scenarios", help="list the named scenarios")
    scenarios.set_defaults(func=cmd_scenarios)
