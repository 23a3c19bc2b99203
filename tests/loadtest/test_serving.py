"""Serving numbers end to end: real server processes, file and Redis registries, tiny backbone."""

from __future__ import annotations

import pytest
import redis

from loadtest.errors import LoadTestError
from loadtest.serving import ServingOptions, histogram_quantile_bound, run_serving
from memories.backbone import Backbone


def test_every_measurement_runs_against_real_servers(roberta_tiny: Backbone) -> None:
    options = ServingOptions(
        backbone=roberta_tiny.name,
        cold_tasks=4,
        swaps=3,
        density_tasks=3,
        sweep_tasks=80,  # a tiny-backbone memory is 16.6 kB in fp16: 63 fit in the 1 MiB cache
        sweep_cache_mb=1,
        sample_every=40,
    )
    messages: list[str] = []
    report = run_serving(roberta_tiny, options, messages.append)
    for registry in ("file", "redis"):
        cold = report["cold"][registry]  # type: ignore[index]
        assert cold["cache_loads"] == 4, "B never saw the uploads: every first request loads"
        assert cold["server_load_mean_ms"] > 0
        assert cold["server_load_p95_at_most_ms"] >= cold["server_load_mean_ms"], "4 loads: p95 is the max"
        assert cold["cold"]["p50_ms"] > 0
        assert cold["warm"]["p50_ms"] > 0
        swap = report["swap"][registry]  # type: ignore[index]
        assert swap["swaps"] == 3
        assert 0 < swap["propagation"]["p50_ms"] <= swap["propagation"]["max_ms"]
    density = report["density"]  # type: ignore[index]
    fp32, fp16 = density["float32"], density["float16"]
    assert fp16["resident_bytes_per_task"] * 2 == fp32["resident_bytes_per_task"], "fp16 files stay fp16"
    assert fp16["tasks_per_gib_of_cache"] > fp32["tasks_per_gib_of_cache"]
    sweep = report["sweep"]  # type: ignore[index]
    assert [s["tasks"] for s in sweep["samples"]] == [0, 40, 80]
    assert sweep["cache_evictions"] > 0
    assert sweep["cache_resident_bytes"] <= 1024 * 1024
    assert any("sweep: 80/80" in m for m in messages), "progress is shown while it runs"
    assert not redis.Redis.from_url(options.redis_url).keys("perf-*"), "the Redis registries are removed"


def test_unknown_measurement_is_refused() -> None:
    with pytest.raises(LoadTestError, match="choose from cold, swap, density, sweep"):
        ServingOptions(measurements=("speed",))


def _exposition(counts: dict[str, int], total: int) -> str:
    name = "spartan_cache_load_duration_seconds"
    lines = [f"# TYPE {name} histogram"]
    lines += [f'{name}_bucket{{le="{le}"}} {n}' for le, n in counts.items()]
    lines += [f'{name}_bucket{{le="+Inf"}} {total}', f"{name}_count {total}", f"{name}_sum 1.0"]
    return "\n".join(lines) + "\n"


def test_histogram_quantile_bound_reads_the_bucket_between_two_scrapes() -> None:
    before = _exposition({"0.01": 5, "0.05": 5, "0.1": 5}, 5)
    after = _exposition({"0.01": 6, "0.05": 20, "0.1": 25}, 25)  # 20 new loads: 1, 14, 5 per bucket
    assert histogram_quantile_bound(before, after, "spartan_cache_load_duration_seconds", 0.5) == 0.05
    assert histogram_quantile_bound(before, after, "spartan_cache_load_duration_seconds", 0.95) == 0.1
    assert histogram_quantile_bound(after, after, "spartan_cache_load_duration_seconds", 0.95) is None
