"""Scenarios end to end against a real server on loopback (tiny backbone, toy texts)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from loadtest.cgroup import cgroup_version
from loadtest.errors import LoadTestError
from loadtest.generator import LoadGenerator, LoadOptions, check_loopback
from loadtest.run import RunOptions, run_load_test
from loadtest.workload import Zipf
from tests.service.conftest import RunningService


def _options(service: RunningService | None, toy_data: Path, scenario: str, **changes: object) -> RunOptions:
    fields: dict[str, object] = {
        "scenario": scenario,
        "data": toy_data,
        "texts": "toy",
        "backbone": "roberta-tiny-random",
        "url": service.url if service is not None else None,
        "duration_s": 3.0,
        "concurrency": 8,
        "capacity_probe_s": 2.0,
    }
    fields.update(changes)
    return RunOptions(**fields)  # type: ignore[arg-type]


def test_steady_scenario_reports_throughput_latency_and_server_batches(
    service_factory: Callable[..., RunningService], toy_data: Path
) -> None:
    service = service_factory(max_batch_size=8)
    messages: list[str] = []
    report, samples = run_load_test(
        _options(service, toy_data, "steady"), "spartan loadtest run", messages.append
    )
    assert report["errors"] == {}
    assert report["ok"] == len(samples) > 0
    assert float(report["inst_per_min"]) > 0  # type: ignore[arg-type]
    latency = report["latency_s"]
    assert isinstance(latency, dict)
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    server = report["server"]
    assert isinstance(server, dict)
    assert server["engine_batches"] > 0
    assert 1 <= server["mean_batch_size"] <= 8
    assert server["cache_hit_rate"] > 0.9, "one task: every request after the first hits the cache"
    assert server["precision"] in ("fp32", "bf16", "int8"), "the mode the server runs in"
    assert any("answered" in m for m in messages), "progress is shown while it runs"
    assert report["command"] == "spartan loadtest run"


@pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="needs a CPU for the server and one for the load"
)
@pytest.mark.skipif(os.geteuid() != 0 or cgroup_version() is None, reason="needs root and a cgroup hierarchy")
def test_a_server_started_on_given_cpus_leaves_them_to_it(toy_data: Path) -> None:
    cpus = os.sched_getaffinity(0)
    server_cpu = min(cpus)
    messages: list[str] = []
    options = _options(None, toy_data, "steady", server_cpuset=str(server_cpu), duration_s=2.0, concurrency=2)
    report, _ = run_load_test(options, "spartan loadtest run", messages.append)
    assert report["errors"] == {}
    assert report["ok"] > 0
    assert any(m.endswith(f"server on {server_cpu}") for m in messages), messages
    assert os.sched_getaffinity(0) == cpus, "the caller's CPUs are given back"


def test_memory_pressure_cycles_more_memories_than_fit_and_samples_the_rss(
    service_factory: Callable[..., RunningService], toy_data: Path
) -> None:
    service = service_factory(cache_bytes=1 << 20)
    options = _options(service, toy_data, "memory-pressure", tasks=60, duration_s=2.0)
    report, _ = run_load_test(options, "spartan loadtest run", lambda _: None)
    assert report["errors"] == {}
    server = report["server"]
    assert isinstance(server, dict)
    assert server["cache_evictions"] > 0, "60 tiny memories do not fit in 1 MiB"
    rss = report["server_rss"]
    assert isinstance(rss, dict)
    assert rss["max_bytes"] > 10 << 20
    assert rss["samples"], "sampled while the load ran"
    with pytest.raises(LoadTestError, match="tasks must be at least 1"):
        _options(service, toy_data, "memory-pressure", tasks=0)


def test_hot_swap_scenario_serves_every_version_without_errors(
    service_factory: Callable[..., RunningService], toy_data: Path
) -> None:
    service = service_factory()
    report, _ = run_load_test(_options(service, toy_data, "hot-swap", duration_s=12.0), "test", print)
    assert report["errors"] == {}
    swap = report["hot_swap"]
    assert isinstance(swap, dict)
    assert len(swap["uploads"]) >= 1
    assert len(swap["versions_served_for_swapped_task"]) >= 2, "the new version was served during the load"


def test_overload_sheds_with_429_and_nothing_else(
    service_factory: Callable[..., RunningService], toy_data: Path
) -> None:
    service = service_factory(queue_size=16, max_batch_size=4)
    report, _ = run_load_test(_options(service, toy_data, "overload", duration_s=4.0), "test", print)
    errors = report["errors"]
    assert isinstance(errors, dict)
    assert set(errors) <= {"429"}, f"overload must shed with 429 only, got {errors}"
    assert report["capacity_inst_per_min"]
    offered = report["offered_req_per_s"]
    assert isinstance(offered, dict)
    assert offered["sent"] > 0
    assert offered["target"] > 0


def test_load_tests_stay_on_loopback(toy_data: Path) -> None:
    with pytest.raises(LoadTestError, match="only target loopback"):
        check_loopback("http://10.0.0.7:8000")
    with pytest.raises(LoadTestError, match="only target loopback"):
        LoadGenerator("http://example.com", ["a"], ["text"], Zipf(1, 0, 0), LoadOptions())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"concurrency": 0}, "must be positive"),
        ({"duration_s": 0}, "duration must be"),
        ({"max_requests": 0}, "max"),
    ],
)
def test_load_options_are_validated(changes: dict[str, object], message: str) -> None:
    with pytest.raises(LoadTestError, match=message):
        LoadOptions(**changes)  # type: ignore[arg-type]
