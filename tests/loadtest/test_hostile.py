"""The slow and hostile clients load test end to end: a real server (tiny backbone), every phase,
with timeouts short enough that the server is seen closing each kind of hostile connection."""

from __future__ import annotations

from pathlib import Path

from loadtest.hostile import PHASES, HostileOptions, plot_hostile, run_hostile_clients


def test_every_phase_reports_the_light_client_and_what_the_server_did(toy_data: Path, tmp_path: Path) -> None:
    options = HostileOptions(
        data=toy_data,
        texts="toy",
        backbone="roberta-tiny-random",
        duration_s=2.5,
        light_rate=8.0,
        slow_headers=5,
        idle=50,
        slow_bodies=5,
        non_readers=5,
        server_settings=(("header_timeout_s", "1"), ("body_timeout_s", "1"), ("send_timeout_s", "1")),
    )
    report, samples = run_hostile_clients(options, "spartan loadtest hostile-clients", lambda _: None)
    phases = report["phases"]
    assert isinstance(phases, dict)
    assert list(phases) == list(PHASES)
    for name in PHASES:
        light = phases[name]["light"]
        assert light["statuses"] == {"200": light["requests"]}, f"{name}: every light request answered"
    did = {name: phases[name]["server_did"] for name in PHASES}
    assert did["slow-headers"].get("slow-headers 408", 0) > 0, did
    assert did["idle"].get("idle 408", 0) > 0, did
    assert did["slow-bodies"].get("slow-body 408", 0) > 0, did
    assert did["non-readers"] == {"non-reader held": 5}
    target = report["target"]
    assert isinstance(target, dict)
    assert {"light_p95_normal_s", "met", *PHASES[1:]} <= set(target)
    assert report["server_exit"] is None
    plot_hostile(samples, "hostile", tmp_path / "hostile.png")
    assert (tmp_path / "hostile.png").stat().st_size > 0
