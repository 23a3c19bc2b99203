"""spartan loadtest http-bench runs both sides and writes its report (a smoke test, no timing asserted)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spartan_cli.main import main


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bench_http_report(tmp_path: Path, capsys: pytest.CaptureFixture[str], precision: str) -> None:
    out = tmp_path / "http.json"
    argv = [
        "loadtest",
        "http-bench",
        "--precision",
        precision,
        "--backbone",
        "roberta-tiny-random",
        "--requests",
        "16",
        "--concurrency",
        "8",
        "--tasks",
        "3",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["inst_per_min"]) == {"in-process", "http"}
    assert all(v > 0 for v in report["inst_per_min"].values())
    assert report["http_over_in_process"] > 0
    assert report["options"]["precision"] == precision
    assert report["command"].startswith("spartan loadtest http-bench")
    assert "| HTTP / in-process |" in capsys.readouterr().out


def test_bench_http_pinned_puts_server_and_load_on_separate_cpus(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("pinning needs 2 CPUs")
    out = tmp_path / "pinned.json"
    argv = [
        "loadtest",
        "http-bench",
        "--pin",
        "--backbone",
        "roberta-tiny-random",
        "--requests",
        "8",
        "--tasks",
        "2",
        "--rounds",
        "1",
        "--json",
        str(out),
    ]
    assert main(argv) == 0
    assert json.loads(out.read_text())["pinned"] == {"server": cpus[:1], "client": cpus[1:]}
    assert sorted(os.sched_getaffinity(0)) == cpus, "the calling thread's CPUs are restored"


def test_bench_http_rejects_bad_texts_per_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["loadtest", "http-bench", "--backbone", "roberta-tiny-random", "--texts-per-request", "0"]) == 2
    )
    assert "texts_per_request must be 1-64" in capsys.readouterr().err
