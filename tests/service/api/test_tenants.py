"""API keys and tenant isolation on a real server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from memories.backbone import Backbone
from service.auth import ApiKey, hash_key, read_keys
from spartan_cli.main import main
from tests.conftest import make_memfile
from tests.service.conftest import RunningService

OCTET = {"content-type": "application/octet-stream"}


def _key(tmp_path: Path, tenant: str, role: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert (
        main(["keys", "add", "--file", str(tmp_path / "keys.json"), "--tenant", tenant, "--role", role]) == 0
    )
    return capsys.readouterr().out.strip()


@pytest.fixture
def keyed(
    service_factory: Callable[..., RunningService], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[RunningService, dict[str, str]]:
    keys = {
        name: _key(tmp_path, name, role, capsys)
        for name, role in [("acme", "tenant"), ("globex", "tenant"), ("ops", "admin")]
    }
    return service_factory(api_keys_file=tmp_path / "keys.json"), keys


def _as(service: RunningService, key: str | None, header: str = "authorization") -> httpx.Client:
    client = service.client()
    if key is not None:
        client.headers[header] = f"Bearer {key}" if header == "authorization" else key
    return client


def test_keys_file_stores_only_hashes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _key(tmp_path, "acme", "tenant", capsys)
    assert key.startswith("sk-spartan-")
    text = (tmp_path / "keys.json").read_text()
    assert key not in text
    assert read_keys(tmp_path / "keys.json") == [ApiKey(sha256=hash_key(key), tenant="acme", role="tenant")]


def test_missing_and_unknown_keys_are_refused(keyed: tuple[RunningService, dict[str, str]]) -> None:
    service, _ = keyed
    for client, detail in (
        (_as(service, None), "missing API key"),
        (_as(service, "sk-nope"), "unknown API key"),
    ):
        response = client.post("/v1/t/classify", json={"inputs": "x"})
        assert response.status_code == 401
        assert detail in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    assert _as(service, None).get("/healthz").status_code == 200, "probes need no key"


def test_tenants_see_only_their_own_tasks(
    keyed: tuple[RunningService, dict[str, str]], roberta_tiny: Backbone
) -> None:
    service, keys = keyed
    acme, globex, ops = (
        _as(service, keys["acme"]),
        _as(service, keys["globex"], "x-api-key"),
        _as(service, keys["ops"]),
    )
    data = make_memfile(roberta_tiny).to_bytes()
    assert acme.put("/v1/memories/acme-sentiment", content=data, headers=OCTET).json()["owner"] == "acme"
    assert globex.put("/v1/memories/globex-spam", content=data, headers=OCTET).json()["owner"] == "globex"

    assert acme.post("/v1/acme-sentiment/classify", json={"inputs": "x"}).status_code == 200
    for response in (
        globex.post("/v1/acme-sentiment/classify", json={"inputs": "x"}),
        globex.get("/v1/memories/acme-sentiment"),
        globex.delete("/v1/memories/acme-sentiment"),
        globex.put("/v1/memories/acme-sentiment", content=data, headers=OCTET),
    ):
        assert response.status_code == 404, response.text
        assert response.json()["detail"] == "task 'acme-sentiment' not found", "no existence leak"
    assert [i["task"] for i in acme.get("/v1/memories").json()["items"]] == ["acme-sentiment"]
    assert [i["task"] for i in globex.get("/v1/memories").json()["items"]] == ["globex-spam"]

    assert [i["task"] for i in ops.get("/v1/memories").json()["items"]] == ["acme-sentiment", "globex-spam"]
    replaced = ops.put("/v1/memories/acme-sentiment", content=data, headers=OCTET).json()
    assert (replaced["version"], replaced["owner"]) == (2, "acme"), "an admin upload keeps the owner"
    assert ops.post("/v1/globex-spam/classify", json={"inputs": "x"}).status_code == 200
    assert ops.delete("/v1/memories/globex-spam").status_code == 204
    assert globex.get("/v1/memories").json()["items"] == []
