"""The HTTP API end to end on a real server: classify, memory management and every bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from memories.backbone import Backbone
from tests.conftest import make_memfile
from tests.service.conftest import RunningService

OCTET = {"content-type": "application/octet-stream"}


@pytest.fixture
def service(service_factory: Callable[..., RunningService]) -> RunningService:
    return service_factory(max_inputs=4, max_text_chars=200, max_upload_bytes=400_000)


@pytest.fixture
def http(service: RunningService) -> httpx.Client:
    return service.client()


def _upload(http: httpx.Client, task: str, data: bytes, **headers: str) -> httpx.Response:
    """PUT a memory; ``data`` may also be an iterator of chunks (sent chunked, no Content-Length)."""
    return http.put(f"/v1/memories/{task}", content=data, headers={**OCTET, **headers})


def _no_trace(response: httpx.Response) -> None:
    assert "Traceback" not in response.text
    assert set(response.json()) == {"detail"}


def test_upload_then_classify_every_input_shape(http: httpx.Client, roberta_tiny: Backbone) -> None:
    data = make_memfile(roberta_tiny).to_bytes()
    put = _upload(http, "sentiment", data)
    assert put.status_code == 200, put.text
    body = put.json()
    assert (body["task"], body["version"], body["size"], body["owner"]) == (
        "sentiment",
        1,
        len(data),
        "local",
    )
    assert body["metadata"]["labels"] == ["negative", "positive"]

    one = http.post("/v1/sentiment/classify", json={"inputs": "a fine film"}).json()
    assert one["version"] == 1
    assert len(one["predictions"]) == 1
    prediction = one["predictions"][0]
    assert prediction["label"] in ("negative", "positive")
    assert sum(prediction["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert prediction["label"] == max(prediction["scores"], key=prediction["scores"].get)

    many = http.post("/v1/sentiment/classify", json={"inputs": ["a fine film", "dull", "ok then"]}).json()
    assert len(many["predictions"]) == 3
    assert many["predictions"][0] == prediction, "the same text gets the same answer in any batch"

    pairs = http.post("/v1/sentiment/classify", json={"inputs": [{"text": "a", "pair": "b"}]})
    assert pairs.status_code == 200


def test_explain_returns_parent_routing(http: httpx.Client, roberta_tiny: Backbone) -> None:
    _upload(http, "t", make_memfile(roberta_tiny).to_bytes())
    last = http.post("/v1/t/classify", json={"inputs": "hello", "explain": "last_layer"}).json()
    parents = last["predictions"][0]["parents"]
    assert [p["layer"] for p in parents] == [roberta_tiny.num_layers - 1]
    assert len(parents[0]["weights"]) == 16
    assert sum(parents[0]["weights"]) == pytest.approx(1.0, abs=1e-4)
    assert 8 <= len(parents[0]["top"]) <= 16
    every = http.post("/v1/t/classify", json={"inputs": "hello", "explain": "all_layers"}).json()
    assert len(every["predictions"][0]["parents"]) == roberta_tiny.num_layers
    plain = http.post("/v1/t/classify", json={"inputs": "hello"}).json()
    assert plain["predictions"][0]["parents"] is None


def test_regression_task_returns_a_value(http: httpx.Client, roberta_tiny: Backbone) -> None:
    _upload(http, "similarity", make_memfile(roberta_tiny, labels=()).to_bytes())
    prediction = http.post("/v1/similarity/classify", json={"inputs": [{"text": "a", "pair": "b"}]}).json()
    assert isinstance(prediction["predictions"][0]["value"], float)
    assert prediction["predictions"][0]["label"] is None


def test_versions_list_get_delete_and_if_match(http: httpx.Client, roberta_tiny: Backbone) -> None:
    first, second = (
        make_memfile(roberta_tiny, seed=1).to_bytes(),
        make_memfile(roberta_tiny, seed=2).to_bytes(),
    )
    assert _upload(http, "t", first, **{"if-match": "0"}).json()["version"] == 1
    answer_v1 = http.post("/v1/t/classify", json={"inputs": "x"}).json()
    conflict = _upload(http, "t", second, **{"if-match": "0"})
    assert conflict.status_code == 412
    assert conflict.json()["detail"] == "task 't' is at version 1, not 0"
    assert _upload(http, "t", second, **{"if-match": '"1"'}).json()["version"] == 2
    answer_v2 = http.post("/v1/t/classify", json={"inputs": "x"}).json()
    assert answer_v2["version"] == 2
    assert answer_v2["predictions"] != answer_v1["predictions"], "the new memory serves at once"
    got = http.get("/v1/memories/t")
    assert (got.json()["version"], got.headers["etag"]) == (2, '"2"')
    _upload(http, "a-first", first)
    page = http.get("/v1/memories", params={"limit": 1}).json()
    assert [i["task"] for i in page["items"]] == ["a-first"]
    assert page["next"] == "a-first"
    rest = http.get("/v1/memories", params={"after": page["next"]}).json()
    assert [i["task"] for i in rest["items"]] == ["t"]
    assert rest["next"] is None
    assert http.delete("/v1/memories/t", headers={"if-match": "1"}).status_code == 412
    assert http.delete("/v1/memories/t").status_code == 204
    gone = http.post("/v1/t/classify", json={"inputs": "x"})
    assert gone.status_code == 404
    assert gone.json()["detail"] == "task 't' not found"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "detail"),
    [
        ({"json": {"inputs": "x"}, "url": "/v1/nope/classify"}, 404, "task 'nope' not found"),
        (
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
            "JSON decode error",
        ),
        ({"json": {"inputs": 5}}, 422, "inputs"),
        ({"json": {"text": "x"}}, 422, "inputs: Field required"),
        ({"json": {"inputs": "x", "explain": "why"}}, 422, "explain: Input should be"),
        ({"json": {"inputs": []}}, 422, "inputs: give at least one text"),
        ({"json": {"inputs": "   "}}, 422, "inputs[0]: the text is empty"),
        ({"json": {"inputs": ["a"] * 5}}, 413, "5 texts, the limit is 4 per request"),
        ({"json": {"inputs": "a" * 201}}, 413, "201 characters, the limit is 200"),
        ({"json": {"inputs": "x"}, "url": "/v1/Bad%20Id/classify"}, 422, "invalid task id 'Bad Id'"),
    ],
)
def test_bad_classify_requests(
    http: httpx.Client, roberta_tiny: Backbone, request_kwargs: dict[str, Any], status: int, detail: str
) -> None:
    _upload(http, "t", make_memfile(roberta_tiny).to_bytes())
    url = request_kwargs.pop("url", "/v1/t/classify")
    response = http.post(url, **request_kwargs)
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    _no_trace(response)


def test_bad_uploads_leave_the_registry_unchanged(
    http: httpx.Client, tiny_backbones: dict[str, Backbone], roberta_tiny: Backbone
) -> None:
    good = make_memfile(roberta_tiny).to_bytes()
    _upload(http, "t", good)
    before = http.get("/v1/memories/t").json()
    cases = [
        (_upload(http, "t", b"\x80\x04not a memory"), 422, "Python pickle"),
        (_upload(http, "t", good[:-7]), 422, "truncated file"),
        (_upload(http, "t", make_memfile(tiny_backbones["bert-tiny-random"]).to_bytes()), 409, "retrain it"),
        (_upload(http, "t", good + b"x" * 400_000), 413, "the limit is 400000 bytes"),
        (_upload(http, "t", iter([good, b"x" * 400_000])), 413, "exceeds the limit of 400000 bytes"),  # type: ignore[arg-type]
        (
            http.put("/v1/memories/t", content=good, headers={"content-type": "text/plain"}),
            415,
            "application/octet",
        ),
        (http.put("/v1/memories/t", content=good), 415, "no content type"),
        (_upload(http, "t", good, **{"if-match": "latest"}), 422, "If-Match must be a version number"),
        (_upload(http, "BAD", good), 422, "invalid task id"),
    ]
    for response, status, detail in cases:
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
        _no_trace(response)
    assert http.get("/v1/memories/t").json() == before
    assert [i["task"] for i in http.get("/v1/memories").json()["items"]] == ["t"]


def test_health_readiness_and_openapi(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["ready"] is True
    assert ready["registry"] == "ok"
    assert ready["degraded"] == []
    paths = http.get("/openapi.json").json()["paths"]
    assert {"/v1/{task}/classify", "/v1/memories/{task}", "/v1/memories", "/healthz", "/readyz"} <= set(paths)


def test_metrics_count_traffic_cache_and_batches(http: httpx.Client, roberta_tiny: Backbone) -> None:
    _upload(http, "t", make_memfile(roberta_tiny).to_bytes())
    for _ in range(3):
        http.post("/v1/t/classify", json={"inputs": ["a", "b"]})
    http.post("/v1/missing/classify", json={"inputs": "a"})
    text = http.get("/metrics").text

    def value(line_start: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(line_start))
        return float(line.rsplit(" ", 1)[1])

    assert value('spartan_http_requests_total{method="POST",route="/v1/{task}/classify",status="200"}') == 3
    assert value('spartan_http_requests_total{method="POST",route="/v1/{task}/classify",status="404"}') == 1
    assert value("spartan_cache_hits_total") == 3, "the upload primed the cache"
    assert value("spartan_engine_rows_total") == 6
    assert value("spartan_cache_resident_tasks") == 1
    assert value('spartan_engine_batch_size_bucket{le="+Inf"}') == value("spartan_engine_batches_total")
    assert value("spartan_registry_up") == 1


def test_openapi_documents_every_route_with_its_response_model(http: httpx.Client) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    ok = paths["/v1/{task}/classify"]["post"]["responses"]["200"]["content"]["application/json"]
    assert ok["schema"] == {"$ref": "#/components/schemas/ClassifyResponse"}
    memory = paths["/v1/memories/{task}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert memory["schema"] == {"$ref": "#/components/schemas/MemoryInfo"}
