"""Request and response bodies of the Open Inference Protocol v2 (the KServe / Triton REST API).

The shapes follow the protocol's specification, so existing v2 clients (tritonclient, KServe's
and MLServer's) read them; only what a text classifier takes is accepted: BYTES inputs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from service.api.schemas import Text

Parameters = dict[str, str | int | float | bool]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any size")


class ModelMetadata(BaseModel):
    """A task as a v2 model: its kept versions, its inputs (``text_pair`` only for pair tasks)
    and its outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferInput(BaseModel):
    """A BYTES tensor of texts: ``data`` as JSON strings, or binary data after the JSON header
    (``parameters.binary_data_size``, the binary tensor extension)."""

    name: Literal["text", "text_pair"] = Field(description="text, or text_pair: the second text of each pair")
    shape: tuple[NonNegativeInt] | tuple[NonNegativeInt, Literal[1]] = Field(description="[N] or [N, 1]")
    datatype: Literal["BYTES"]
    parameters: Parameters | None = None
    data: list[Text] | list[Annotated[list[Text], Field(min_length=1, max_length=1)]] | None = Field(
        None, description="N texts ([N]) or N one-text rows ([N, 1]); absent with binary_data_size"
    )


class RequestedOutput(BaseModel):
    name: str
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=2)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, str] | None = None
    data: list[str] | list[float]


class InferResponse(BaseModel):
    """Outputs of every input row; ``model_version`` is the one memory version that served them."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
