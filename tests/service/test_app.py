"""Start-up choices of the app: the backbone's precision mode."""

from __future__ import annotations

from pathlib import Path

from memories.backbones import load_backbone
from memories.precision import set_precision
from service.launcher import free_port
from service.settings import ServiceSettings
from tests.conftest import make_memfile
from tests.service.conftest import start_service


def test_an_int8_service_serves_a_memory_trained_on_fp32(tmp_path: Path) -> None:
    fp32 = load_backbone("roberta-tiny-random")
    int8 = set_precision(load_backbone("roberta-tiny-random"), "int8")
    settings = ServiceSettings(
        backbone=int8.name, precision="int8", registry_dir=tmp_path / "registry", port=free_port(), threads=1
    )
    running, thread = start_service(settings, int8)
    try:
        with running.client() as http:
            data = make_memfile(fp32).to_bytes()
            octet = {"content-type": "application/octet-stream"}
            put = http.put("/v1/memories/t", content=data, headers=octet)
            assert put.status_code == 200, put.text
            answer = http.post("/v1/t/classify", json={"inputs": ["fine", "dull"]})
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["predictions"]) == 2
    finally:
        running.server.should_exit = True
        thread.join(30)
