"""The OpenAPI spec is the contract: schemathesis, every check and phase, against a real server.

The server holds a real memory under the task id the spec gives as its example (``sst2``), and
requires API keys, so schemathesis reaches classify and checks that missing or wrong keys are
refused. Its configuration (tests/service/api/schemathesis.toml) says where a schema-valid request
may still be refused, and why.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from memories.backbone import Backbone
from spartan_cli.main import main
from tests.conftest import make_memfile
from tests.service.conftest import RunningService

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


def _classify_answers(http: httpx.Client) -> float:
    metrics = http.get("/metrics").text
    line = next(
        (
            line
            for line in metrics.splitlines()
            if line.startswith(
                'spartan_http_requests_total{method="POST",route="/v1/{task}/classify",status="200"}'
            )
        ),
        "x 0",
    )
    return float(line.rsplit(" ", 1)[1])


def test_schemathesis_finds_no_failure(
    service_factory: Callable[..., RunningService],
    roberta_tiny: Backbone,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = tmp_path / "keys.json"
    assert main(["keys", "add", "--file", str(keys), "--tenant", "local", "--role", "admin"]) == 0
    key = capsys.readouterr().out.strip()
    service = service_factory(api_keys_file=keys, max_inputs=8, max_text_chars=300)
    http = httpx.Client(base_url=service.url, headers={"authorization": f"Bearer {key}"}, timeout=30)
    put = http.put(
        "/v1/memories/sst2",
        content=make_memfile(roberta_tiny).to_bytes(),
        headers={"content-type": "application/octet-stream"},
    )
    assert put.status_code == 200, put.text
    run = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(CONFIG),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "25",
            "--seed",
            "2026",
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {key}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5000:]
    assert "Stateful" in run.stdout, "the stateful phase ran"
    assert _classify_answers(http) > 0, "schemathesis reached classify with the real memory"
