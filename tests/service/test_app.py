"""Start-up choices of the app: the backbone's precision mode, compiled layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.launcher import free_port
from memories.backbones import load_backbone
from memories.precision import set_precision
from service.settings import ServiceSettings
from tests.conftest import make_memfile
from tests.service.conftest import RunningService, start_service


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


def _scores(running: RunningService, data: bytes, texts: list[str]) -> list[dict[str, float]]:
    with running.client() as http:
        put = http.put("/v1/memories/t", content=data, headers={"content-type": "application/octet-stream"})
        assert put.status_code == 200, put.text
        answer = http.post("/v1/t/classify", json={"inputs": texts})
        assert answer.status_code == 200, answer.text
        return [p["scores"] for p in answer.json()["predictions"]]


def test_a_compiled_service_answers_like_an_eager_one(tmp_path: Path) -> None:
    data = make_memfile(load_backbone("roberta-tiny-random")).to_bytes()
    texts = ["fine", "a rather dull and long second text", "ok", "three"]
    answers = []
    for compiled in (False, True):
        backbone = load_backbone("roberta-tiny-random")  # compiling changes the backbone in place
        settings = ServiceSettings(
            backbone=backbone.name,
            registry_dir=tmp_path / f"registry-{compiled}",
            port=free_port(),
            threads=1,
            max_batch_size=4,
            compile=compiled,
            compile_batch_sizes=[2, 4],
            compile_lengths=[64, 128],
        )
        running, thread = start_service(settings, backbone)
        try:
            assert backbone.compiled == compiled
            answers.append(_scores(running, data, texts))
        finally:
            running.server.should_exit = True
            thread.join(30)
    eager, compiled_scores = answers
    for a, b in zip(eager, compiled_scores, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_compile_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="compile needs precision fp32"):
        ServiceSettings(compile=True, precision="int8")
    with pytest.raises(ValueError, match="at least max_batch_size=32"):
        ServiceSettings(compile=True, compile_batch_sizes=[1, 8])
