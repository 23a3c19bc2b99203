"""The static tier of the deployment files, checked offline on every CI run (no Docker engine):
compose profiles resolve and take their budget from loadtest/profiles.yml, the Dockerfile lints clean,
and every Kubernetes overlay builds with kustomize and validates against the Kubernetes schemas."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from loadtest.profiles import PROFILES_FILE, load_profiles

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "k8s" / "overlays").iterdir())


def _run(*command: str | Path) -> str:
    done = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("profile", ["raspi4", "iphone"])
def test_compose_profile_takes_its_budget_from_the_profiles_file(profile: str) -> None:
    _run(BIN / "docker-compose", "--profile", profile, "config", "-q")
    config = yaml.safe_load(_run(BIN / "docker-compose", "--profile", profile, "config"))
    service = config["services"][f"spartan-{profile}"]
    expected = load_profiles()[profile]
    assert float(service["cpus"]) == expected.cpus
    assert service["cpuset"] == expected.cpuset
    assert int(service["mem_limit"]) == expected.memory_bytes
    assert service["environment"]["SPARTAN_THREADS"] == str(expected.threads)
    assert service["environment"]["SPARTAN_PRECISION"] == expected.precision, "the device's, not auto's"
    assert f"loadgen-{profile}" in config["services"], "each profile brings its load generator"


def test_compose_takes_a_host_quota_from_the_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("SPARTAN_RASPI4_CPUS=0.263\n")
    config = yaml.safe_load(
        _run(BIN / "docker-compose", "--env-file", env_file, "--profile", "raspi4", "config")
    )
    assert float(config["services"]["spartan-raspi4"]["cpus"]) == 0.263


def test_compose_local_profile_has_no_device_budget() -> None:
    config = yaml.safe_load(_run(BIN / "docker-compose", "--profile", "local", "config"))
    assert "cpus" not in config["services"]["spartan"]


def test_dockerfile_lints_clean() -> None:
    _run(BIN / "hadolint", "Dockerfile")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_overlay_builds_and_validates(overlay: str, tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (for its built-in kustomize) is needed: apt-get install kubernetes-client"
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(_run(kubectl, "kustomize", ROOT / "deploy" / "k8s" / "overlays" / overlay))
    _run(BIN / "kubernetes-validate", "-k", "1.32.0", "--strict", manifest)
    kinds = {doc["kind"] for doc in yaml.safe_load_all(manifest.read_text())}
    assert {"Deployment", "Service", "StatefulSet", "HorizontalPodAutoscaler", "ConfigMap", "Secret"} <= kinds


def test_edge_overlay_budget_equals_the_raspi4_profile() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl
    docs = yaml.safe_load_all(_run(kubectl, "kustomize", ROOT / "deploy" / "k8s" / "overlays" / "edge"))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    profile = load_profiles(PROFILES_FILE)["raspi4"]
    assert container["resources"]["limits"]["cpu"] == f"{round(profile.cpus * 1000)}m"
    assert container["resources"]["limits"]["memory"] == f"{profile.memory_bytes >> 20}Mi"
    assert {"name": "SPARTAN_THREADS", "value": str(profile.threads)} in container["env"]
    assert {"name": "SPARTAN_PRECISION", "value": profile.precision} in container["env"]
