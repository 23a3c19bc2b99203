"""Service commands: ``serve`` (every ServiceSettings field is a flag) and ``keys add``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spartan_cli.common import log


def _settings_source(parser: argparse.ArgumentParser) -> Any:
    """Add one flag per ServiceSettings field to ``parser``; returns the source that reads them back."""
    from pydantic_settings import CliSettingsSource

    from service.settings import ServiceSettings

    return CliSettingsSource(
        ServiceSettings,
        root_parser=parser,
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from service.serve import run
    from service.settings import load_settings

    run(load_settings(args.settings_source(parsed_args=args)))
    return 0


def cmd_keys_add(args: argparse.Namespace) -> int:
    from service.auth import add_key

    key = add_key(args.file, args.tenant, args.role)
    log(f"added a {args.role} key for tenant {args.tenant!r} to {args.file} (only its hash is stored)")
    print(key)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the HTTP service. Every flag is also a SPARTAN_<NAME> environment variable; "
        "a flag wins over the environment.",
    )
    serve.set_defaults(func=cmd_serve, settings_source=_settings_source(serve))

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys_add = keys.add_parser("add", help="create a key, store its hash, print the key once")
    keys_add.add_argument("--file", type=Path, required=True, help="keys file (SPARTAN_API_KEYS_FILE)")
    keys_add.add_argument("--tenant", required=True)
    keys_add.add_argument("--role", choices=("tenant", "admin"), default="tenant")
    keys_add.set_defaults(func=cmd_keys_add)
