"""The Open Inference Protocol v2 routes with a real v2 client (tritonclient's HTTP client):
health, metadata, readiness, inference in JSON and in the binary tensor extension, pairs,
requested outputs, errors and tenants; every answer equals what /v1 gives for the same texts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from memories.backbone import Backbone
from spartan_cli.main import main
from tests.conftest import make_memfile
from tests.service.conftest import RunningService

OCTET = {"content-type": "application/octet-stream"}
TEXTS = ["a fine film", "dull", "ok then"]


@pytest.fixture
def service(service_factory: Callable[..., RunningService], roberta_tiny: Backbone) -> RunningService:
    service = service_factory(max_inputs=8, max_text_chars=200)
    http = service.client()
    for task, labels in (("sentiment", ("neg", "neu", "pos")), ("similarity", ())):
        data = make_memfile(roberta_tiny, labels=labels).to_bytes()
        assert http.put(f"/v1/memories/{task}", content=data, headers=OCTET).status_code == 200
    return service


def _client(service: RunningService) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=service.url.removeprefix("http://"))


def _texts(name: str, texts: list[str], binary: bool, shape: list[int] | None = None) -> triton.InferInput:
    tensor = triton.InferInput(name, shape or [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([t.encode() for t in texts], dtype=object).reshape(tensor.shape()), binary
    )
    return tensor


def _v1(service: RunningService, task: str, inputs: Any) -> list[dict[str, Any]]:
    answer = service.client().post(f"/v1/{task}/classify", json={"inputs": inputs}).json()
    predictions: list[dict[str, Any]] = answer["predictions"]
    return predictions


def test_health_and_metadata(service: RunningService) -> None:
    client = _client(service)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert client.is_model_ready("sentiment")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("sentiment")
    assert (meta["name"], meta["versions"], meta["platform"]) == ("sentiment", ["1"], "spartan")
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("text", "BYTES"), ("text_pair", "BYTES")]
    assert meta["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
    ]
    regression = client.get_model_metadata("similarity")
    assert regression["outputs"] == [{"name": "value", "datatype": "FP32", "shape": [-1]}]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary-tensors"])
def test_infer_equals_v1(service: RunningService, binary: bool) -> None:
    result = _client(service).infer("sentiment", [_texts("text", TEXTS, binary)], request_id="r-1")
    expected = _v1(service, "sentiment", TEXTS)
    labels = [label if isinstance(label, str) else label.decode() for label in result.as_numpy("label")]
    assert labels == [p["label"] for p in expected], "JSON outputs: BYTES come back as strings"
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 3)
    order = json.loads(result.get_output("probabilities")["parameters"]["labels"])
    assert order == ["neg", "neu", "pos"]
    for row, prediction in zip(probabilities, expected, strict=True):
        assert row.tolist() == pytest.approx([prediction["scores"][label] for label in order], abs=1e-6)
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("sentiment", "1", "r-1")


def test_pairs_shapes_and_requested_outputs(service: RunningService) -> None:
    client = _client(service)
    pairs = [_texts("text", ["a", "b"], True, [2, 1]), _texts("text_pair", ["c", "d"], False, [2, 1])]
    requested = [triton.InferRequestedOutput("value", binary_data=False)]
    values = client.infer("similarity", pairs, outputs=requested).as_numpy("value")
    expected = _v1(service, "similarity", [{"text": "a", "pair": "c"}, {"text": "b", "pair": "d"}])
    assert values.tolist() == pytest.approx([p["value"] for p in expected], abs=1e-6)
    only = client.infer(
        "sentiment", [_texts("text", ["x"], False)], outputs=[triton.InferRequestedOutput("label")]
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["label"]


@pytest.mark.parametrize(
    ("task", "tensors", "outputs", "status", "message"),
    [
        ("nope", [("text", ["x"])], None, "404", "task 'nope' not found"),
        ("sentiment", [("words", ["x"])], None, "422", "body.inputs.0.name: Input should be 'text' or"),
        ("sentiment", [("text_pair", ["x"])], None, "422", "give the input 'text'"),
        ("sentiment", [("text", ["x", "y"]), ("text_pair", ["z"])], None, "422", "2 texts and 'text_pair' 1"),
        ("sentiment", [("text", ["x"])], "value", "422", "unknown output 'value'"),
        ("sentiment", [("text", [" "])], None, "422", "the text is empty"),
        ("sentiment", [("text", ["x"] * 9)], None, "413", "9 texts, the limit is 8"),
    ],
)
def test_errors_reach_a_v2_client(
    service: RunningService,
    task: str,
    tensors: list[tuple[str, list[str]]],
    outputs: str | None,
    status: str,
    message: str,
) -> None:
    requested = [triton.InferRequestedOutput(outputs)] if outputs else None
    with pytest.raises(InferenceServerException) as error:
        _client(service).infer(
            task, [_texts(name, texts, False) for name, texts in tensors], outputs=requested
        )
    assert error.value.status() == status
    assert message in error.value.message()


SHORT_BINARY = (
    b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
    b'"parameters": {"binary_data_size": 9}}]}'
)


def test_malformed_requests_answer_problems_with_the_error_member(service: RunningService) -> None:
    http = service.client()
    cases = [
        (b'{"inputs": []}', {}, "body.inputs: List should have at least 1 item"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1]}]}', {}, "datatype"),
        (b'{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x"]}]}', {}, "holds 2"),
        (b"{}\x01\x00\x00\x00x", {"inference-header-content-length": "99"}, "at most the body's"),
        (
            SHORT_BINARY + b"\x05\x00\x00\x00ab",
            {"inference-header-content-length": str(len(SHORT_BINARY))},
            "beyond",
        ),
        (
            SHORT_BINARY + b"\x09\x00\x00\x00abcde",
            {"inference-header-content-length": str(len(SHORT_BINARY))},
            "inside",
        ),
    ]
    for body, headers, detail in cases:
        response = http.post("/v2/models/sentiment/infer", content=body, headers=headers)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert detail in problem["detail"], problem
        assert problem["error"] == problem["detail"], "v2 clients read 'error'"


def test_a_tenant_key_reaches_only_its_own_models(
    service_factory: Callable[..., RunningService],
    roberta_tiny: Backbone,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = {}
    for tenant in ("acme", "globex"):
        assert main(["keys", "add", "--file", str(tmp_path / "keys.json"), "--tenant", tenant]) == 0
        keys[tenant] = capsys.readouterr().out.strip()
    service = service_factory(api_keys_file=tmp_path / "keys.json")
    data = make_memfile(roberta_tiny).to_bytes()
    put = httpx.put(
        f"{service.url}/v1/memories/secret",
        content=data,
        headers={**OCTET, "authorization": f"Bearer {keys['acme']}"},
    )
    assert put.status_code == 200
    client = _client(service)
    as_acme = {"Authorization": f"Bearer {keys['acme']}"}
    as_globex = {"Authorization": f"Bearer {keys['globex']}"}
    assert client.is_model_ready("secret", headers=as_acme)
    assert not client.is_model_ready("secret", headers=as_globex)
    with pytest.raises(InferenceServerException) as anonymous:
        client.infer("secret", [_texts("text", ["x"], True)])
    assert anonymous.value.status() == "401"
    assert (
        client.infer("secret", [_texts("text", ["x"], True)], headers=as_acme).as_numpy("label") is not None
    )
