"""What every command group shares: logging to stderr, the report writer, options and backbones."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from memories.config import ExitConfig, LoraXSConfig, RoutedFFNConfig, SpartanConfig

if TYPE_CHECKING:  # torch loads inside the commands that need it
    from memories.backbone import Backbone

T = TypeVar("T")


class CommandSettings(BaseSettings):
    """The environment every command but ``serve`` reads (``serve`` reads ServiceSettings)."""

    model_config = SettingsConfigDict(env_prefix="SPARTAN_", extra="ignore")

    cache_dir: Path | None = Field(
        None, description="directory for backbones unpacked from PyPI packages (default ~/.cache/spartan)"
    )
    malloc_reuse: bool = Field(
        True,
        description="glibc malloc keeps freed batch buffers for the next batch (memories.allocator); "
        "false: glibc's defaults, e.g. to measure what the tuning gives",
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_report(report: dict[str, object], path: Path | None, command: str) -> None:
    """Stamp ``report`` with the command that made it and write it atomically to ``path`` (if any)."""
    from memories.atomic import write_json

    report["command"] = command
    if path is not None:
        write_json(path, report)
        log(f"wrote {path}")


def options_from(args: argparse.Namespace, cls: type[T], **computed: Any) -> T:
    """An options dataclass from the parsed flags named like its fields, plus ``computed`` ones.

    Flags are named after the fields they fill, so no command copies arguments by hand; fields
    without a flag keep their defaults.
    """
    assert dataclasses.is_dataclass(cls), f"{cls} is not a dataclass"
    given = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if f.init and f.name not in computed and value is not None:
            given[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**given, **computed)


def add_spartan_options(parser: argparse.ArgumentParser) -> None:
    defaults = SpartanConfig()
    group = parser.add_argument_group("memory hyper-parameters")
    group.add_argument("--parents", type=int, default=defaults.num_parents, help="Np, parents per layer")
    group.add_argument("--children", type=int, default=defaults.num_children, help="Nc, children per parent")
    group.add_argument("--top-k", type=int, default=defaults.top_k, help="K, parents chosen per token")
    group.add_argument(
        "--child-temperature", type=float, default=defaults.child_temperature, help="divides child logits"
    )


def spartan_config(args: argparse.Namespace) -> SpartanConfig:
    return SpartanConfig(args.parents, args.children, args.top_k, args.child_temperature)


def lora_xs_config(args: argparse.Namespace) -> LoraXSConfig:
    return LoraXSConfig(rank=args.rank)


def exit_config(args: argparse.Namespace) -> ExitConfig | None:
    """The exits ``--exits``/``--exit-hidden``/``--exit-threshold`` ask for (None: no exits)."""
    if not args.exits:
        return None
    return ExitConfig(tuple(args.exits), args.exit_hidden, args.exit_threshold)


def routed_ffn_config(args: argparse.Namespace) -> RoutedFFNConfig | None:
    """The routed FFN ``--routed-ffn EXPERTS ACTIVE`` asks for (None: dense training)."""
    if not args.routed_ffn:
        return None
    experts, active = args.routed_ffn
    return RoutedFFNConfig(experts=experts, active=active)


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def cache_dir() -> Path:
    """Where backbones are unpacked and LoRA-XS factors cached: SPARTAN_CACHE_DIR or the default."""
    from memories.backbones import default_cache_dir

    return CommandSettings().cache_dir or default_cache_dir()


def backbone(spec: str) -> Backbone:
    """The backbone ``spec`` names, unpacked under SPARTAN_CACHE_DIR when that is set."""
    from memories.backbones import load_backbone

    return load_backbone(spec, CommandSettings().cache_dir)
