"""The Table 1 probe: every variant runs under a profile's budget and is reported beside the paper."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from loadtest.calibrate import ProbeOptions, calibrate, measure_profile
from loadtest.cgroup import cgroup_version
from loadtest.errors import LoadTestError
from loadtest.profiles import PAPER_TABLE1, PROFILES_FILE, VARIANTS, host_env, load_profile
from memories.backbone import Backbone
from memories.hardware import cpu

needs_cgroups = pytest.mark.skipif(
    os.geteuid() != 0 or cgroup_version() is None, reason="needs root and a cgroup hierarchy"
)
QUICK = ProbeOptions(batch_size=2, seq_length=8, seconds=0.05, min_batches=1)


@needs_cgroups
def test_probe_reports_every_variant_against_bare_and_the_paper(roberta_tiny: Backbone) -> None:
    report = measure_profile("raspi4", roberta_tiny, QUICK, 2, lambda _: None, variants=VARIANTS[1:])
    rates, rounds, over = report["inst_per_min"], report["rounds"], report["over_bare"]
    assert isinstance(rates, dict)
    assert isinstance(rounds, dict)
    assert isinstance(over, dict)
    assert set(rates) == set(rounds) == set(over) == set(VARIANTS)
    assert all(rate > 0 for rate in rates.values())
    assert all(len(values) == 2 for values in rounds.values())
    assert over["bare"] == 1.0
    paper = PAPER_TABLE1["raspi4"]
    expected = {variant: paper[variant] / paper["bare"] for variant in VARIANTS}
    assert report["paper_over_bare"] == pytest.approx(expected, abs=1e-4)


def test_unknown_variants_are_refused(roberta_tiny: Backbone) -> None:
    with pytest.raises(LoadTestError, match="unknown variants"):
        measure_profile("raspi4", roberta_tiny, QUICK, 1, lambda _: None, variants=("lora",))


@needs_cgroups
def test_calibrating_into_an_env_file_leaves_the_profiles_file_alone(
    roberta_tiny: Backbone, tmp_path: Path
) -> None:
    profiles, env_file = tmp_path / "profiles.yml", tmp_path / ".env"
    shutil.copy(PROFILES_FILE, profiles)
    before = profiles.read_text()
    options = dataclasses.replace(QUICK, max_probes=1)
    report = calibrate("raspi4", roberta_tiny, options, "cmd", lambda _: None, profiles, env_file)
    assert report["written"] == str(env_file)
    assert profiles.read_text() == before
    here = load_profile("raspi4", profiles, host_env(env_file))
    assert here.cpus == report["cpus"]
    here.check_host("raspi4", cpu())  # measured on this CPU, so it emulates the device here
