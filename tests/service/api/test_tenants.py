"""API keys and tenant isolation on a real server."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from memories.backbone import Backbone
from service.auth import ApiKey, hash_key
from service.keysfile import read_keys_file
from spartan_cli.main import main
from tests.conftest import make_memfile
from tests.service.conftest import RunningService
from tests.service.registry.test_migrate import FIXTURE

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
    assert read_keys_file(tmp_path / "keys.json").keys == [
        ApiKey(sha256=hash_key(key), tenant="acme", role="tenant")
    ]


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


def _labels(client: httpx.Client, path: str) -> list[str]:
    response = client.post(path, json={"inputs": ["good", "bad"]})
    assert response.status_code == 200, response.text
    return sorted(response.json()["predictions"][0]["scores"])


def test_each_tenant_owns_its_task_names(
    keyed: tuple[RunningService, dict[str, str]], roberta_tiny: Backbone
) -> None:
    service, keys = keyed
    acme, globex = _as(service, keys["acme"]), _as(service, keys["globex"], "x-api-key")
    acme_file = make_memfile(roberta_tiny, ("negative", "positive")).to_bytes()
    globex_file = make_memfile(roberta_tiny, ("ham", "spam"), seed=1).to_bytes()
    for client, data in ((acme, acme_file), (globex, globex_file)):
        response = client.put("/v1/memories/sentiment", content=data, headers={**OCTET, "if-match": "0"})
        assert response.status_code == 200, response.text
        assert response.json()["version"] == 1
    assert _labels(acme, "/v1/sentiment/classify") == ["negative", "positive"]
    assert _labels(globex, "/v1/sentiment/classify") == ["ham", "spam"]
    assert acme.get("/v1/memories/sentiment").json()["owner"] == "acme"
    assert (
        globex.get("/v1/memories/sentiment").json()["sha256"]
        != acme.get("/v1/memories/sentiment").json()["sha256"]
    )
    assert acme.delete("/v1/memories/sentiment").status_code == 204
    assert _labels(globex, "/v1/sentiment/classify") == ["ham", "spam"], "a delete stays in its namespace"


def test_no_answer_tells_a_tenant_about_another(
    keyed: tuple[RunningService, dict[str, str]], roberta_tiny: Backbone
) -> None:
    service, keys = keyed
    acme, globex = _as(service, keys["acme"]), _as(service, keys["globex"])
    data = make_memfile(roberta_tiny).to_bytes()
    assert acme.put("/v1/memories/acme-only", content=data, headers=OCTET).status_code == 200

    def answers(task: str) -> list[tuple[int, str]]:
        return [
            (r.status_code, r.json()["detail"].replace(task, "<task>"))
            for r in (
                globex.post(f"/v1/{task}/classify", json={"inputs": "x"}),
                globex.get(f"/v1/memories/{task}"),
                globex.delete(f"/v1/memories/{task}"),
            )
        ]

    assert answers("acme-only") == answers("never-made")
    assert {status for status, _ in answers("acme-only")} == {404}
    assert globex.get("/v1/memories").json()["items"] == []

    forbidden = [
        globex.get("/v1/memories/acme-only", params={"tenant": "acme"}),
        globex.get("/v1/memories/never-made", params={"tenant": "acme"}),
        globex.get("/v1/memories/acme-only", params={"tenant": "nobody"}),
        globex.get("/v1/memories", params={"tenant": "acme"}),
        globex.post("/v1/acme-only/classify", params={"tenant": "acme"}, json={"inputs": "x"}),
        globex.put("/v1/memories/acme-only", params={"tenant": "acme"}, content=data, headers=OCTET),
    ]
    assert {(r.status_code, r.json()["detail"]) for r in forbidden} == {
        (403, "the 'tenant' parameter needs an admin key; a tenant key addresses its own tasks only")
    }
    assert globex.get("/v1/memories", params={"tenant": "globex"}).json()["items"] == [], "its own: fine"
    mine = globex.put("/v1/memories/acme-only", content=data, headers=OCTET).json()
    assert (mine["owner"], mine["version"]) == ("globex", 1), "the name is free in globex's namespace"
    assert acme.get("/v1/memories/acme-only").json()["version"] == 1


def test_admin_addresses_any_tenant_explicitly(
    keyed: tuple[RunningService, dict[str, str]], roberta_tiny: Backbone
) -> None:
    service, keys = keyed
    acme, ops = _as(service, keys["acme"]), _as(service, keys["ops"])
    data = make_memfile(roberta_tiny).to_bytes()
    assert acme.put("/v1/memories/sentiment", content=data, headers=OCTET).status_code == 200

    assert ops.get("/v1/memories").json()["items"] == [], "without a tenant: the admin's own namespace"
    assert ops.get("/v1/memories/sentiment").status_code == 404
    listed = ops.get("/v1/memories", params={"tenant": "acme"}).json()["items"]
    assert [(i["owner"], i["task"]) for i in listed] == [("acme", "sentiment")]
    replaced = ops.put("/v1/memories/sentiment", params={"tenant": "acme"}, content=data, headers=OCTET)
    assert (replaced.json()["owner"], replaced.json()["version"]) == ("acme", 2)
    assert acme.get("/v1/memories/sentiment").json()["version"] == 2
    classified = ops.post("/v1/sentiment/classify", params={"tenant": "acme"}, json={"inputs": "x"})
    assert classified.status_code == 200
    assert classified.json()["version"] == 2

    unknown = ops.put("/v1/memories/sentiment", params={"tenant": "nobody"}, content=data, headers=OCTET)
    assert (unknown.status_code, unknown.json()["detail"]) == (
        404,
        "unknown tenant 'nobody': no API key or quota names it",
    )
    assert ops.get("/v1/memories", params={"tenant": "Bad Name"}).status_code == 422
    assert ops.delete("/v1/memories/sentiment", params={"tenant": "acme"}).status_code == 204
    assert acme.get("/v1/memories").json()["items"] == []


def test_a_registry_written_before_namespaces_serves_each_owner_its_tasks(
    service_factory: Callable[..., RunningService], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = {name: _key(tmp_path, name, role, capsys) for name, role in [("acme", "tenant"), ("ops", "admin")]}
    registry = tmp_path / "old-registry"
    shutil.copytree(FIXTURE / "files", registry)
    service = service_factory(api_keys_file=tmp_path / "keys.json", registry_dir=registry)
    acme, ops = _as(service, keys["acme"]), _as(service, keys["ops"])
    assert [(i["task"], i["version"]) for i in acme.get("/v1/memories").json()["items"]] == [("sentiment", 4)]
    assert acme.get("/v1/memories/news").status_code == 404, "globex's task stays globex's"
    news = ops.get("/v1/memories/news", params={"tenant": "globex"}).json()
    assert (news["owner"], news["version"], news["metadata"]["note"]) == ("globex", 1, "news")
    demo = ops.get("/v1/memories", params={"tenant": "local"}).json()["items"]
    assert [(i["task"], i["owner"]) for i in demo] == [("demo", "local")], "seeded memories belong to local"
    assert [p.name for p in registry.iterdir() if p.is_dir()] == ["tenants"], "nothing left in the old layout"
