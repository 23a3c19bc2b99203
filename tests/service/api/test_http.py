"""The HTTP API end to end on a real server: classify, memory management and every bad input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from memories.backbone import Backbone
from memories.config import ExitConfig
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
    """An RFC 9457 problem, and nothing of the server's insides."""
    assert "Traceback" not in response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "instance"} <= set(body) <= {*body, "errors"}
    assert body["type"].startswith("tag:spartan-serve,2026:")
    assert body["status"] == response.status_code


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


def test_early_exits_answer_per_request_threshold_and_explain_names_the_exit_layer(
    http: httpx.Client, roberta_tiny: Backbone
) -> None:
    exits = ExitConfig((0,), hidden=4, threshold=0.5)  # two labels: every answer is above 0.5
    _upload(http, "fast", make_memfile(roberta_tiny, exits=exits).to_bytes())
    _upload(http, "full", make_memfile(roberta_tiny, seed=1).to_bytes())
    last = roberta_tiny.num_layers - 1

    def left(task: str, **body: Any) -> list[int | None]:
        body = {"inputs": ["a", "b c"], "explain": "last_layer", **body}
        response = http.post(f"/v1/{task}/classify", json=body)
        assert response.status_code == 200, response.text
        return [p["exit_layer"] for p in response.json()["predictions"]]

    assert left("fast") == [0, 0], "the task's own threshold"
    assert left("fast", exit_threshold=1.0) == [last, last], "1.0 never leaves early"
    assert left("full", exit_threshold=0.5) == [last, last], "a task without exits runs every layer"
    early = http.post("/v1/fast/classify", json={"inputs": "a", "explain": "last_layer"}).json()
    assert [p["layer"] for p in early["predictions"][0]["parents"]] == [0], "routing up to the exit"
    plain = http.post("/v1/fast/classify", json={"inputs": "a"}).json()["predictions"][0]
    assert plain["exit_layer"] is None
    assert sum(plain["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    for bad, message in ((0, "greater than 0"), (1.5, "less than or equal to 1"), ("high", "valid number")):
        refused = http.post("/v1/fast/classify", json={"inputs": "a", "exit_threshold": bad})
        assert refused.status_code == 422
        assert message in refused.text
        _no_trace(refused)
    metrics = http.get("/metrics").text
    assert "spartan_engine_early_exit_rows_total 4.0" in metrics


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
        ({"json": {"inputs": 5}}, 422, "body.inputs: give a text, a list of texts or a list of {text, pair}"),
        ({"json": {"text": "x"}}, 422, "body.inputs: Field required"),
        ({"json": {"inputs": "x", "explain": "why"}}, 422, "body.explain: Input should be"),
        ({"json": {"inputs": []}}, 422, "body.inputs: List should have at least 1 item"),
        ({"json": {"inputs": "   "}}, 422, "body.inputs: the text is empty"),
        ({"json": {"inputs": ["a", " "]}}, 422, "body.inputs.1: the text is empty"),
        ({"json": {"inputs": [{"text": "a"}]}}, 422, "body.inputs.0.pair: Field required"),
        ({"json": {"inputs": ["a"] * 5}}, 413, "5 texts, the limit is 4 per request"),
        ({"json": {"inputs": "a" * 201}}, 413, "201 characters, the limit is 200"),
        ({"json": {"inputs": "x"}, "url": "/v1/Bad%20Id/classify"}, 422, "path task: String should match"),
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
        (_upload(http, "BAD", good), 422, "path task: String should match pattern"),
    ]
    for response, status, detail in cases:
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
        _no_trace(response)
    assert http.get("/v1/memories/t").json() == before
    assert [i["task"] for i in http.get("/v1/memories").json()["items"]] == ["t"]


def test_validation_errors_point_at_each_field(http: httpx.Client) -> None:
    response = http.post("/v1/t/classify", json={"inputs": ["a", {"text": "b"}], "explain": "why"})
    assert response.status_code == 422
    _no_trace(response)
    errors = response.json()["errors"]
    assert {(e["location"], e["pointer"]) for e in errors} == {("body", "/inputs/1"), ("body", "/explain")}
    paged = http.get("/v1/memories", params={"limit": 0})
    assert paged.json()["errors"] == [
        {"location": "query", "pointer": "limit", "detail": "Input should be greater than or equal to 1"}
    ]


def test_unknown_routes_and_methods_answer_problems(http: httpx.Client) -> None:
    missing = http.get("/v2/nothing")
    assert missing.status_code == 404
    _no_trace(missing)
    wrong = http.patch("/v1/memories/t")
    assert wrong.status_code == 405
    _no_trace(wrong)
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) == {"GET", "PUT", "DELETE"}


def test_every_error_status_is_declared_as_a_problem(http: httpx.Client) -> None:
    spec = http.get("/openapi.json").json()
    assert "Problem" in spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path not in ("/readyz", "/v2/health/ready"):  # readiness bodies
                    assert "application/problem+json" in response["content"], (method, path, status)
    inputs = spec["components"]["schemas"]["ClassifyRequest"]["properties"]["inputs"]["oneOf"]
    assert [member.get("maxItems") for member in inputs] == [None, 4, 4], "max_inputs=4 is declared"
    assert inputs[0]["maxLength"] == 200


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
    assert ok["schema"]["anyOf"] == [
        {"$ref": "#/components/schemas/ClassifyResponse"},
        {"$ref": "#/components/schemas/PipelineAnswer"},
    ], "format=pipeline answers a pipeline's list"
    memory = paths["/v1/memories/{task}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert memory["schema"] == {"$ref": "#/components/schemas/MemoryInfo"}


def test_pipeline_format_answers_like_a_transformers_pipeline(
    http: httpx.Client, roberta_tiny: Backbone
) -> None:
    """The shapes ``transformers.pipeline("text-classification")`` returns (checked against
    transformers 5.25: a flat list without top_k, a list per input with it, flat for one text)."""
    _upload(http, "t", make_memfile(roberta_tiny, labels=("a", "b", "c")).to_bytes())

    def ask(inputs: Any, **params: Any) -> Any:
        response = http.post("/v1/t/classify", json={"inputs": inputs}, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    own = ask(["x", "y"])["predictions"]
    best = [max(p["scores"].items(), key=lambda item: item[1]) for p in own]
    assert ask(["x", "y"], format="pipeline") == [{"label": label, "score": score} for label, score in best]
    assert ask("x", format="pipeline") == [{"label": best[0][0], "score": best[0][1]}]
    two = ask(["x", "y"], format="pipeline", top_k=2)
    assert [len(row) for row in two] == [2, 2]
    assert [row[0]["label"] for row in two] == [label for label, _ in best]
    assert all(row[0]["score"] >= row[1]["score"] for row in two)
    flat = ask("x", format="pipeline", top_k=5)
    assert [item["label"] for item in flat] == sorted(
        own[0]["scores"], key=own[0]["scores"].get, reverse=True
    )
    pairs = ask([{"text": "x", "pair": "y"}], format="pipeline")
    assert [set(item) for item in pairs] == [{"label", "score"}]
    trimmed = ask(["x", "y"], top_k=1)["predictions"]
    assert [p["scores"] for p in trimmed] == [{label: score} for label, score in best]
    assert [p["label"] for p in trimmed] == [p["label"] for p in own]


def test_pipeline_format_of_a_regression_task(http: httpx.Client, roberta_tiny: Backbone) -> None:
    _upload(http, "similarity", make_memfile(roberta_tiny, labels=()).to_bytes())
    body = {"inputs": [{"text": "a", "pair": "b"}]}
    value = http.post("/v1/similarity/classify", json=body).json()["predictions"][0]["value"]
    answer = http.post("/v1/similarity/classify", json=body, params={"format": "pipeline"}).json()
    assert answer == [{"label": "LABEL_0", "score": value}]


def test_versions_list_download_and_restore(http: httpx.Client, roberta_tiny: Backbone) -> None:
    files = [make_memfile(roberta_tiny, seed=seed).to_bytes() for seed in (1, 2, 3, 4)]
    for data in files:
        _upload(http, "t", data)
    listed = http.get("/v1/memories/t/versions").json()
    assert (listed["task"], listed["current"]) == ("t", 4)
    assert [i["version"] for i in listed["items"]] == [4, 3, 2], "keep_versions=3: version 1 is pruned"
    assert listed["items"][0] == http.get("/v1/memories/t").json()

    download = http.get("/v1/memories/t/versions/2/file")
    assert download.status_code == 200
    assert download.content == files[1]
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["etag"] == f'"{listed["items"][2]["sha256"]}"'
    assert "t-v2.safetensors" in download.headers["content-disposition"]
    again = http.get("/v1/memories/t/versions/2/file", headers={"if-none-match": download.headers["etag"]})
    assert (again.status_code, again.content) == (304, b"")

    stale = http.post("/v1/memories/t/versions/2/restore", headers={"if-match": "3"})
    assert stale.status_code == 412, "If-Match names the current version"
    _no_trace(stale)
    restored = http.post("/v1/memories/t/versions/2/restore", headers={"if-match": "4"})
    assert restored.status_code == 200, restored.text
    assert (restored.json()["version"], restored.json()["restored_from"]) == (5, 2)
    assert restored.json()["sha256"] == listed["items"][2]["sha256"]
    v2_answer = http.post("/v1/t/classify", json={"inputs": "x"}).json()
    assert v2_answer["version"] == 5
    assert http.get("/v1/memories/t/versions/5/file").content == files[1]

    for url, status, detail in [
        ("/v1/memories/t/versions/1/file", 404, "task 't' keeps versions 5, 4, 3, not 1"),
        ("/v1/memories/nope/versions", 404, "task 'nope' not found"),
        ("/v1/memories/t/versions/0/file", 422, "path version: Input should be greater than or equal to 1"),
    ]:
        response = http.get(url)
        assert response.status_code == status, response.text
        assert detail in response.json()["detail"]
        _no_trace(response)
    gone = http.post("/v1/memories/t/versions/1/restore")
    assert gone.status_code == 404
    assert http.get("/v1/memories/t").json()["version"] == 5, "a refused restore stores nothing"
