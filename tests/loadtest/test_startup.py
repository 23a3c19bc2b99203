"""spartan loadtest startup: every setting starts a real server; auto measures once, then reuses."""

from __future__ import annotations

import pytest

from loadtest.errors import LoadTestError
from loadtest.startup import StartupOptions, run_startup


def test_startup_reports_each_setting_and_auto_reuses_its_decision() -> None:
    options = StartupOptions(backbone="roberta-tiny-random", settings=("fp32", "auto", "auto-cached"), reps=1)
    report = run_startup(options, lambda _: None)
    starts = report["starts"]
    assert isinstance(starts, dict)
    assert set(starts) == {"fp32", "auto", "auto-cached"}
    (fp32,), (auto,), (cached,) = starts["fp32"], starts["auto"], starts["auto-cached"]
    assert (fp32["mode"], fp32["decided_in_s"], fp32["cached"]) == ("fp32", None, False)
    assert auto["cached"] is False, "a fresh cache: auto measures"
    assert cached["cached"] is True, "the warm-up start's decision is reused"
    assert cached["mode"] in {"fp32", "int8"}, "a tiny model's modes run alike: either may be faster"
    over = report["over_fp32_seconds"]
    assert isinstance(over, dict)
    assert over["fp32"] == 0


def test_startup_needs_fp32_as_the_reference() -> None:
    with pytest.raises(LoadTestError, match="must include fp32"):
        StartupOptions(settings=("auto",))
