"""Turn samples and two ``/metrics`` scrapes into the load test report (JSON) and its plot (PNG)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from loadtest.generator import DROPPED, Sample
from memories.atomic import write_figure


def scrape(text: str) -> dict[str, float]:
    """Flat ``name{labels}`` -> value of a Prometheus text exposition (only spartan_* series)."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("spartan_"):
                continue
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(sorted_latencies: Sequence[float], with_max: bool = True) -> dict[str, float | None]:
    """p50, p95, p99 (and max) of already sorted latencies, rounded to 0.1 ms; None when empty."""
    points = (("p50", 50), ("p95", 95), ("p99", 99), *((("max", 100),) if with_max else ()))
    return {
        name: None if (v := percentile(sorted_latencies, q)) is None else round(v, 4) for name, q in points
    }


def _server_side(before: dict[str, float], after: dict[str, float]) -> dict[str, object]:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    hits, misses = delta("spartan_cache_hits_total"), delta("spartan_cache_misses_total")
    batches, rows = delta("spartan_engine_batches_total"), delta("spartan_engine_rows_total")
    tokens, padded = delta("spartan_engine_tokens_total"), delta("spartan_engine_padded_tokens_total")
    prefix = "spartan_engine_batch_size_bucket{le="
    bounds = sorted(
        (float(key[len(prefix) : -1]), key) for key in after if key.startswith(prefix) and "+Inf" not in key
    )
    sizes = {}
    previous = 0.0
    for bound, key in bounds:  # cumulative buckets -> batches per bucket during the run
        cumulative = delta(key)
        if cumulative - previous:
            sizes[f"<={bound:g}"] = int(cumulative - previous)
        previous = cumulative
    return {
        "cache_hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
        "cache_evictions": int(delta("spartan_cache_evictions_total")),
        "cache_loads": int(delta("spartan_cache_loads_total")),
        "engine_batches": int(batches),
        "mean_batch_size": round(rows / batches, 2) if batches else None,
        "batch_sizes": sizes,
        "padding_efficiency": round(tokens / padded, 3) if padded else None,
        "precision": _precision(after),
    }


def _precision(metrics: dict[str, float]) -> str | None:
    """The backbone mode the server runs (``spartan_precision_info{mode=...}``), None if unknown."""
    prefix = "spartan_precision_info{"
    for key, value in metrics.items():
        if key.startswith(prefix) and value:
            labels = dict(part.split("=", 1) for part in key[len(prefix) : -1].split(","))
            return labels.get("mode")
    return None


def summarise(
    samples: Sequence[Sample], seconds: float, before: dict[str, float], after: dict[str, float]
) -> dict[str, object]:
    ok = [s for s in samples if s.status == 200]
    latencies = sorted(s.latency for s in ok)
    statuses = Counter(
        "dropped" if s.status == DROPPED else str(s.status) for s in samples if s.status != 200
    )
    instances = sum(s.inputs for s in ok)
    return {
        "seconds": round(seconds, 2),
        "requests": len(samples),
        "ok": len(ok),
        "instances": instances,
        "inst_per_min": round(60 * instances / seconds, 1) if seconds else 0.0,
        "latency_s": latency_summary(latencies),
        "errors": dict(sorted(statuses.items())),
        "versions_seen": sorted({s.version for s in ok if s.version is not None}),
        "server": _server_side(before, after),
    }


def timeline(samples: Sequence[Sample], seconds: float) -> dict[str, list[float]]:
    """Per whole second of the run: instances answered OK and requests refused with 429."""
    bins = max(1, math.ceil(seconds))
    ok, shed = [0.0] * bins, [0.0] * bins
    for sample in samples:
        index = min(bins - 1, int(sample.start + sample.latency))
        if sample.status == 200:
            ok[index] += sample.inputs
        elif sample.status == 429:
            shed[index] += 1
    return {"ok_inst_per_s": ok, "shed_per_s": shed}


def plot(samples: Sequence[Sample], seconds: float, title: str, path: Path) -> None:
    """Throughput over time and the latency distribution, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = timeline(samples, seconds)
    latencies = sorted(s.latency for s in samples if s.status == 200)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ok = series["ok_inst_per_s"]
    xs = list(range(len(ok)))
    window = 10  # seconds: slow profiles answer a whole batch at once, every few seconds
    smooth = [60 * sum(ok[max(0, i - window + 1) : i + 1]) / min(window, i + 1) for i in xs]
    left.plot(xs, [60 * v for v in ok], alpha=0.35, label="answered (inst/min, 1 s bins)")
    left.plot(xs, smooth, label=f"answered ({window} s moving mean)")
    if any(series["shed_per_s"]):
        left.plot(xs, [60 * v for v in series["shed_per_s"]], label="shed with 429 (req/min)")
    left.set(xlabel="seconds", ylabel="per minute", title="throughput")
    left.legend()
    if latencies:
        right.hist(latencies, bins=40)
        for name, q, style in (("p50", 50, "-"), ("p95", 95, "--"), ("p99", 99, ":")):
            value = percentile(latencies, q)
            assert value is not None
            right.axvline(value, color="k", linestyle=style, label=f"{name} {value:.3f} s")
        right.legend()
    right.set(xlabel="latency (s)", ylabel="requests", title="latency of answered requests")
    figure.suptitle(title)
    figure.tight_layout()
    write_figure(figure, path, dpi=100)
    plt.close(figure)
