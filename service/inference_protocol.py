"""The Open Inference Protocol v2 (KServe, Triton, MLServer, Seldon) mapped onto classify, without HTTP.

A v2 "model" is a task. Its inputs are BYTES tensors of UTF-8 texts, shape ``[N]`` or ``[N, 1]``:
``text``, and ``text_pair`` for sentence-pair tasks. Its outputs: ``label`` (BYTES ``[N]``) and
``probabilities`` (FP32 ``[N, labels]``, the label order in the output's ``labels`` parameter)
for a classification task; ``value`` (FP32 ``[N]``) for a regression.

Tensor data comes as JSON (``data``) or, in the binary tensor extension that Triton's clients send
by default, after the JSON header: each element a 4-byte little-endian length and its bytes
(:func:`split_binary_body`, :func:`decode_bytes`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import InvalidRequestError
from service.predictions import Classification, TextInput

TEXT, TEXT_PAIR = "text", "text_pair"
LABEL, PROBABILITIES, VALUE = "label", "probabilities", "value"
BINARY_SIZE = "binary_data_size"


@dataclass(frozen=True)
class InputTensor:
    """One request input as received: JSON ``data`` or, with the binary extension, raw bytes."""

    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None
    binary_size: int | None


@dataclass(frozen=True)
class OutputTensor:
    name: str
    shape: list[int]
    datatype: str
    data: list[str] | list[float]
    parameters: dict[str, str] | None = None


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, datatype and shape (-1: any size), as model metadata lists them."""

    name: str
    datatype: str
    shape: list[int]


def signature(metadata: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """A task's v2 inputs and outputs, from its memory's metadata. ``text_pair`` is listed for
    every task (a memory does not record whether it was trained on pairs); send it for pair tasks."""
    inputs = [TensorSpec(TEXT, "BYTES", [-1]), TensorSpec(TEXT_PAIR, "BYTES", [-1])]
    if metadata.get("task_type") == "regression":
        return inputs, [TensorSpec(VALUE, "FP32", [-1])]
    labels = metadata.get("labels") or []
    return inputs, [TensorSpec(LABEL, "BYTES", [-1]), TensorSpec(PROBABILITIES, "FP32", [-1, len(labels)])]


def split_binary_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a request body."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise InvalidRequestError(
            f"Inference-Header-Content-Length must be the JSON header's length in bytes, at most the "
            f"body's {len(body)}, not {header_length[:40]!r}"
        )
    cut = int(header_length)
    return body[:cut], body[cut:]


def decode_bytes(raw: bytes, name: str) -> list[str]:
    """A BYTES tensor in the binary extension: each element a 4-byte little-endian length, then it."""
    texts, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidRequestError(f"input {name!r}: binary data ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise InvalidRequestError(f"input {name!r}: binary data ends inside an element")
        texts.append(_utf8(raw[offset : offset + size], name))
        offset += size
    return texts


def _utf8(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError(f"input {name!r}: an element is not UTF-8 text") from None


def _elements(tensor: InputTensor, binary: bytes) -> list[str]:
    """The tensor's texts, checked against its shape."""
    if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
        raise InvalidRequestError(f"input {tensor.name!r}: shape must be [N] or [N, 1], not {tensor.shape}")
    if tensor.binary_size is not None:
        texts = decode_bytes(binary, tensor.name)
    elif tensor.data is None:
        raise InvalidRequestError(f"input {tensor.name!r}: give data, or binary data with {BINARY_SIZE}")
    else:
        flat = [item for row in tensor.data for item in (row if isinstance(row, list) else [row])]
        if not all(isinstance(item, str) for item in flat):
            raise InvalidRequestError(f"input {tensor.name!r}: BYTES data must be strings")
        texts = flat
    if len(texts) != tensor.shape[0]:
        raise InvalidRequestError(
            f"input {tensor.name!r}: shape {tensor.shape} holds {tensor.shape[0]} texts, "
            f"the data {len(texts)}"
        )
    return texts


def text_inputs(tensors: Sequence[InputTensor], binary: bytes) -> list[TextInput]:
    """The texts (and pairs) of a v2 request; binary tensors are read from ``binary`` in order."""
    by_name: dict[str, list[str]] = {}
    offset = 0
    for tensor in tensors:
        if tensor.name not in (TEXT, TEXT_PAIR):
            raise InvalidRequestError(
                f"unknown input {tensor.name!r}: the inputs are {TEXT!r} and, for pairs, {TEXT_PAIR!r}"
            )
        if tensor.name in by_name:
            raise InvalidRequestError(f"input {tensor.name!r} is given twice")
        size = tensor.binary_size or 0
        if offset + size > len(binary):
            raise InvalidRequestError(f"input {tensor.name!r}: {BINARY_SIZE} is beyond the body")
        by_name[tensor.name] = _elements(tensor, binary[offset : offset + size])
        offset += size
    if TEXT not in by_name:
        raise InvalidRequestError(f"give the input {TEXT!r} (a BYTES tensor of texts)")
    texts, pairs = by_name[TEXT], by_name.get(TEXT_PAIR)
    if pairs is None:
        return [TextInput(text) for text in texts]
    if len(pairs) != len(texts):
        raise InvalidRequestError(f"{TEXT!r} has {len(texts)} texts and {TEXT_PAIR!r} {len(pairs)}")
    return [TextInput(text, pair) for text, pair in zip(texts, pairs, strict=True)]


def outputs(answer: Classification, requested: Sequence[str] | None) -> list[OutputTensor]:
    """The answer as v2 output tensors: every output of the task, or the ``requested`` ones.
    The label order is the serving memory's (its predictions' scores keep it)."""
    rows = answer.predictions
    made: dict[str, OutputTensor] = {}
    if rows and rows[0].scores is not None:
        labels = list(rows[0].scores)
        made[LABEL] = OutputTensor(LABEL, [len(rows)], "BYTES", [p.label or "" for p in rows])
        probabilities = [(p.scores or {})[label] for p in rows for label in labels]
        made[PROBABILITIES] = OutputTensor(
            PROBABILITIES, [len(rows), len(labels)], "FP32", probabilities, {"labels": json.dumps(labels)}
        )
    else:
        made[VALUE] = OutputTensor(VALUE, [len(rows)], "FP32", [p.value or 0.0 for p in rows])
    wanted = list(requested) if requested else list(made)
    unknown = [name for name in wanted if name not in made]
    if unknown:
        raise InvalidRequestError(f"unknown output {unknown[0]!r}: this task's outputs are {list(made)}")
    return [made[name] for name in wanted]
