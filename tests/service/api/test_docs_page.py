"""/docs and /redoc render offline: a real headless Chromium that can reach nothing but loopback
loads each page and must find the API's operations in the rendered page."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.service.conftest import RunningService

CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)"
)


def _rendered(url: str, profile: Path) -> str:
    """The page's DOM once its scripts ran, every host but 127.0.0.1 unresolvable (no CDN)."""
    assert CHROMIUM is not None
    run = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=15000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.parametrize(
    ("page", "operation_marker"),
    [("/docs", 'class="opblock-summary-path"'), ("/redoc", "operation/classify")],
)
def test_docs_render_the_operations_offline(
    service_factory: Callable[..., RunningService], tmp_path: Path, page: str, operation_marker: str
) -> None:
    service = service_factory()
    dom = _rendered(service.url + page, tmp_path / "chromium")
    assert "cdn.jsdelivr.net" not in dom, "the page loads its assets from the service"
    assert operation_marker in dom, dom[-3000:]
    for path in ("/v1/{task}/classify", "/v1/memories/{task}", "/v1/usage"):
        assert path in dom, f"{path} is listed on {page}"
