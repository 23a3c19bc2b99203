"""The ``spartan`` command line: train, eval, parents, bench, reproduce, serve, keys, loadtest, backbones.

Each subcommand parses its options, loads what it needs and calls one function of a package;
nothing heavy (torch) is imported to build the parser. Errors of the project's exception tree
end the command with a one-line message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from memories.allocator import REUSE, tune_malloc
from memories.errors import SpartanError
from spartan_cli import lab, loadtest, model, serve
from spartan_cli.common import CommandSettings, quiet_transformers

# A command whose layer is not installed names the extra that brings it, instead of a traceback.
EXTRA_OF_MODULE = {
    "loadtest": "lab",
    "matplotlib": "lab",
    "fastapi": "serve",
    "uvicorn": "serve",
    "redis": "serve",
    "prometheus_client": "serve",
    "httpx": "serve",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spartan", description="SPARTAN memories: train, evaluate, serve and load-test them."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    model.register(sub)
    lab.register(sub)
    serve.register(sub)
    loadtest.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["spartan", *argv])
    if args.command != "serve" and CommandSettings().malloc_reuse:  # serve reads ServiceSettings
        tune_malloc(REUSE)  # before torch starts its threads
    quiet_transformers()
    try:
        status: int = args.func(args)
    except SpartanError as exc:
        print(f"spartan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(
            f"spartan {args.command}: error: this install has no {exc.name!r}; "
            f"install the '{extra}' extra: pip install 'spartan-serve[{extra}]'",
            file=sys.stderr,
        )
        return 2
    return status
