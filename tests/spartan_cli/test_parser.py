"""The command line's shape: no torch to print help, serve flags generated from the settings,
flags fill options dataclasses, a missing extra is named."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest

from service.settings import ServiceSettings
from spartan_cli.common import options_from
from spartan_cli.main import build_parser, main


def test_help_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from spartan_cli.main import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch' in sys.modules, 'fastapi' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: spartan" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "False False", "help must not load torch or the app"


def test_serve_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for name, field in ServiceSettings.model_fields.items():
        assert f"--{name.replace('_', '-')}" in text, f"spartan serve has no flag for {name}"
        assert field.description, f"ServiceSettings.{name} needs a description (it is the flag's help)"


def test_serve_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPARTAN_PORT", "7001")
    monkeypatch.setenv("SPARTAN_MAX_BATCH_SIZE", "4")
    argv = ["serve", "--port", "7002", "--pinned-tasks", "sst2,bbc", "--compile", "--registry", "redis"]
    args = build_parser().parse_args(argv)
    settings = ServiceSettings(_cli_settings_source=args.settings_source(parsed_args=args))
    assert settings.port == 7002, "a flag wins over the environment"
    assert settings.max_batch_size == 4, "what no flag sets comes from the environment"
    assert settings.pinned_tasks == ["sst2", "bbc"]
    assert settings.compile is True
    assert settings.registry == "redis"


def test_serve_rejects_bad_values_with_the_flag_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SPARTAN_MAX_WAIT_MS", "-1")
    assert main(["serve", "--registry", "s3"]) == 2, "refused before anything starts"
    err = capsys.readouterr().err
    assert "--registry / SPARTAN_REGISTRY: Input should be 'file' or 'redis'" in err
    assert "--max-wait-ms / SPARTAN_MAX_WAIT_MS: Input should be greater than or equal to 0" in err


@dataclass(frozen=True)
class _Options:
    name: str
    sizes: tuple[int, ...] = (1,)
    rate: float = 0.5
    label: str = "computed"


def test_options_from_fills_fields_by_flag_name() -> None:
    import argparse

    args = argparse.Namespace(name="x", sizes=[2, 3], rate=None, unrelated=1)
    options = options_from(args, _Options, label="given")
    assert options == _Options("x", (2, 3), 0.5, "given"), "lists become tuples; None keeps the default"


def test_a_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "loadtest.scenarios", None)  # as if the harness were not installed
    assert main(["loadtest", "scenarios"]) == 2
    err = capsys.readouterr().err
    assert "install the 'lab' extra: pip install 'spartan-serve[lab]'" in err
