"""POST /v1/{task}/classify.

This is the hot path, so it does its per-request work in plain Python: the engine hands back
floats (one ``tolist`` per batch), the softmax over a task's few labels is computed here without
torch, and the response is validated once and serialised by pydantic directly
(:class:`~service.api.schemas.JSONModelResponse`) instead of FastAPI validating it a second time.
"""

from __future__ import annotations

import math
import time

import torch
from fastapi import APIRouter

from memories.memfile import MemoryMetadata
from service.api.deps import CallerDep, RuntimeDep
from service.api.errors import HTTPProblem
from service.api.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    ErrorBody,
    Explain,
    JSONModelResponse,
    ParentUse,
    Prediction,
)
from service.engine import RowRequest, RowResult

router = APIRouter(tags=["classify"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (404, 413, 422, 429, 503, 504)
}


def _rows(body: ClassifyRequest, max_inputs: int, max_chars: int) -> list[tuple[str, str | None]]:
    inputs = body.inputs
    rows: list[tuple[str, str | None]]
    if isinstance(inputs, str):
        rows = [(inputs, None)]
    else:
        rows = [(i, None) if isinstance(i, str) else (i.text, i.pair) for i in inputs]
    if not rows:
        raise HTTPProblem(422, "inputs: give at least one text")
    if len(rows) > max_inputs:
        raise HTTPProblem(413, f"inputs: {len(rows)} texts, the limit is {max_inputs} per request")
    for n, (text, pair) in enumerate(rows):
        if not text.strip():
            raise HTTPProblem(422, f"inputs[{n}]: the text is empty")
        if len(text) + len(pair or "") > max_chars:
            raise HTTPProblem(
                413, f"inputs[{n}]: {len(text) + len(pair or '')} characters, the limit is {max_chars}"
            )
    return rows


def _parents(routing: torch.Tensor, explain: Explain) -> list[ParentUse]:
    """routing [L, S, Np] -> per layer the mean parent weight over the input's tokens."""
    layers = range(routing.shape[0]) if explain == "all_layers" else [routing.shape[0] - 1]
    uses = []
    for layer in layers:
        weights = routing[layer].mean(dim=0)  # [Np]
        order = [int(p) for p in torch.argsort(weights, descending=True) if weights[p] > 0]
        uses.append(ParentUse(layer=layer, weights=[round(float(w), 6) for w in weights], top=order))
    return uses


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def _prediction(meta: MemoryMetadata, result: RowResult, explain: Explain) -> Prediction:
    parents = _parents(result.routing, explain) if result.routing is not None else None
    if meta.task_type == "regression":
        return Prediction(value=result.logits[0], parents=parents)
    probs = softmax(result.logits)
    scores = {label: round(p, 6) for label, p in zip(meta.labels, probs, strict=True)}
    return Prediction(label=meta.labels[probs.index(max(probs))], scores=scores, parents=parents)


@router.post(
    "/v1/{task}/classify",
    response_model=ClassifyResponse,
    response_class=JSONModelResponse,
    responses=ERRORS,
)
async def classify(
    task: str, body: ClassifyRequest, runtime: RuntimeDep, caller: CallerDep
) -> JSONModelResponse:
    """Classify one text, a list of texts or text pairs with the task's current memory."""
    settings = runtime.settings
    rows = _rows(body, settings.max_inputs, settings.max_text_chars)
    deadline = time.monotonic() + settings.request_timeout_s
    memory = await runtime.memory(task, caller)
    explain = body.explain != "none"
    results = await runtime.engine.submit([RowRequest(t, p, memory, explain) for t, p in rows], deadline)
    response = ClassifyResponse(
        task=task,
        version=memory.version,
        predictions=[_prediction(memory.metadata, r, body.explain) for r in results],
    )
    return JSONModelResponse(response)
