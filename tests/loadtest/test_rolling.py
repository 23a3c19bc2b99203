"""spartan loadtest rolling-restart end to end on a tiny backbone: two replicas on the shared Redis
behind the shipped haproxy config, each restarted once under load (a smoke test; the report with
its numbers is docs/reliability.md section 3)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loadtest.rolling import HAPROXY_CONFIG, RollingOptions, run_rolling_restart

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)")
def test_a_rolling_restart_behind_haproxy_answers_every_request(toy_data: Path) -> None:
    options = RollingOptions(
        data=toy_data,
        texts="toy",
        backbone="roberta-tiny-random",
        haproxy_config=ROOT / HAPROXY_CONFIG,
        concurrency=4,
        settle_s=1.5,
        drain_s=1.0,
    )
    report, samples, events = run_rolling_restart(options, "spartan loadtest rolling-restart", lambda _: None)
    assert [(e.replica, e.event) for e in events] == [
        (name, what) for name in ("a", "b") for what in ("SIGTERM", "exited", "ready")
    ]
    assert samples, "load ran through the proxy"
    assert report["failed_requests"] == 0, report["errors"]
    assert report["target_zero_failed"] is True
