from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.errors import LoadTestError
from loadtest.profiles import (
    PROFILES_FILE,
    Calibration,
    Profile,
    host_env,
    load_profile,
    load_profiles,
    save_profiles,
    write_host_quota,
)
from memories.hardware import Cpu


def test_shipped_profiles_hold_the_paper_references() -> None:
    profiles = load_profiles()
    assert profiles["raspi4"].device.reference_inst_per_min == 207.6
    assert profiles["iphone"].device.reference_inst_per_min == 366.2
    assert profiles["raspi4"].memory_bytes == 8 << 30
    assert profiles["iphone"].limits.memory_bytes == 4 << 30


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yml"
    profiles = load_profiles()
    calibration = Calibration(
        measured_inst_per_min=205.0,
        backbone="b",
        batch_size=32,
        seq_length=64,
        host="h",
        date="d",
        command="c",
    )
    changed = profiles["raspi4"].model_copy(
        update={
            "cpus": 0.5,
            "device": profiles["raspi4"].device.model_copy(update={"calibration": calibration}),
        }
    )
    save_profiles({**profiles, "raspi4": changed}, path)
    again = load_profiles(path)
    assert again["raspi4"] == changed
    assert again["iphone"] == profiles["iphone"]
    assert path.read_text().startswith("# Edge device profiles")


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(LoadTestError, match="unknown profile 'pi5'.*iphone, raspi4"):
        load_profile("pi5", PROFILES_FILE)


def test_a_broken_profiles_file_says_where(tmp_path: Path) -> None:
    path = tmp_path / "profiles.yml"
    path.write_text("services:\n  raspi4:\n    cpus: -1\n")
    with pytest.raises(LoadTestError, match=f"cannot read device profiles from {path}"):
        load_profiles(path)


def test_profiles_name_the_precision_of_their_device() -> None:
    for name, profile in load_profiles().items():
        assert profile.precision == "fp32", f"{name}: neither device has bf16 units (ARMv8.0 / ARMv8.4)"
        assert "bf16" in profile.device.precision_why


AVX512_BF16 = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
EPYC_AVX2 = Cpu("AMD EPYC", ("avx2", "fma"), "AVX2", "family 25 model 1")
EPYC_ZEN4 = Cpu("AMD EPYC", AVX512_BF16, "AVX512", "family 25 model 17")
EPYC_ZEN5 = Cpu("AMD EPYC", AVX512_BF16, "AVX512", "family 26 model 2")
XEON = Cpu(
    "Intel(R) Xeon(R) Processor", ("avx2", "fma", "avx512f", "amx_bf16"), "AVX512", "family 6 model 143"
)


def _calibrated_on(profile: Profile, **cpu: object) -> Profile:
    assert profile.device.calibration is not None
    calibration = profile.device.calibration.model_copy(update=cpu)
    return profile.model_copy(
        update={"device": profile.device.model_copy(update={"calibration": calibration})}
    )


def test_a_quota_calibrated_on_another_kind_of_cpu_is_refused() -> None:
    raspi4 = _calibrated_on(load_profile("raspi4", env={}), cpu_signature="family 25 model 1")
    raspi4.check_host("raspi4", EPYC_AVX2)  # the CPU it was measured on
    with pytest.raises(
        LoadTestError,
        match=r"calibrated on 'AMD EPYC \(family 25 model 1\) \[avx2 fma\]', this host is 'Intel",
    ):
        raspi4.check_host("raspi4", XEON)
    with pytest.raises(
        LoadTestError, match=r"this host is 'AMD EPYC \(family 25 model 17\) \[avx2 fma avx512f"
    ):
        raspi4.check_host("raspi4", EPYC_ZEN4)  # same model name, another CPU
    zen4 = _calibrated_on(raspi4, cpu_flags=list(AVX512_BF16), cpu_signature="family 25 model 17")
    zen4.check_host("raspi4", EPYC_ZEN4)
    with pytest.raises(LoadTestError, match=r"this host is 'AMD EPYC \(family 26 model 2\)"):
        zen4.check_host("raspi4", EPYC_ZEN5)  # same model name and flags, another generation
    with pytest.raises(LoadTestError, match=r"whose speed flags were not recorded"):
        _calibrated_on(raspi4, cpu_flags=[]).check_host("raspi4", EPYC_AVX2)
    with pytest.raises(LoadTestError, match=r"whose generation \(family, model\) were not recorded"):
        _calibrated_on(raspi4, cpu_signature="").check_host("raspi4", EPYC_AVX2)
    bare = raspi4.model_copy(update={"device": raspi4.device.model_copy(update={"calibration": None})})
    with pytest.raises(LoadTestError, match="has no calibration; run 'spartan loadtest calibrate"):
        bare.check_host("raspi4", EPYC_AVX2)


def test_a_calibration_records_its_cpu() -> None:
    old = Calibration(
        measured_inst_per_min=1,
        backbone="b",
        batch_size=1,
        seq_length=8,
        host="vm: AMD EPYC",
        date="d",
        command="c",
    )
    assert old.cpu_model == "AMD EPYC", "records made before the cpu field: the model after the host name"
    new = old.model_copy(update={"cpu": "Intel Xeon", "cpu_flags": ["amx_bf16"]})
    assert new.cpu_model == "Intel Xeon"


def test_the_file_records_each_quota_as_a_compose_variable_with_its_fallback() -> None:
    profiles = load_profiles()
    assert {name: p.cpus_variable for name, p in profiles.items()} == {
        "iphone": "SPARTAN_IPHONE_CPUS",
        "raspi4": "SPARTAN_RASPI4_CPUS",
    }
    raw = PROFILES_FILE.read_text()
    assert f"cpus: ${{SPARTAN_RASPI4_CPUS:-{profiles['raspi4'].cpus:g}}}" in raw


def test_a_host_quota_from_the_env_file_replaces_the_recorded_one(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("REDIS_PORT=6380\n")
    recorded = load_profile("raspi4", env={})
    write_host_quota(env_file, "raspi4", recorded, 0.263, XEON)
    write_host_quota(env_file, "raspi4", recorded, 0.26, XEON)  # a recalibration
    text = env_file.read_text()
    assert "REDIS_PORT=6380" in text, "other lines are kept"
    assert text.count("SPARTAN_RASPI4_CPUS=") == 1
    here = load_profile("raspi4", env=host_env(env_file))
    assert (here.cpus, here.limits.cpus) == (0.26, 0.26)
    assert f"SPARTAN_RASPI4_CPUS_MEASURED_ON='{XEON.kind}'" in text
    assert XEON.kind == "Intel(R) Xeon(R) Processor (family 6 model 143) [avx2 fma avx512f amx_bf16]"
    here.check_host("raspi4", XEON)
    with pytest.raises(LoadTestError, match="calibrated on 'Intel"):
        here.check_host("raspi4", EPYC_AVX2)
    assert load_profiles() == load_profiles(), "the profiles file is not touched"
    assert load_profile("raspi4", env={}).cpus == recorded.cpus


def test_a_host_quota_without_its_cpu_is_refused() -> None:
    with pytest.raises(LoadTestError, match="SPARTAN_RASPI4_CPUS_MEASURED_ON is not"):
        load_profile("raspi4", env={"SPARTAN_RASPI4_CPUS": "0.3"})
    with pytest.raises(LoadTestError, match="'fast' is not a number of cores"):
        load_profile("raspi4", env={"SPARTAN_RASPI4_CPUS": "fast"})
