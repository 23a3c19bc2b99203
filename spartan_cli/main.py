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

from memories.errors import SpartanError
from spartan_cli import lab, loadtest, model, serve
from spartan_cli.common import quiet_transformers


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
    quiet_transformers()
    try:
        status: int = args.func(args)
    except SpartanError as exc:
        print(f"spartan {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return status
