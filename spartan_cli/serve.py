"""Service commands: ``serve`` (every ServiceSettings field is a flag), ``keys``, ``registry migrate``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
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
    from service.keysfile import add_key

    key = add_key(args.file, args.tenant, args.role)
    log(f"added a {args.role} key for tenant {args.tenant!r} to {args.file} (only its hash is stored)")
    print(key)
    return 0


_UNITS = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "kb": 10**3, "mb": 10**6, "gb": 10**9}


def _limit(kind: type[int] | type[float]) -> Callable[[str], int | float | None]:
    """An argparse type: a number, or ``none`` to remove the limit; sizes may end in KiB, MiB, GiB."""

    def parse(text: str) -> int | float | None:
        lowered = text.strip().lower()
        if lowered == "none":
            return None
        unit = next((u for u in _UNITS if lowered.endswith(u)), None)
        scale = _UNITS[unit] if unit else 1
        number = lowered.removesuffix(unit) if unit else lowered
        try:
            return kind(float(number) * scale) if unit else kind(number)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None

    return parse


QUOTA_FLAGS = {
    "max_tasks": (int, "tasks the tenant may hold"),
    "max_bytes": (int, "sum of its current memory files, e.g. 512MiB"),
    "rows_per_second": (float, "texts per second per replica (token bucket)"),
    "burst_rows": (int, "texts it may send at once (default: one second's worth)"),
    "weight": (float, "its share of the engine when tenants compete (default 1)"),
}


def cmd_keys_quota(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from memories.errors import ConfigError
    from service.keysfile import set_quota
    from service.quotas import Quota
    from service.tasks import validate_tenant

    if args.tenant is not None:
        validate_tenant(args.tenant)
    given = {name: getattr(args, name) for name in QUOTA_FLAGS if getattr(args, name) is not _UNSET}
    try:
        quota = Quota(**given)
    except ValidationError as exc:
        problems = "; ".join(f"--{str(e['loc'][0]).replace('_', '-')}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid quota, the keys file is unchanged: {problems}") from None
    content = set_quota(args.file, args.tenant, quota)
    shown = content.quotas.of(args.tenant) if args.tenant else content.quotas.default
    who = f"tenant {args.tenant!r}" if args.tenant else "every tenant without its own entry"
    log(f"quota of {who} in {args.file}: {shown.model_dump()}")
    return 0


_UNSET: Any = object()


def cmd_registry_migrate(args: argparse.Namespace) -> int:
    import asyncio

    from service.app import make_registry
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        registry=args.registry,
        registry_dir=args.registry_dir,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
    )

    async def migrate() -> int:
        registry = make_registry(settings)
        try:
            return await registry.migrate()
        finally:
            await registry.close()

    moved = asyncio.run(migrate())
    log(f"moved {moved} tasks into their owners' namespaces" if moved else "nothing to migrate")
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
    quota = keys.add_parser(
        "quota",
        help="set a tenant's quota (or the default) in the keys file",
        description="Set limits in the keys file; a running service applies them within seconds. "
        "Flags not given keep their value; 'none' removes a limit.",
    )
    quota.add_argument("--file", type=Path, required=True, help="keys file (SPARTAN_API_KEYS_FILE)")
    who = quota.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="the tenant whose quota to set")
    who.add_argument("--default", dest="tenant", action="store_const", const=None, help="the default quota")
    for name, (kind, help_text) in QUOTA_FLAGS.items():
        quota.add_argument(f"--{name.replace('_', '-')}", type=_limit(kind), default=_UNSET, help=help_text)
    quota.set_defaults(func=cmd_keys_quota)

    registry = sub.add_parser("registry", help="registry maintenance").add_subparsers(
        dest="registry_command", required=True
    )
    migrate = registry.add_parser(
        "migrate",
        help="move old-layout tasks into their owners' namespaces (serve also does it at start-up)",
        description="Idempotent; an interrupted run is completed by running it again. Stop or upgrade "
        "every replica first: one of the previous version does not see migrated tasks.",
    )
    migrate.add_argument("--registry", choices=("file", "redis"), default="file")
    migrate.add_argument(
        "--registry-dir", type=Path, default=Path("registry"), help="the file registry's root"
    )
    migrate.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    migrate.add_argument("--redis-prefix", default="spartan")
    migrate.set_defaults(func=cmd_registry_migrate)
