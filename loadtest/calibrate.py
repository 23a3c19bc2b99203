"""Emulate a device on this host: find the CPU quota at which the bare backbone matches the paper.

The paper reports bare RoBERTa-base at batch 32 doing 207.6 inst/min on a Raspberry Pi 4 and
366.2 on an iPhone 11. :func:`calibrate` runs that workload in-process inside a cgroup with the
profile's cpuset and a CPU quota, and adjusts the quota (throughput is proportional to it for a
single-threaded forward) until the measured rate is within ``tolerance`` of the reference; the
quota and how it was measured are written back to ``loadtest/profiles.yml``.

:func:`measure_profile` then runs the bare backbone and the variants with a task attached
(SPARTAN, Pfeiffer and Houlsby adapters: the paper's Table 1 rows) under a profile's budget,
rounds interleaved, for the results table.
"""

from __future__ import annotations

import datetime
import os
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from loadtest.cgroup import Limits, confine_self
from loadtest.errors import LoadTestError
from loadtest.profiles import (
    PAPER_TABLE1,
    PROFILES_FILE,
    VARIANTS,
    Calibration,
    load_profile,
    load_profiles,
    pick_profile,
    save_profiles,
    write_host_quota,
)
from memories.backbone import Backbone, Encoded
from memories.config import SpartanConfig
from memories.hardware import cpu
from memories.lab.bench import adapter_forward, random_batch
from memories.lab.timing import median_ratio
from memories.model import TaskMemory, run_batch
from memories.precision import set_precision


@dataclass(frozen=True)
class ProbeOptions:
    batch_size: int = 32
    seq_length: int = 64
    seconds: float = 30.0  # per probe, after one warm-up batch
    min_batches: int = 3
    tolerance: float = 0.05  # calibrate: stop when within 5% of the reference
    max_probes: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.seq_length < 4 or self.min_batches < 1 or self.max_probes < 1:
            raise LoadTestError("batch size, sequence length (>= 4), min batches and probes must be positive")
        if not 0 < self.tolerance < 1:
            raise LoadTestError(f"tolerance must be between 0 and 1, got {self.tolerance}")


def probe(run: Callable[[], object], batch_size: int, seconds: float, min_batches: int) -> float:
    """Instances per minute of ``run`` (one batch per call), after one warm-up call."""
    run()
    batches, started = 0, time.perf_counter()
    while batches < min_batches or time.perf_counter() - started < seconds:
        run()
        batches += 1
    return batches * batch_size * 60 / (time.perf_counter() - started)


def _workloads(
    backbone: Backbone, options: ProbeOptions, variants: tuple[str, ...] = ("bare",)
) -> dict[str, Callable[[], object]]:
    """One batch of each variant (see :func:`_workload`)."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise LoadTestError(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    batch = random_batch(backbone, options.batch_size, options.seq_length, options.seed)
    torch.manual_seed(options.seed)
    return {variant: _workload(backbone, batch, variant) for variant in variants}


def _workload(backbone: Backbone, batch: Encoded, variant: str) -> Callable[[], object]:
    """The bare backbone, or the backbone with a random 2-class task of that method: SPARTAN
    through the service's path, adapters (non-zero weights) through their hooks."""
    if variant == "bare":
        return lambda: backbone.forward(batch)
    if variant == "spartan":
        task = TaskMemory(backbone.hidden_size, backbone.num_layers, 2, SpartanConfig())
        packed = task.requires_grad_(False).pack(backbone.pooling)
        rows = batch.input_ids.shape[0]
        return lambda: run_batch(backbone, batch, [packed] * rows)
    return adapter_forward(backbone, batch, variant)


def _confined_probe(run: Callable[[], object], limits: Limits, threads: int, options: ProbeOptions) -> float:
    torch.set_num_threads(threads)
    with torch.inference_mode(), confine_self(limits, f"probe-{os.getpid()}"):
        return probe(run, options.batch_size, options.seconds, options.min_batches)


def calibrate(
    name: str,
    backbone: Backbone,
    options: ProbeOptions,
    command: str,
    progress: Callable[[str], None] = print,
    path: Path = PROFILES_FILE,
    env_file: Path | None = None,
) -> dict[str, object]:
    """Find the profile's CPU quota, write it back to ``path`` (or, with ``env_file``, into that
    ``.env`` file as this host's quota, leaving ``path`` as it is); return what was measured."""
    profiles = load_profiles(path)
    profile = pick_profile(profiles, name, path)
    set_precision(backbone, profile.precision)  # calibrate in the precision the device runs
    host = cpu()
    reference = profile.device.reference_inst_per_min
    bare = _workloads(backbone, options)["bare"]
    cpus, probes = profile.cpus, []
    for n in range(options.max_probes):
        limits = Limits(cpus=cpus, cpuset=profile.cpuset)
        rate = _confined_probe(bare, limits, profile.threads, options)
        probes.append({"cpus": cpus, "inst_per_min": round(rate, 1)})
        progress(
            f"probe {n + 1}/{options.max_probes}: quota {cpus:.3f} cores -> {rate:.1f} inst/min "
            f"(reference {reference})"
        )
        if abs(rate / reference - 1) <= options.tolerance:
            break
        cpus = round(min(float(len(os.sched_getaffinity(0))), max(0.02, cpus * reference / rate)), 3)
    best = min(probes, key=lambda p: abs(float(p["inst_per_min"]) / reference - 1))
    calibrated = profile.model_copy(
        update={
            "cpus": best["cpus"],
            "device": profile.device.model_copy(
                update={
                    "calibration": Calibration(
                        measured_inst_per_min=float(best["inst_per_min"]),
                        backbone=backbone.name,
                        batch_size=options.batch_size,
                        seq_length=options.seq_length,
                        host=f"{socket.gethostname()}: {host.model}",
                        date=datetime.date.today().isoformat(),
                        command=command,
                        cpu=host.model,
                        cpu_flags=list(host.flags),
                        cpu_signature=host.signature,
                    )
                }
            ),
        }
    )
    if env_file is None:
        save_profiles({**profiles, name: calibrated}, path)
    else:
        write_host_quota(env_file, name, profile, float(best["cpus"]), host)
    within = abs(float(best["inst_per_min"]) / reference - 1) <= options.tolerance
    return {
        "profile": name,
        "reference_inst_per_min": reference,
        "cpus": best["cpus"],
        "probes": probes,
        "within_tolerance": within,
        "written": str(path if env_file is None else env_file),
    }


def measure_profile(
    name: str,
    backbone: Backbone,
    options: ProbeOptions,
    rounds: int,
    progress: Callable[[str], None] = print,
    path: Path = PROFILES_FILE,
    threads: int | None = None,
    cpuset: str | None = None,
    variants: tuple[str, ...] = ("bare", "spartan"),
) -> dict[str, object]:
    """Inst/min of the bare backbone and each variant under the profile's CPU budget, ``rounds``
    interleaved rounds; ``threads`` and ``cpuset`` override the profile's (e.g. to show what
    oversubscription costs)."""
    if "bare" not in variants:
        variants = ("bare", *variants)
    profile = load_profile(name, path)
    set_precision(backbone, profile.precision)
    threads = threads or profile.threads
    limits = Limits(cpus=profile.cpus, cpuset=cpuset or profile.cpuset)
    workloads = _workloads(backbone, options, variants)
    rates: dict[str, list[float]] = {variant: [] for variant in workloads}
    for n in range(rounds):
        for variant, run in workloads.items():
            rates[variant].append(_confined_probe(run, limits, threads, options))
        progress(
            f"{name} round {n + 1}/{rounds}: "
            + ", ".join(f"{variant} {values[-1]:.1f}" for variant, values in rates.items())
            + " inst/min"
        )
    median = {variant: statistics.median(values) for variant, values in rates.items()}
    over_bare = {variant: median_ratio(values, rates["bare"]) for variant, values in rates.items()}
    paper = PAPER_TABLE1.get(name, {})
    reference = profile.device.reference_inst_per_min
    return {
        "profile": name,
        "cpus": profile.cpus,
        "cpuset": limits.cpuset,
        "threads": threads,
        "batch_size": options.batch_size,
        "seq_length": options.seq_length,
        "rounds": rates,
        "inst_per_min": {variant: round(value, 1) for variant, value in median.items()},
        "over_bare": over_bare,
        "paper_inst_per_min": {variant: paper[variant] for variant in rates if variant in paper},
        "paper_over_bare": {
            variant: round(paper[variant] / paper["bare"], 4) for variant in rates if variant in paper
        },
        "bare_over_paper": round(median["bare"] / reference, 3),
        "precision": profile.precision,
        "calibrated_on": profile.device.calibration.cpu_kind if profile.device.calibration else None,
        "host_cpu": cpu().kind,
    }
