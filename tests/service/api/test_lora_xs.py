"""LoRA-XS memories over HTTP: served beside SPARTAN ones, refused with a reason where they cannot be."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from memories.backbone import Backbone
from memories.config import LoraXSConfig
from memories.loraxs import prepare_factors
from memories.model import run_batch
from tests.conftest import make_lora_memfile, make_memfile
from tests.service.conftest import RunningService

OCTET = {"content-type": "application/octet-stream"}
TEXTS = ["a fine film", "dull and long, far too long", "ok then"]


def _scores(http: httpx.Client, task: str, text: str, **extra: object) -> dict[str, float]:
    response = http.post(f"/v1/{task}/classify", json={"inputs": text, **extra})
    assert response.status_code == 200, response.text
    scores: dict[str, float] = response.json()["predictions"][0]["scores"]
    return scores


def test_lora_xs_and_spartan_tasks_serve_side_by_side_as_each_alone(
    service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    http = service_factory(max_wait_ms=20.0).client()
    files = {
        "lora": make_lora_memfile(roberta_tiny, LoraXSConfig(rank=4), seed=1),
        "lora-narrow": make_lora_memfile(roberta_tiny, LoraXSConfig(rank=2, sites=("value",)), seed=2),
        "spartan": make_memfile(roberta_tiny, seed=3),
    }
    for task, memfile in files.items():
        put = http.put(f"/v1/memories/{task}", content=memfile.to_bytes(), headers=OCTET)
        assert put.status_code == 200, put.text
        assert put.json()["metadata"]["kind"] == memfile.metadata.kind
    jobs = [(task, text) for task in files for text in TEXTS] * 3
    with ThreadPoolExecutor(8) as pool:  # concurrent requests of every task share batches
        answers = list(pool.map(lambda job: _scores(http, *job), jobs))
    prepare_factors(roberta_tiny)
    for (task, text), scores in zip(jobs, answers, strict=True):
        logits = run_batch(roberta_tiny, roberta_tiny.tokenize([text]), [files[task].to_packed()]).logits[0]
        want = torch.softmax(logits, -1).tolist()
        assert list(scores.values()) == pytest.approx(want, abs=1e-4), f"{task}: {text!r}"
    explained = http.post("/v1/lora/classify", json={"inputs": "x", "explain": "last_layer"}).json()
    assert explained["predictions"][0]["parents"] is None, "a LoRA-XS memory has no parents"
    metrics = http.get("/metrics").text
    assert "spartan_engine_batches_total" in metrics


@pytest.mark.parametrize(
    ("max_rank", "message"),
    [
        (0, "this backbone serves no LoRA-XS memories"),
        (2, "rank-4 LoRA-XS memory; this backbone keeps LoRA-XS factors up to rank 2"),
    ],
)
def test_a_lora_xs_memory_the_server_cannot_serve_is_refused_and_not_stored(
    service_factory: Callable[..., RunningService], roberta_tiny: Backbone, max_rank: int, message: str
) -> None:
    http = service_factory(lora_xs_max_rank=max_rank).client()
    data = make_lora_memfile(roberta_tiny, LoraXSConfig(rank=4)).to_bytes()
    refused = http.put("/v1/memories/lora", content=data, headers=OCTET)
    assert refused.status_code == 409
    assert message in refused.json()["detail"]
    assert http.get("/v1/memories/lora").status_code == 404, "nothing stored"
    spartan = http.put("/v1/memories/s", content=make_memfile(roberta_tiny).to_bytes(), headers=OCTET)
    assert spartan.status_code == 200, "SPARTAN memories are served as ever"
