"""The soak and overload harness: schedules, the RSS slope, and both runs end to end against a real
server (tiny backbone, seconds instead of minutes)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from loadtest.errors import LoadTestError
from loadtest.soak import (
    SoakOptions,
    overload_schedule,
    plot_soak,
    rss_slope_mib_per_min,
    run_soak,
    soak_schedule,
)

MIB = 1 << 20


def test_the_soak_schedule_covers_the_run_and_keeps_bursts_out_of_both_comparison_periods() -> None:
    options = SoakOptions(data=Path("."), duration_s=1800, burst_every_s=180, burst_s=20)
    schedule = soak_schedule(options)
    assert schedule[0].start_s == 0
    for before, after in itertools.pairwise(schedule):
        assert after.start_s == pytest.approx(before.start_s + before.duration_s), "no gap, no overlap"
    assert schedule[-1].start_s + schedule[-1].duration_s == pytest.approx(1800)
    bursts = [s for s in schedule if s.burst]
    assert len(bursts) == 8
    assert all(s.load == 2.0 and s.duration_s == 20 for s in bursts)
    assert bursts[0].start_s >= options.warmup_s + options.compare_s
    last_end = bursts[-1].start_s + bursts[-1].duration_s
    assert last_end + options.settle_s <= 1800 - options.compare_s


def test_the_overload_schedule_is_normal_then_twice_capacity_then_normal() -> None:
    schedule = overload_schedule(SoakOptions(data=Path("."), kind="overload", normal_s=30, overload_s=600))
    assert [(s.start_s, s.duration_s, s.load, s.burst) for s in schedule] == [
        (0, 30, 0.6, False),
        (30, 600, 2.0, True),
        (630, 30, 0.6, False),
    ]


def test_options_that_cannot_make_a_report_are_refused() -> None:
    with pytest.raises(LoadTestError, match="too short for a warm-up"):
        SoakOptions(data=Path("."), duration_s=200)
    with pytest.raises(LoadTestError, match="base load < burst load"):
        SoakOptions(data=Path("."), base_load=2.0)


def test_rss_slope_is_the_least_squares_line_and_skips_unanswered_samples() -> None:
    samples: list[dict[str, float | None]] = [
        {"t": 60.0 * i, "rss_bytes": (500 + 2 * i) * MIB, "queue_depth": 0, "cache_bytes": 0}
        for i in range(10)
    ]
    samples.append({"t": 700.0, "rss_bytes": None, "queue_depth": None, "cache_bytes": None})
    assert rss_slope_mib_per_min(samples, 0, 1e9) == pytest.approx(2.0)
    assert rss_slope_mib_per_min(samples, 0, 60) is None, "fewer than three points"


def _short(toy_data: Path, **changes: object) -> SoakOptions:
    return SoakOptions(
        data=toy_data,
        texts="toy",
        backbone="roberta-tiny-random",
        tenants=2,
        tasks_per_tenant=3,
        texts_per_request=2,
        capacity_probe_s=2,
        sample_every_s=1,
        **changes,  # type: ignore[arg-type]
    )


def test_a_short_soak_runs_every_job_and_reports_its_targets(toy_data: Path, tmp_path: Path) -> None:
    options = _short(
        toy_data,
        duration_s=16,
        warmup_s=4,
        compare_s=4,
        burst_every_s=6,
        burst_s=2,
        settle_s=1,
        hot_swap_every_s=1,
        churn_every_s=1.5,
        churn_keep=2,
    )
    report = run_soak(options, "spartan loadtest soak", lambda _: None)
    assert report["server_exit"] is None
    jobs = report["registry_jobs"]
    assert isinstance(jobs, dict)
    assert jobs["hot_swaps"] >= 5, jobs
    assert jobs["uploads"] >= 4, jobs
    assert jobs["deletes"] >= 2, jobs
    assert jobs["errors"] == {}, jobs["failures"]
    statuses = report["statuses"]
    assert isinstance(statuses, dict)
    assert statuses.get("200", 0) > 20
    assert not {code for code in statuses if not code.isdigit() or int(code) >= 500}, statuses
    timeline = report["timeline"]
    assert isinstance(timeline, list)
    assert len(timeline) >= 16
    assert all(row["rss_mib"] for row in timeline[:14]), "the server's RSS is sampled every window"
    targets = report["targets"]
    assert isinstance(targets, dict)
    assert targets["met"]["no_5xx"]
    assert targets["met"]["no_dropped_connection"]
    assert targets["p95_after_warmup_s"] is not None
    assert targets["p95_at_end_s"] is not None
    assert targets["rss_slope_mib_per_min_after_warmup"] is not None
    plot_soak(report, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").stat().st_size > 0


def test_a_short_overload_sheds_with_retry_after_and_stays_within_its_queue(toy_data: Path) -> None:
    options = _short(
        toy_data,
        kind="overload",
        normal_s=3,
        overload_s=5,
        burst_load=4.0,
        recover_within_s=3,
        server_settings=(("queue_size", "8"), ("max_batch_size", "4")),
    )
    report = run_soak(options, "spartan loadtest overload", lambda _: None)
    assert report["server_exit"] is None
    targets = report["targets"]
    assert isinstance(targets, dict)
    assert targets["shed_429_during_overload"] > 0, "4x capacity into a queue of 8 texts sheds"
    assert targets["shed_without_retry_after"] == 0
    assert targets["queue_depth_max"] <= 8
    assert targets["5xx"] == 0
    assert targets["no_answer"] == 0
    met = targets["met"]
    assert met["every_shed_429_has_retry_after"]
    assert met["queue_within_bound"]
    assert met["no_5xx"]
    assert met["admitted_p99_under_deadline"]
    admission = report["admission"]
    assert isinstance(admission, dict)
    tenants = admission["tenants"]
    assert set(tenants) == {f"t{i}" for i in range(options.tenants)}, "the server's view of every tenant"
    for numbers in tenants.values():
        assert numbers["admitted"] > 0
        assert numbers["late"] == 0
        assert 0 < numbers["mean_wait_s"] < numbers["mean_left_s"]
