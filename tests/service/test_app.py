"""Start-up choices of the app: the backbone's precision mode, compiled layers."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.launcher import free_port
from memories.backbones import load_backbone
from memories.fused import compiler_available
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


def _status(running: RunningService) -> tuple[dict[str, object], str]:
    with running.client() as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        return ready.json()["precision"], http.get("/metrics").text


@pytest.mark.parametrize("mode", ["fp32", "bf16", "int8"])
def test_an_explicit_precision_wins_and_serves_an_fp32_memory(tmp_path: Path, mode: str) -> None:
    settings = ServiceSettings(
        backbone="roberta-tiny-random",
        precision=mode,
        registry_dir=tmp_path / "r",
        port=free_port(),
        threads=1,
    )
    running, thread = start_service(settings, None)
    try:
        data = make_memfile(load_backbone("roberta-tiny-random")).to_bytes()
        assert len(_scores(running, data, ["fine", "dull"])) == 2
        precision, metrics = _status(running)
        assert (precision["setting"], precision["mode"], precision["candidates"]) == (mode, mode, [])
        assert f'spartan_precision_info{{mode="{mode}",setting="{mode}"}} 1.0' in metrics
        # fused_routing auto: one compiled routing kernel on a bf16 backbone, where a compiler is
        routing = "fused" if mode == "bf16" and compiler_available() else "eager"
        assert str(precision["routing"]).split(" ")[0] == routing, precision["routing"]
        assert f'spartan_memory_routing_info{{routing="{routing}"}} 1.0' in metrics
    finally:
        running.server.should_exit = True
        thread.join(30)


def test_auto_measures_at_start_up_and_says_what_it_chose(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    make_memfile(load_backbone("roberta-tiny-random")).save(seeds / "probe.safetensors")
    settings = ServiceSettings(
        backbone="roberta-tiny-random",
        registry_dir=tmp_path / "r",
        seed_dir=seeds,
        cache_dir=tmp_path / "cache",
        port=free_port(),
        threads=1,
    )
    assert settings.precision == "auto", "auto is the default"
    running, thread = start_service(settings, None)
    try:
        precision, metrics = _status(running)
        candidates = {c["mode"]: c for c in precision["candidates"]}  # type: ignore[attr-defined]
        assert precision["setting"] == "auto"
        assert precision["mode"] in {m for m, c in candidates.items() if c["passed"]}
        assert candidates["fp32"]["reason"] == "reference"
        assert precision["cpu"]
        assert precision["decided_in_s"] is not None
        assert precision["cached"] is False, "the first start on this host measures"
        assert list((tmp_path / "cache" / "precision").glob("*.json")), "and keeps its decision"
        assert f'spartan_precision_info{{mode="{precision["mode"]}",setting="auto"}} 1.0' in metrics
        with running.client() as http:
            answer = http.post("/v1/probe/classify", json={"inputs": ["fine"]})
            assert answer.status_code == 200, answer.text
    finally:
        running.server.should_exit = True
        thread.join(30)
