"""The noisy-neighbour load test end to end: a real server with two tenants (tiny backbone)."""

from __future__ import annotations

from pathlib import Path

from loadtest.neighbours import NeighbourOptions, plot_neighbours, run_noisy_neighbour


def test_noisy_neighbour_reports_both_tenants_in_both_phases(toy_data: Path, tmp_path: Path) -> None:
    options = NeighbourOptions(
        data=toy_data,
        texts="toy",
        backbone="roberta-tiny-random",
        duration_s=2.0,
        flood_clients=8,
        flood_texts=4,
        light_rate=10.0,
    )
    messages: list[str] = []
    report, samples = run_noisy_neighbour(options, "spartan loadtest noisy-neighbour", messages.append)
    phases = report["phases"]
    assert isinstance(phases, dict)
    assert set(phases["alone"]) == {"light"}
    assert set(phases["flooded"]) == {"light", "flood"}
    for phase in ("alone", "flooded"):
        light = phases[phase]["light"]
        assert light["statuses"] == {"200": light["requests"]}, "every light request answered"
        assert 0 < light["latency_s"]["p50"] <= light["latency_s"]["p95"]
    assert phases["flooded"]["flood"]["inst_per_min"] > phases["flooded"]["light"]["inst_per_min"]
    engine = report["engine_under_flood"]
    assert isinstance(engine, dict)
    assert engine["batches"] > 0
    assert engine["full_batch_seconds"] >= engine["mean_batch_seconds"] > 0
    assert engine["server_mean_latency_s"]["light"] > 0, "the server's own per-tenant latency"
    target = report["target"]
    assert isinstance(target, dict)
    assert target["light_429"] == 0
    assert {"met_full_batch", "met_mean_batch", "bound_full_batch_s"} <= set(target)
    assert report["server_exit"] is None
    assert any("phase flooded" in m for m in messages)
    plot_neighbours(samples, "test", tmp_path / "n.png")
    assert (tmp_path / "n.png").stat().st_size > 10_000
