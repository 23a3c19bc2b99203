"""The serving precision: the mode the settings name, or the one ``auto`` measures at start-up.

``auto`` probes with real memories when there are any (up to four current versions from the
registry, else the seed folder's files), else with a seeded random memory; the check and the
timing are memories.autoprecision's. An explicit mode always wins and costs nothing; a backbone
passed in by the caller (tests, benchmarks) keeps its own mode.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from memories.autoprecision import Decision, decide, random_probe_memory
from memories.backbone import Backbone
from memories.errors import SpartanError
from memories.memfile import check_backbone, parse_memory, read_memory
from memories.model import PackedMemory
from memories.precision import Precision, PrecisionSetting, set_precision
from service.errors import RegistryUnavailableError
from service.registry.base import Registry

log = logging.getLogger(__name__)

PROBE_MEMORIES = 4
PROBE_SEQ_LENGTH = 64


@dataclass(frozen=True)
class PrecisionChoice:
    """What the service runs in and why: the setting, the mode, and ``auto``'s measurements."""

    setting: PrecisionSetting
    mode: Precision
    decision: Decision | None = None
    routing: str = "eager"  # the SPARTAN op's routing: memories.fused.fuse_routing's description


async def _probe_memories(
    backbone: Backbone, registry: Registry, seed_dir: Path | None, max_bytes: int
) -> list[PackedMemory]:
    """Up to PROBE_MEMORIES real memories for ``backbone``: the registry's, else the seed folder's."""
    blobs: list[bytes] = []
    try:
        states = await registry.current_states()
        for ref in sorted(states)[:PROBE_MEMORIES]:
            blobs.append(await registry.read(ref, states[ref].version))
    except RegistryUnavailableError as exc:
        log.warning("precision auto: registry unavailable for the probe (%s)", exc)
    packed = await asyncio.to_thread(_usable, blobs, backbone, max_bytes)
    if not packed and seed_dir is not None:
        files = await asyncio.to_thread(lambda: sorted(seed_dir.glob("*.safetensors"))[:PROBE_MEMORIES])
        packed = await asyncio.to_thread(_usable_files, files, backbone)
    return packed


def _usable(blobs: list[bytes], backbone: Backbone, max_bytes: int) -> list[PackedMemory]:
    packed = []
    for data in blobs:
        try:
            memfile = parse_memory(data, max_bytes)
            check_backbone(memfile.metadata, backbone)
        except SpartanError:
            continue
        packed.append(memfile.to_packed("float32"))
    return packed


def _usable_files(paths: list[Path], backbone: Backbone) -> list[PackedMemory]:
    packed = []
    for path in paths:
        try:
            memfile = read_memory(path)
            check_backbone(memfile.metadata, backbone)
        except SpartanError:
            continue
        packed.append(memfile.to_packed("float32"))
    return packed


async def choose(
    setting: PrecisionSetting,
    backbone: Backbone,
    registry: Registry,
    seed_dir: Path | None,
    max_batch_size: int,
    max_upload_bytes: int,
    rounds: int = 2,
    cache_dir: Path | None = None,
) -> tuple[Backbone, PrecisionChoice]:
    """The backbone in the serving mode (``backbone`` is fp32, freshly loaded); ``cache_dir``:
    where ``auto`` keeps its decision per backbone and CPU (None: measure at every start)."""
    if setting != "auto":
        await asyncio.to_thread(set_precision, backbone, setting)
        return backbone, PrecisionChoice(setting, backbone.precision)  # type: ignore[arg-type]
    memories = await _probe_memories(backbone, registry, seed_dir, max_upload_bytes)
    if not memories:
        log.info("precision auto: no memory to probe with yet; using a seeded random memory")
        memories = [random_probe_memory(backbone)]
    chosen, decision = await asyncio.to_thread(
        decide,
        backbone,
        memories,
        batch_size=min(8, max_batch_size),
        seq_length=min(PROBE_SEQ_LENGTH, backbone.max_positions),
        rounds=rounds,
        log=log.info,
        cache_dir=cache_dir,
    )
    return chosen, PrecisionChoice("auto", decision.chosen, decision)
