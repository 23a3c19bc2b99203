"""Settings of the memories package, read from the environment (prefix ``SPARTAN_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "spartan"


class MemoriesSettings(BaseSettings):
    """Where unpacked backbones are kept; more settings join as the package grows."""

    model_config = SettingsConfigDict(env_prefix="SPARTAN_", extra="ignore")

    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Directory for backbones unpacked from PyPI packages (e.g. mpnet, ~420 MB).",
    )
