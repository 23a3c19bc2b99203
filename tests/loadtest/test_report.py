from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.generator import DROPPED, NO_ANSWER, Sample
from loadtest.report import percentile, plot, scrape, summarise, timeline

METRICS = """\
# TYPE spartan_cache_hits counter
spartan_cache_hits_total {hits}
# TYPE spartan_cache_misses counter
spartan_cache_misses_total {misses}
# TYPE spartan_engine_batches counter
spartan_engine_batches_total {batches}
# TYPE spartan_engine_rows counter
spartan_engine_rows_total {rows}
# TYPE spartan_engine_batch_size histogram
spartan_engine_batch_size_bucket{{le="16"}} {small}
spartan_engine_batch_size_bucket{{le="32"}} {batches}
spartan_engine_batch_size_bucket{{le="+Inf"}} {batches}
spartan_engine_batch_size_count {batches}
spartan_engine_batch_size_sum {rows}
"""


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 100) == 100.0
    assert percentile([], 50) is None


def test_summary_counts_answers_errors_and_server_deltas() -> None:
    samples = [Sample(0.1 * i, 0.2, 200, 2, 0, 1) for i in range(10)]
    samples += [
        Sample(1.0, 0.01, 429, 1, 1),
        Sample(1.1, 5.0, NO_ANSWER, 1, 1),
        Sample(1.2, 0.0, DROPPED, 0, 1),
    ]
    before = scrape(METRICS.format(hits=10, misses=2, batches=4, rows=100, small=1))
    after = scrape(METRICS.format(hits=28, misses=4, batches=6, rows=160, small=1))
    report = summarise(samples, 2.0, before, after)
    assert (report["requests"], report["ok"], report["instances"]) == (13, 10, 20)
    assert report["inst_per_min"] == 600.0
    assert report["errors"] == {"0": 1, "429": 1, "dropped": 1}
    assert report["latency_s"] == {"p50": 0.2, "p95": 0.2, "p99": 0.2, "max": 0.2}
    server = report["server"]
    assert isinstance(server, dict)
    assert server["cache_hit_rate"] == pytest.approx(18 / 20)
    assert server["mean_batch_size"] == 30.0
    assert server["batch_sizes"] == {"<=32": 2}


def test_timeline_bins_answers_by_completion_second() -> None:
    samples = [Sample(0.2, 0.5, 200, 3, 0), Sample(0.9, 0.5, 200, 1, 0), Sample(1.5, 0.1, 429, 1, 0)]
    series = timeline(samples, 2.0)
    assert series["ok_inst_per_s"] == [3.0, 1.0]
    assert series["shed_per_s"] == [0.0, 1.0]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    samples = [Sample(0.1 * i, 0.05 + 0.01 * (i % 7), 200, 1, 0) for i in range(50)]
    path = tmp_path / "plots" / "run.png"
    plot(samples, 5.0, "steady", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
