"""Memory files: round trips, and every rejection with its precise message."""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

from memories.backbone import Backbone
from memories.config import ExitConfig, LoraXSConfig
from memories.errors import BackboneMismatchError, ConfigError, InvalidMemoryFileError, MemoryTooLargeError
from memories.memfile import (
    FileDType,
    MemoryFile,
    MemoryMetadata,
    check_backbone,
    parse_memory,
    read_memory,
)
from memories.precision import ResidentDType
from tests.conftest import make_lora_memfile, make_memfile


def _reheader(data: bytes, mutate: object) -> bytes:
    """Rewrite a safetensors file's JSON header with ``mutate(header)`` (tensor bytes kept)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    mutate(header)  # type: ignore[operator]
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + length :]


def test_round_trip_fp32_is_exact_and_fp16_is_close(roberta_tiny: Backbone, tmp_path: Path) -> None:
    memfile = make_memfile(roberta_tiny)
    sha = memfile.save(tmp_path / "m.safetensors")
    loaded = read_memory(tmp_path / "m.safetensors")
    assert loaded.sha256 == sha
    assert loaded.metadata == memfile.metadata
    assert loaded.dtype == "float32"
    for name, tensor in memfile.tensors.items():
        assert torch.equal(loaded.tensors[name], tensor)
    half = parse_memory(memfile.to_bytes("float16"))
    assert half.dtype == "float16"
    assert len(memfile.to_bytes("float16")) < 0.6 * len(memfile.to_bytes("float32"))
    for name, tensor in memfile.tensors.items():
        torch.testing.assert_close(half.tensors[name].float(), tensor, atol=1e-3, rtol=1e-3)
    check_backbone(loaded.metadata, roberta_tiny)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temp file may remain"


def test_loaded_memory_predicts_like_the_trained_one(roberta_tiny: Backbone) -> None:
    from memories.model import run_batch

    memfile = make_memfile(roberta_tiny)
    batch = roberta_tiny.tokenize(["one text", "and another"])
    original = memfile.to_task_memory().pack("cls")
    loaded = parse_memory(memfile.to_bytes()).to_packed()
    a = run_batch(roberta_tiny, batch, [original] * 2).logits
    b = run_batch(roberta_tiny, batch, [loaded] * 2).logits
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    ("stored", "resident", "expected"),
    [
        ("float16", "auto", torch.float16),
        ("float32", "auto", torch.float32),
        ("float32", "float16", torch.float16),
        ("float16", "float32", torch.float32),
    ],
)
def test_resident_dtype_follows_the_file_or_the_setting(
    roberta_tiny: Backbone, stored: FileDType, resident: ResidentDType, expected: torch.dtype
) -> None:
    packed = parse_memory(make_memfile(roberta_tiny).to_bytes(stored)).to_packed(resident)
    assert packed.dtype == expected
    assert all(t.dtype == expected for pair in packed.layers for t in pair)
    assert all(t.dtype == expected for t in packed.head)


@pytest.mark.parametrize("stored", ["float32", "float16"])
def test_auto_keeps_the_layers_in_bf16_on_a_bf16_backbone_and_the_head_as_stored(
    roberta_tiny: Backbone, stored: FileDType
) -> None:
    memfile = parse_memory(make_memfile(roberta_tiny).to_bytes(stored))
    packed = memfile.to_packed("auto", torch.bfloat16)
    assert all(t.dtype == torch.bfloat16 for pair in packed.layers for t in pair)
    assert all(t.dtype == getattr(torch, stored) for t in packed.head)
    forced = memfile.to_packed("float32", torch.bfloat16)
    assert forced.dtype == torch.float32, "an explicit resident dtype wins"


def test_rejects_pickle(roberta_tiny: Backbone) -> None:
    with pytest.raises(InvalidMemoryFileError, match="Python pickle.*never pickle"):
        parse_memory(pickle.dumps({"layers.0.parent_keys": [1.0]}))
    buffer = io.BytesIO()
    torch.save(make_memfile(roberta_tiny).tensors, buffer)
    with pytest.raises(InvalidMemoryFileError, match="zip archive.*torch.save"):
        parse_memory(buffer.getvalue())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated file: 0 bytes"),
        (b"hello", "truncated file: 5 bytes"),
        (b"this is plain text, not a memory file at all", "header length .* exceeds"),
        (struct.pack("<Q", 4) + b"nope", "header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
        (struct.pack("<Q", 2) + b"{}", "no string-valued __metadata__"),
    ],
)
def test_rejects_non_safetensors_bytes(data: bytes, message: str) -> None:
    with pytest.raises(InvalidMemoryFileError, match=message):
        parse_memory(data)


def test_rejects_truncated_file(roberta_tiny: Backbone) -> None:
    data = make_memfile(roberta_tiny).to_bytes()
    with pytest.raises(InvalidMemoryFileError, match="truncated file: tensor"):
        parse_memory(data[:-10])
    with pytest.raises(InvalidMemoryFileError, match="truncated file: the header claims"):
        parse_memory(data[:100])


def test_rejects_trailing_bytes(roberta_tiny: Backbone) -> None:
    with pytest.raises(InvalidMemoryFileError, match="trailing bytes"):
        parse_memory(make_memfile(roberta_tiny).to_bytes() + b"\0" * 8)


def test_rejects_missing_extra_and_misshaped_tensors(roberta_tiny: Backbone) -> None:
    memfile = make_memfile(roberta_tiny)
    header = memfile.metadata.to_header()
    tensors = dict(memfile.tensors)
    del tensors["layers.1.child_values"]
    with pytest.raises(InvalidMemoryFileError, match="missing tensors: layers.1.child_values"):
        parse_memory(save(tensors, metadata=header))
    tensors = {**memfile.tensors, "layers.9.parent_keys": torch.zeros(16, 32)}
    with pytest.raises(InvalidMemoryFileError, match="unexpected tensors: layers.9.parent_keys"):
        parse_memory(save(tensors, metadata=header))
    tensors = {**memfile.tensors, "head.out.weight": torch.zeros(3, 32)}
    with pytest.raises(
        InvalidMemoryFileError, match=r"head.out.weight has shape \[3, 32\], the metadata implies \[2, 32\]"
    ):
        parse_memory(save(tensors, metadata=header))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_rejects_non_finite_values(roberta_tiny: Backbone, bad: float) -> None:
    memfile = make_memfile(roberta_tiny)
    tensors = dict(memfile.tensors)
    tensors["layers.0.child_keys"] = tensors["layers.0.child_keys"].clone()
    tensors["layers.0.child_keys"][0, 0, 0] = bad
    with pytest.raises(InvalidMemoryFileError, match="layers.0.child_keys has 1 non-finite values"):
        parse_memory(save(tensors, metadata=memfile.metadata.to_header()))


def test_rejects_other_dtypes_and_mixed_dtypes(roberta_tiny: Backbone) -> None:
    memfile = make_memfile(roberta_tiny)
    header = memfile.metadata.to_header()
    tensors = {k: v.to(torch.bfloat16) for k, v in memfile.tensors.items()}
    with pytest.raises(InvalidMemoryFileError, match="dtype BF16; memory files hold F32 or F16"):
        parse_memory(save(tensors, metadata=header))
    tensors = {**memfile.tensors, "head.out.bias": memfile.tensors["head.out.bias"].half()}
    with pytest.raises(InvalidMemoryFileError, match="mix dtypes"):
        parse_memory(save(tensors, metadata=header))


def test_rejects_oversize(roberta_tiny: Backbone, tmp_path: Path) -> None:
    data = make_memfile(roberta_tiny).to_bytes()
    with pytest.raises(MemoryTooLargeError, match=f"{len(data)} bytes; the limit is 1000 bytes"):
        parse_memory(data, max_bytes=1000)
    (tmp_path / "big.safetensors").write_bytes(data)
    with pytest.raises(MemoryTooLargeError, match="the limit is 1000 bytes"):
        read_memory(tmp_path / "big.safetensors", max_bytes=1000)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format", "something-else", "'format' must be 'spartan-memory'"),
        ("format_version", "2", "format_version 2 is not supported"),
        ("num_layers", "two", "'num_layers' is not valid JSON"),
        ("num_layers", '"2"', "num_layers: Input should be a valid integer"),
        ("top_k", "20", "top_k 20 exceeds num_parents 16"),
        ("labels", '["a", "a"]', "at least 2 distinct label names"),
        ("task_type", "ranking", "task_type: Input should be 'classification' or 'regression'"),
        ("pooling", "max", "pooling: Input should be 'cls' or 'mean'"),
        ("backbone_fingerprint", "abc", "backbone_fingerprint: String should match pattern"),
        ("surprise", "1", "surprise: Extra inputs are not permitted"),
    ],
)
def test_rejects_bad_metadata(roberta_tiny: Backbone, field: str, value: str, message: str) -> None:
    data = make_memfile(roberta_tiny).to_bytes()

    def mutate(header: dict[str, dict[str, str]]) -> None:
        header["__metadata__"][field] = value

    with pytest.raises(InvalidMemoryFileError, match=message):
        parse_memory(_reheader(data, mutate))


def test_rejects_missing_metadata_field(roberta_tiny: Backbone) -> None:
    def mutate(header: dict[str, dict[str, str]]) -> None:
        del header["__metadata__"]["labels"]

    with pytest.raises(InvalidMemoryFileError, match="bad metadata: labels: Field required"):
        parse_memory(_reheader(make_memfile(roberta_tiny).to_bytes(), mutate))


def test_rejects_wrong_backbone(tiny_backbones: dict[str, Backbone]) -> None:
    roberta, bert = tiny_backbones["roberta-tiny-random"], tiny_backbones["bert-tiny-random"]
    memfile = make_memfile(roberta)
    with pytest.raises(BackboneMismatchError, match="trained on backbone 'roberta-tiny-random'.*retrain"):
        check_backbone(memfile.metadata, bert)
    wider = memfile.metadata.model_copy(update={"hidden_size": 64})
    with pytest.raises(BackboneMismatchError, match="hidden size 64.*hidden size 32"):
        check_backbone(wider, roberta)
    deeper = memfile.metadata.model_copy(update={"num_layers": 12})
    with pytest.raises(BackboneMismatchError, match="12 layers"):
        check_backbone(deeper, roberta)


def test_fp16_overflow_is_refused_and_leaves_the_old_file(roberta_tiny: Backbone, tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    memfile = make_memfile(roberta_tiny)
    memfile.save(path)
    before = path.read_bytes()
    huge = MemoryFile(memfile.metadata, {**memfile.tensors, "head.out.bias": torch.tensor([1e6, 0.0])})
    with pytest.raises(ConfigError, match="beyond the fp16 range"):
        huge.save(path, "float16")
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 1


def test_regression_memory_has_one_output_and_no_labels(roberta_tiny: Backbone) -> None:
    with pytest.raises(ValueError, match="regression memory has no label names"):
        MemoryMetadata(**{**make_memfile(roberta_tiny).metadata.model_dump(), "task_type": "regression"})
    meta = MemoryMetadata(
        **{**make_memfile(roberta_tiny).metadata.model_dump(), "task_type": "regression", "labels": []}
    )
    assert meta.num_outputs == 1


EXITS = ExitConfig((0,), hidden=4, threshold=0.8)


def test_exits_round_trip_and_a_file_without_them_has_no_exits_field(roberta_tiny: Backbone) -> None:
    memfile = make_memfile(roberta_tiny, exits=EXITS)
    loaded = parse_memory(memfile.to_bytes())
    assert loaded.metadata.exit_config == EXITS
    packed = loaded.to_packed()
    assert packed.exits is not None
    assert packed.exits.config == EXITS
    with_exits = make_memfile(roberta_tiny).to_bytes()
    (length,) = struct.unpack("<Q", with_exits[:8])
    assert "exits" not in json.loads(with_exits[8 : 8 + length])["__metadata__"], "files read as before"
    assert parse_memory(with_exits).to_packed().exits is None


@pytest.mark.parametrize(
    ("exits", "message"),
    [
        ('{"layers": [1], "hidden": 4, "threshold": 0.8}', r"exits: exit layers must be in \[0, 0\]"),
        ('{"layers": [], "hidden": 4, "threshold": 0.8}', "exits.layers: List should have at least 1 item"),
        ('{"layers": [0], "hidden": 0, "threshold": 0.8}', "exits.hidden: Input should be greater than or"),
        ('{"layers": [0], "hidden": 4, "threshold": 0}', "exits.threshold: Input should be greater than 0"),
        ('{"layers": [0], "hidden": 4, "threshold": 1.5}', "exits.threshold: Input should be less than or"),
        ('{"layers": [0], "hidden": 4}', "exits.threshold: Field required"),
        (
            '{"layers": [0], "hidden": 8, "threshold": 0.8}',
            r"exits.classifiers.0.dense.weight has shape \[4, 32\]",
        ),
    ],
)
def test_rejects_bad_exits(roberta_tiny: Backbone, exits: str, message: str) -> None:
    def mutate(header: dict[str, dict[str, str]]) -> None:
        header["__metadata__"]["exits"] = exits

    with pytest.raises(InvalidMemoryFileError, match=message):
        parse_memory(_reheader(make_memfile(roberta_tiny, exits=EXITS).to_bytes(), mutate))


def test_rejects_exits_without_their_tensors_tensors_without_exits_and_exits_on_regression(
    roberta_tiny: Backbone,
) -> None:
    def add_exits(header: dict[str, dict[str, str]]) -> None:
        header["__metadata__"]["exits"] = '{"layers": [0], "hidden": 4, "threshold": 0.8}'

    def drop_exits(header: dict[str, dict[str, str]]) -> None:
        del header["__metadata__"]["exits"]

    with pytest.raises(InvalidMemoryFileError, match="missing tensors: exits.classifiers.0.dense.bias"):
        parse_memory(_reheader(make_memfile(roberta_tiny).to_bytes(), add_exits))
    with pytest.raises(InvalidMemoryFileError, match="unexpected tensors: exits.classifiers.0.dense.bias"):
        parse_memory(_reheader(make_memfile(roberta_tiny, exits=EXITS).to_bytes(), drop_exits))
    with pytest.raises(InvalidMemoryFileError, match="exits: exits need a classification task"):
        parse_memory(_reheader(make_memfile(roberta_tiny, labels=()).to_bytes(), add_exits))


def _header(data: bytes) -> dict[str, str]:
    (length,) = struct.unpack("<Q", data[:8])
    metadata: dict[str, str] = json.loads(data[8 : 8 + length])["__metadata__"]
    return metadata


def test_lora_xs_round_trip_and_a_spartan_file_has_no_kind_field(roberta_tiny: Backbone) -> None:
    memfile = make_lora_memfile(roberta_tiny, LoraXSConfig(rank=3, sites=("query", "ffn_output")))
    data = memfile.to_bytes()
    header = _header(data)
    assert header["kind"] == "lora-xs"
    assert json.loads(header["lora_xs"]) == {"rank": 3, "sites": ["query", "ffn_output"]}
    assert not {"num_parents", "num_children", "top_k", "child_temperature", "exits"} & set(header)
    loaded = parse_memory(data)
    assert loaded.metadata == memfile.metadata
    assert loaded.metadata.memory_config == LoraXSConfig(rank=3, sites=("query", "ffn_output"))
    assert sorted(loaded.tensors) == sorted(memfile.tensors)
    assert "kind" not in _header(make_memfile(roberta_tiny).to_bytes()), "SPARTAN files read as before"
    assert parse_memory(make_memfile(roberta_tiny).to_bytes()).metadata.kind == "spartan"
    with pytest.raises(ConfigError, match="this is a lora-xs memory, not a SPARTAN one"):
        loaded.metadata.spartan_config  # noqa: B018


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "lora", "kind: Input should be 'spartan' or 'lora-xs'"),
        (
            "lora_xs",
            '{"rank": 0, "sites": ["query"]}',
            "lora_xs.rank: Input should be greater than or equal to 1",
        ),
        (
            "lora_xs",
            '{"rank": 65, "sites": ["query"]}',
            "lora_xs.rank: Input should be less than or equal to 64",
        ),
        ("lora_xs", '{"rank": 4, "sites": []}', "lora_xs.sites: List should have at least 1 item"),
        ("lora_xs", '{"rank": 4, "sites": ["key"]}', "lora_xs.sites.0: Input should be 'query', 'value'"),
        (
            "lora_xs",
            '{"rank": 4, "sites": ["value", "query"]}',
            "lora_xs: LoRA-XS sites must be in the order",
        ),
        ("lora_xs", '{"rank": 4, "sites": ["query", "query"]}', "lora_xs: LoRA-XS sites must be distinct"),
        ("lora_xs", '{"rank": 4}', "lora_xs.sites: Field required"),
        ("num_parents", "16", "a lora-xs memory has no num_parents"),
        ("exits", '{"layers": [0], "hidden": 4, "threshold": 0.8}', "a lora-xs memory has none"),
        (
            "lora_xs",
            '{"rank": 5, "sites": ["query", "value", "attention_output", "ffn_output"]}',
            r"tensor layers.0.query has shape \[4, 4\], the metadata implies \[5, 5\]",
        ),
        (
            "lora_xs",
            '{"rank": 4, "sites": ["query", "value"]}',
            "unexpected tensors: layers.0.attention_output",
        ),
    ],
)
def test_rejects_bad_lora_xs_metadata(roberta_tiny: Backbone, field: str, value: str, message: str) -> None:
    def mutate(header: dict[str, dict[str, str]]) -> None:
        header["__metadata__"][field] = value

    data = make_lora_memfile(roberta_tiny, LoraXSConfig(rank=4)).to_bytes()
    with pytest.raises(InvalidMemoryFileError, match=message):
        parse_memory(_reheader(data, mutate))


def test_rejects_a_kind_without_its_fields_or_with_the_other_kinds(roberta_tiny: Backbone) -> None:
    def drop_lora(header: dict[str, dict[str, str]]) -> None:
        del header["__metadata__"]["lora_xs"]

    def to_spartan(header: dict[str, dict[str, str]]) -> None:
        del header["__metadata__"]["kind"]

    def to_lora(header: dict[str, dict[str, str]]) -> None:
        header["__metadata__"]["kind"] = "lora-xs"

    def drop_parents(header: dict[str, dict[str, str]]) -> None:
        del header["__metadata__"]["num_parents"]

    lora = make_lora_memfile(roberta_tiny).to_bytes()
    spartan = make_memfile(roberta_tiny).to_bytes()
    with pytest.raises(InvalidMemoryFileError, match="a lora-xs memory needs lora_xs: its rank and sites"):
        parse_memory(_reheader(lora, drop_lora))
    with pytest.raises(InvalidMemoryFileError, match="a spartan memory needs num_parents, num_children"):
        parse_memory(_reheader(lora, to_spartan))
    with pytest.raises(InvalidMemoryFileError, match="a lora-xs memory has no num_parents, num_children"):
        parse_memory(_reheader(spartan, to_lora))
    with pytest.raises(InvalidMemoryFileError, match="a spartan memory needs num_parents$"):
        parse_memory(_reheader(spartan, drop_parents))


def test_a_header_length_that_opens_like_a_pickle_still_parses(roberta_tiny: Backbone) -> None:
    """0x80 0x03 is pickle's magic and also the start of a 896-byte safetensors header length."""
    base = make_lora_memfile(roberta_tiny)
    for pad in range(256):
        meta = base.metadata.model_copy(update={"task": "t" * pad})
        data = MemoryFile(meta, base.tensors).to_bytes()
        if data[0] == 0x80 and 2 <= data[1] <= 5:
            break
    else:
        pytest.fail("no task name length gives a header length of 128 mod 256 in [640, 1535]")
    assert parse_memory(data).metadata.task == "t" * pad
    with pytest.raises(InvalidMemoryFileError, match="Python pickle"):
        parse_memory(pickle.dumps({"x": 1}, protocol=3))
