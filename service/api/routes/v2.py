"""The Open Inference Protocol v2 beside /v1: health, server and model metadata, model readiness,
and inference, through the same runtime, API keys, tenants and engine.

A v2 model is a task of the caller's tenant (``?tenant=`` for admin keys, as on /v1). Errors are
the same RFC 9457 problems as everywhere, with the protocol's own ``error`` member added
(service.api.errors), so v2 clients show the message.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from service import inference_protocol as oip
from service.api.bodies import read_limited
from service.api.deps import RuntimeDep, TaskRefDep
from service.api.problems import problem_responses
from service.api.schemas import JSONModelResponse
from service.api.v2_schemas import (
    InferOutput,
    InferRequest,
    InferResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    TensorMetadata,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]


@router.get("", response_model=ServerMetadata)
async def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it supports."""
    return ServerMetadata(name="spartan-serve", version=SERVER_VERSION, extensions=EXTENSIONS)


@router.get("/health/live", response_model=Live)
async def server_live() -> Live:
    """The process is alive."""
    return Live(live=True)


@router.get("/health/ready", response_model=Ready, responses={503: {"model": Ready}})
async def server_ready(runtime: RuntimeDep, response: Response) -> Ready:
    """Ready to infer; 503 while draining after SIGTERM (as /readyz)."""
    if runtime.draining:
        response.status_code = 503
    return Ready(ready=not runtime.draining)


@router.get(
    "/models/{task}", response_model=ModelMetadata, responses=problem_responses(401, 403, 404, 422, 503)
)
async def model_metadata(ref: TaskRefDep, runtime: RuntimeDep) -> ModelMetadata:
    """The task as a v2 model: kept versions, inputs and outputs."""
    current, kept = await runtime.versions(ref)
    inputs, outputs = oip.signature(current.metadata)
    return ModelMetadata(
        name=ref.task,
        versions=[str(info.version) for info in kept],
        platform="spartan",
        inputs=[TensorMetadata.model_validate(t, from_attributes=True) for t in inputs],
        outputs=[TensorMetadata.model_validate(t, from_attributes=True) for t in outputs],
    )


@router.get(
    "/models/{task}/ready", response_model=ModelReady, responses=problem_responses(401, 403, 404, 422, 503)
)
async def model_ready(ref: TaskRefDep, runtime: RuntimeDep) -> ModelReady:
    """200 when the task exists (its memory loads on first use); 404 otherwise."""
    await runtime.resolve(ref)
    return ModelReady(name=ref.task, ready=True)


def _parse(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    head, binary = oip.split_binary_body(body, header_length)
    try:
        return InferRequest.model_validate_json(head), binary
    except ValidationError as exc:  # the same 422 problem as FastAPI's own validation
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors, body=None) from None


@router.post(
    "/models/{task}/infer",
    response_model=InferResponse,
    response_class=JSONModelResponse,
    responses=problem_responses(400, 401, 403, 404, 413, 422, 429, 503, 504),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "the binary tensor extension: the JSON request, then tensor data",
                },
            },
        }
    },
)
async def infer(
    ref: TaskRefDep,
    request: Request,
    runtime: RuntimeDep,
    header_length: Annotated[
        str | None,
        Header(
            alias="Inference-Header-Content-Length",
            pattern=r"^[0-9]+$",
            description="binary tensor extension: the length of the JSON part of the body",
        ),
    ] = None,
) -> JSONModelResponse:
    """Classify the texts of a BYTES tensor ``text`` (and ``text_pair`` for pair tasks)."""
    body, binary = _parse(await read_limited(request, runtime.max_infer_bytes, "the request"), header_length)
    inputs = oip.text_inputs(
        [
            oip.InputTensor(
                t.name, list(t.shape), t.datatype, t.data, _binary_size(t.parameters) if binary else None
            )
            for t in body.inputs
        ],
        binary,
    )
    answer = await runtime.classify(ref, inputs)
    requested = [o.name for o in body.outputs] if body.outputs else None
    tensors = oip.outputs(answer, requested)
    return JSONModelResponse(
        InferResponse(
            model_name=ref.task,
            model_version=str(answer.version),
            id=body.id,
            outputs=[InferOutput.model_validate(asdict(t)) for t in tensors],
        )
    )


def _binary_size(parameters: dict[str, str | int | float | bool] | None) -> int | None:
    size = (parameters or {}).get(oip.BINARY_SIZE)
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
