"""Tenant quotas on a real server: storage (tasks, bytes), rate (429 + Retry-After), live reload."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from memories.backbone import Backbone
from service.client import ServiceHTTPError, SpartanClient
from spartan_cli.main import main
from tests.conftest import make_memfile
from tests.service.api.test_tenants import OCTET, _as, _key
from tests.service.conftest import RunningService, eventually


def _quota(keys: Path, *args: str) -> None:
    assert main(["keys", "quota", "--file", str(keys), *args]) == 0


@pytest.fixture
def tenants(
    service_factory: Callable[..., RunningService], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[RunningService, dict[str, httpx.Client], Path]:
    names = [("acme", "tenant"), ("globex", "tenant"), ("ops", "admin")]
    keys = {name: _key(tmp_path, name, role, capsys) for name, role in names}
    path = tmp_path / "keys.json"
    service = service_factory(api_keys_file=path, keys_reload_s=0.1)
    return service, {name: _as(service, key) for name, key in keys.items()}, path


def test_storage_quotas_refuse_and_store_nothing(
    tenants: tuple[RunningService, dict[str, httpx.Client], Path], roberta_tiny: Backbone
) -> None:
    _, clients, keys = tenants
    acme, globex, ops = clients["acme"], clients["globex"], clients["ops"]
    data = make_memfile(roberta_tiny).to_bytes()
    _quota(keys, "--default", "--max-tasks", "2")
    _quota(keys, "--tenant", "globex", "--max-bytes", str(len(data) + 100))
    time.sleep(0.5)  # the server reloads the keys file within its 0.1 s interval
    for task in ("one", "two"):
        assert acme.put(f"/v1/memories/{task}", content=data, headers=OCTET).status_code == 200
    refused = acme.put("/v1/memories/three", content=data, headers=OCTET)
    assert refused.status_code == 403
    assert "holds 2 tasks, its quota (max_tasks)" in refused.json()["detail"]
    assert acme.get("/v1/memories/three").status_code == 404, "nothing was stored"
    assert acme.put("/v1/memories/two", content=data, headers=OCTET).json()["version"] == 2, (
        "a new version: fine"
    )
    over = ops.put("/v1/memories/three", params={"tenant": "acme"}, content=data, headers=OCTET)
    assert over.status_code == 403, "an admin upload counts against the tenant's quota"

    assert globex.put("/v1/memories/first", content=data, headers=OCTET).status_code == 200
    big = globex.put("/v1/memories/second", content=data, headers=OCTET)
    assert big.status_code == 403
    assert f"over its quota of {len(data) + 100} (max_bytes)" in big.json()["detail"]
    assert [i["task"] for i in globex.get("/v1/memories").json()["items"]] == ["first"]

    _quota(keys, "--default", "--max-tasks", "none")
    eventually(
        lambda: acme.put("/v1/memories/three", content=data, headers=OCTET).status_code == 200,
        "the lifted task quota applies",
    )


def test_rate_quota_answers_429_with_retry_after_and_spares_others(
    tenants: tuple[RunningService, dict[str, httpx.Client], Path], roberta_tiny: Backbone
) -> None:
    _, clients, keys = tenants
    acme, globex = clients["acme"], clients["globex"]
    data = make_memfile(roberta_tiny).to_bytes()
    for client in (acme, globex):
        assert client.put("/v1/memories/t", content=data, headers=OCTET).status_code == 200
    _quota(keys, "--tenant", "acme", "--rows-per-second", "0.5", "--burst-rows", "4")
    eventually(
        lambda: acme.post("/v1/t/classify", json={"inputs": ["a"] * 5}).status_code == 413,
        "the rate quota applies",
    )
    too_many = acme.post("/v1/t/classify", json={"inputs": ["a"] * 5})
    assert "may send at most 4 at once (its burst_rows quota)" in too_many.json()["detail"]

    statuses = [acme.post("/v1/t/classify", json={"inputs": ["a", "b"]}) for _ in range(3)]
    assert [r.status_code for r in statuses[:2]] == [200, 200], "the burst of 4 texts"
    limited = statuses[2]
    assert limited.status_code == 429
    assert "over its rate quota of 0.5 texts per second (burst 4)" in limited.json()["detail"]
    assert int(limited.headers["retry-after"]) == 4, "2 texts at 0.5 per second"
    assert all(
        globex.post("/v1/t/classify", json={"inputs": ["a", "b"]}).status_code == 200 for _ in range(5)
    )


def test_a_broken_keys_file_keeps_the_previous_one_in_force(
    tenants: tuple[RunningService, dict[str, httpx.Client], Path],
) -> None:
    service, clients, keys = tenants
    good = keys.read_text()
    keys.write_text('{"keys": [], "quotas": {"default": {"max_tasks": -1}}}')
    eventually(
        lambda: bool(service.client().get("/readyz").json()["degraded"]), "readiness shows the bad file"
    )
    degraded = service.client().get("/readyz").json()["degraded"]
    assert any("keys file" in d and "previous keys and quotas are in force" in d for d in degraded)
    assert clients["acme"].get("/v1/memories").status_code == 200, "the old keys still work"
    keys.write_text(good + " ")
    eventually(lambda: not service.client().get("/readyz").json()["degraded"], "readiness clears")


def _series(text: str, prefix: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(prefix)
    }


def test_usage_per_tenant_and_task_in_the_admin_only_metrics(
    tenants: tuple[RunningService, dict[str, httpx.Client], Path], roberta_tiny: Backbone
) -> None:
    service, clients, keys = tenants
    acme, globex, ops = clients["acme"], clients["globex"], clients["ops"]
    data = make_memfile(roberta_tiny).to_bytes()
    for task in ("a", "b"):
        assert acme.put(f"/v1/memories/{task}", content=data, headers=OCTET).status_code == 200
    assert globex.put("/v1/memories/a", content=data, headers=OCTET).status_code == 200
    _quota(keys, "--tenant", "acme", "--rows-per-second", "0.01", "--burst-rows", "5")
    eventually(
        lambda: acme.post("/v1/a/classify", json={"inputs": ["x"] * 6}).status_code == 413,
        "the rate quota applies",
    )
    before = _series(ops.get("/metrics").text, "spartan_t")
    assert acme.post("/v1/a/classify", json={"inputs": ["one", "two", "three"]}).status_code == 200
    assert acme.post("/v1/b/classify", json={"inputs": ["four", "five"]}).status_code == 200
    assert acme.post("/v1/b/classify", json={"inputs": ["six"]}).status_code == 429
    assert acme.post("/v1/nope/classify", json={"inputs": ["x"]}).status_code == 404
    assert globex.post("/v1/a/classify", json={"inputs": "seven"}).status_code == 200

    assert service.client().get("/metrics").status_code == 401
    refused = acme.get("/metrics")
    assert (refused.status_code, refused.json()["detail"]) == (
        403,
        "the metrics name every tenant: they need an admin key",
    )
    after = _series(ops.get("/metrics").text, "spartan_t")

    def grew(series: str) -> float:
        return after[series] - before.get(series, 0.0)

    assert grew('spartan_tenant_rows_total{tenant="acme"}') == 5
    assert grew('spartan_tenant_rows_total{tenant="globex"}') == 1
    assert grew('spartan_tenant_requests_total{tenant="acme"}') == 4
    assert grew('spartan_tenant_rejected_total{tenant="acme"}') == 1
    assert grew('spartan_tenant_errors_total{tenant="acme"}') == 1, "the unknown task"
    assert grew('spartan_tenant_latency_seconds_count{tenant="acme"}') == 2
    assert grew('spartan_tenant_tokens_total{tenant="acme"}') >= 5
    assert grew('spartan_task_rows_total{task="a",tenant="acme"}') == 3
    assert grew('spartan_task_rows_total{task="b",tenant="acme"}') == 2
    assert grew('spartan_task_rows_total{task="a",tenant="globex"}') == 1
    assert not [k for k in after if 'task="nope"' in k], "unknown tasks get no series of their own"


def test_usage_endpoint_bills_per_task_and_survives_a_restart(
    service_factory: Callable[..., RunningService],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    roberta_tiny: Backbone,
) -> None:
    keys = {
        n: _key(tmp_path, n, r, capsys)
        for n, r in [("acme", "tenant"), ("globex", "tenant"), ("ops", "admin")]
    }
    settings = {"api_keys_file": tmp_path / "keys.json", "registry_dir": tmp_path / "shared-registry"}
    first = service_factory(**settings)
    acme, globex = _as(first, keys["acme"]), _as(first, keys["globex"])
    data = make_memfile(roberta_tiny).to_bytes()
    for task in ("a", "b"):
        assert acme.put(f"/v1/memories/{task}", content=data, headers=OCTET).status_code == 200
    assert acme.post("/v1/a/classify", json={"inputs": ["one", "two", "three"]}).status_code == 200
    assert acme.post("/v1/b/classify", json={"inputs": "four"}).status_code == 200
    assert acme.post("/v1/nope/classify", json={"inputs": "not billed"}).status_code == 404
    first.server.should_exit = True  # a clean stop flushes what is not in the ledger yet

    second = service_factory(**settings)
    acme, globex, ops = (_as(second, keys[n]) for n in ("acme", "globex", "ops"))
    assert acme.post("/v1/a/classify", json={"inputs": ["five", "six"]}).status_code == 200
    eventually(
        lambda: len(acme.get("/v1/usage").json()["totals"]) == 2, "the first server's usage is flushed"
    )
    report = acme.get("/v1/usage").json()
    assert report["tenant"] == "acme"
    totals = {t["task"]: (t["requests"], t["rows"]) for t in report["totals"]}
    assert totals == {"a": (2, 5), "b": (1, 1)}, "both server lives, unknown tasks not billed"
    assert all(t["tokens"] > 0 for t in report["totals"])
    assert {h["task"] for h in report["hours"]} == {"a", "b"}
    assert report["since"].endswith("Z") or "+00:00" in report["since"]
    assert globex.get("/v1/usage").json()["totals"] == [], "a tenant sees only its own usage"
    assert globex.get("/v1/usage", params={"tenant": "acme"}).status_code == 403
    assert ops.get("/v1/usage", params={"tenant": "acme"}).json()["totals"] == report["totals"]
    bad = acme.get("/v1/usage", params={"since": "2026-12-03T10:00:00Z", "until": "2026-12-01T10:00:00Z"})
    assert (bad.status_code, bad.json()["detail"]) == (
        422,
        "since must be before until, at most 366 days apart",
    )
    naive = acme.get("/v1/usage", params={"since": "2026-12-01T10:00:00"})
    assert naive.status_code == 422


def test_the_client_addresses_a_tenant_for_an_admin_and_reads_usage(
    service_factory: Callable[..., RunningService],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    roberta_tiny: Backbone,
) -> None:
    keys = {n: _key(tmp_path, n, r, capsys) for n, r in [("acme", "tenant"), ("ops", "admin")]}
    service = service_factory(api_keys_file=tmp_path / "keys.json")
    data = make_memfile(roberta_tiny).to_bytes()
    with SpartanClient(service.url, keys["ops"], tenant="acme") as admin:
        assert admin.put_memory("sentiment", data).owner == "acme"
        assert admin.classify("sentiment", ["x", "y"]).version == 1
        assert [m.task for m in admin.list_memories()] == ["sentiment"]
    with SpartanClient(service.url, keys["acme"]) as acme:
        usage = acme.usage(since=datetime.now(UTC) - timedelta(hours=2))
        assert [(t.task, t.requests, t.rows) for t in usage.totals] == [("sentiment", 1, 2)]
    with (
        SpartanClient(service.url, keys["acme"], tenant="ops") as wrong,
        pytest.raises(ServiceHTTPError, match="403"),
    ):
        wrong.classify("sentiment", "x")
