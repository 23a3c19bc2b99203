"""Canary and shadow trials of a candidate version on a real server: which version answers, what
the trial reports, promotion, abort, and every refusal."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from memories.backbone import Backbone
from tests.conftest import make_memfile
from tests.service.conftest import RunningService, eventually

OCTET = {"content-type": "application/octet-stream"}
TEXTS = ["a fine film", "dull", "ok then", "so so"]


@pytest.fixture
def http(service_factory: Callable[..., RunningService], roberta_tiny: Backbone) -> httpx.Client:
    client = service_factory().client()
    put = client.put("/v1/memories/t", content=make_memfile(roberta_tiny, seed=1).to_bytes(), headers=OCTET)
    assert put.status_code == 200
    return client


def _stage(http: httpx.Client, data: bytes, **params: object) -> httpx.Response:
    return http.put("/v1/memories/t/candidate", content=data, headers=OCTET, params=params)


def _versions(http: httpx.Client, rounds: int = 10) -> list[int]:
    return [http.post("/v1/t/classify", json={"inputs": TEXTS}).json()["version"] for _ in range(rounds)]


def test_a_full_canary_serves_the_candidate_and_compares_it_with_the_current(
    http: httpx.Client, roberta_tiny: Backbone
) -> None:
    staged = _stage(http, make_memfile(roberta_tiny, seed=2).to_bytes(), mode="canary", share=1.0)
    assert staged.status_code == 200, staged.text
    body = staged.json()
    assert (body["current"], body["rollout"]["version"], body["rollout"]["mode"]) == (1, 2, "canary")
    assert http.get("/v1/memories/t").json()["rollout"]["version"] == 2
    assert set(_versions(http)) == {2}, "share 1.0: every request is the candidate's"

    def compared() -> bool:
        return http.get("/v1/memories/t/candidate").json()["replica"]["compared_rows"] == 40

    eventually(compared, "the current version scored every canary request in the background")
    replica = http.get("/v1/memories/t/candidate").json()["replica"]
    assert replica["served"]["candidate"]["requests"] == 10
    assert replica["served"]["current"]["requests"] == 0
    assert replica["scored"]["current"]["requests"] == 10
    assert 0.0 <= replica["agreement"] <= 1.0
    assert replica["mean_difference"] > 0, "two different memories differ"
    metrics = http.get("/metrics").text
    assert 'spartan_trial_compared_rows_total{candidate="2",task="t",tenant="local"} 40.0' in metrics


def test_a_shadow_changes_no_answer_and_an_identical_candidate_agrees_fully(
    http: httpx.Client, roberta_tiny: Backbone
) -> None:
    before = http.post("/v1/t/classify", json={"inputs": TEXTS}).json()
    same = http.get("/v1/memories/t/versions/1/file").content
    assert _stage(http, same, mode="shadow").status_code == 200
    answers = [http.post("/v1/t/classify", json={"inputs": TEXTS}).json() for _ in range(5)]
    assert all(answer == before for answer in answers), "a shadow trial changes no answer"

    def compared() -> bool:
        return http.get("/v1/memories/t/candidate").json()["replica"]["compared_rows"] == 20

    eventually(compared, "the candidate scored every request in the background")
    replica = http.get("/v1/memories/t/candidate").json()["replica"]
    assert (replica["agreement"], replica["mean_difference"]) == (1.0, 0.0)
    assert replica["scored"]["candidate"]["requests"] == 5


def test_a_canary_share_of_zero_never_serves_the_candidate(
    http: httpx.Client, roberta_tiny: Backbone
) -> None:
    _stage(http, make_memfile(roberta_tiny, seed=2).to_bytes(), mode="canary", share=0.0)
    assert set(_versions(http)) == {1}


def test_promote_and_abort(http: httpx.Client, roberta_tiny: Backbone) -> None:
    _stage(http, make_memfile(roberta_tiny, seed=2).to_bytes(), mode="shadow")
    stale = http.post("/v1/memories/t/candidate/promote", headers={"if-match": "2"})
    assert stale.status_code == 412, "If-Match names the current version, 1"
    promoted = http.post("/v1/memories/t/candidate/promote", headers={"if-match": "1"})
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["version"], promoted.json()["rollout"]) == (2, None)
    assert set(_versions(http, 3)) == {2}
    assert http.get("/v1/memories/t/candidate").status_code == 404

    _stage(http, make_memfile(roberta_tiny, seed=3).to_bytes(), mode="canary", share=1.0)
    assert set(_versions(http, 3)) == {3}
    assert http.delete("/v1/memories/t/candidate").status_code == 204
    assert set(_versions(http, 3)) == {2}, "aborted: the current version serves again"
    assert [v["version"] for v in http.get("/v1/memories/t/versions").json()["items"]] == [2, 1], (
        "an aborted candidate is not kept"
    )
    assert http.delete("/v1/memories/t/candidate").status_code == 404


def test_an_upload_ends_the_trial(http: httpx.Client, roberta_tiny: Backbone) -> None:
    _stage(http, make_memfile(roberta_tiny, seed=2).to_bytes(), mode="canary", share=1.0)
    http.put("/v1/memories/t", content=make_memfile(roberta_tiny, seed=4).to_bytes(), headers=OCTET)
    assert set(_versions(http, 3)) == {3}
    assert http.get("/v1/memories/t").json()["rollout"] is None


def test_refusals(http: httpx.Client, roberta_tiny: Backbone, tiny_backbones: dict[str, Backbone]) -> None:
    good = make_memfile(roberta_tiny, seed=2).to_bytes()
    cases = [
        (http.put("/v1/memories/nope/candidate", content=good, headers=OCTET), 404, "task 'nope' not found"),
        (_stage(http, b"not a memory"), 422, "not a safetensors file"),
        (_stage(http, make_memfile(tiny_backbones["bert-tiny-random"]).to_bytes()), 409, "retrain it"),
        (_stage(http, good, mode="blue-green"), 422, "query mode"),
        (_stage(http, good, share=1.5), 422, "query share"),
        (http.put("/v1/memories/t/candidate", content=good), 415, "application/octet-stream"),
        (http.get("/v1/memories/t/candidate"), 404, "no candidate on trial"),
        (http.post("/v1/memories/t/candidate/promote"), 404, "no candidate on trial"),
    ]
    for response, status, detail in cases:
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
    assert http.get("/v1/memories/t").json()["rollout"] is None, "a refused candidate stores nothing"
