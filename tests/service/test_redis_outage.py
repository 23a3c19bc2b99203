"""Redis goes down and comes back: cached tasks keep classifying, writes answer 503, nothing is lost.

The test runs its own redis-server (append-only file in a temp dir) so it can stop and restart
it without touching the shared one.
"""

from __future__ import annotations

from collections.abc import Callable

from memories.backbone import Backbone
from tests.conftest import make_memfile
from tests.service.conftest import RedisServer, RunningService, eventually

OCTET = {"content-type": "application/octet-stream"}


def test_outage_keeps_cached_tasks_serving_and_loses_nothing(
    redis_server: RedisServer, service_factory: Callable[..., RunningService], roberta_tiny: Backbone
) -> None:
    service = service_factory(registry="redis", redis_url=redis_server.url)
    http = service.client()
    first = make_memfile(roberta_tiny, seed=1).to_bytes()
    assert http.put("/v1/memories/t", content=first, headers=OCTET).json()["version"] == 1
    before = http.post("/v1/t/classify", json={"inputs": "x"}).json()

    redis_server.stop()
    during = http.post("/v1/t/classify", json={"inputs": "x"})
    assert during.status_code == 200
    assert during.json() == before, "the cached task still classifies, with the same version"
    upload = http.put("/v1/memories/t", content=make_memfile(roberta_tiny, seed=2).to_bytes(), headers=OCTET)
    assert upload.status_code == 503
    assert upload.headers["retry-after"] == "1"
    assert "Redis registry is unavailable" in upload.json()["detail"]
    ready = http.get("/readyz").json()
    assert ready["registry"] == "unavailable"
    assert ready["degraded"]
    eventually(
        lambda: "spartan_registry_up 0.0" in http.get("/metrics").text, "metrics show the outage", 15.0, 0.1
    )

    redis_server.start()
    eventually(
        lambda: http.get("/readyz").json()["degraded"] == [], "the service notices Redis is back", 15.0, 0.1
    )
    assert "spartan_registry_up 1.0" in http.get("/metrics").text
    assert http.get("/v1/memories/t").json()["version"] == 1, "the stored version survived the outage"
    again = http.put("/v1/memories/t", content=make_memfile(roberta_tiny, seed=2).to_bytes(), headers=OCTET)
    assert again.json()["version"] == 2
    assert http.post("/v1/t/classify", json={"inputs": "x"}).json()["version"] == 2
