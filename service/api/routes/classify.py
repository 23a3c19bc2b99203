"""POST /v1/{task}/classify: parse the body, make one call into the runtime, render its answer.

This is the hot path: the engine thread has already made every prediction
(service.predictions), and the response is validated once and serialised by pydantic directly
(:class:`~service.api.schemas.JSONModelResponse`) instead of FastAPI validating it a second time.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import RuntimeDep, TaskRefDep
from service.api.schemas import ClassifyRequest, ClassifyResponse, ErrorBody, JSONModelResponse
from service.predictions import TextInput

router = APIRouter(tags=["classify"])

ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorBody} for code in (403, 404, 413, 422, 429, 503, 504)
}


def _inputs(body: ClassifyRequest) -> list[TextInput]:
    if isinstance(body.inputs, str):
        return [TextInput(body.inputs)]
    return [TextInput(i) if isinstance(i, str) else TextInput(i.text, i.pair) for i in body.inputs]


@router.post(
    "/v1/{task}/classify",
    response_model=ClassifyResponse,
    response_class=JSONModelResponse,
    responses=ERRORS,
)
async def classify(ref: TaskRefDep, body: ClassifyRequest, runtime: RuntimeDep) -> JSONModelResponse:
    """Classify one text, a list of texts or text pairs with the task's current memory."""
    result = await runtime.classify(ref, _inputs(body), body.explain)
    return JSONModelResponse(ClassifyResponse.model_validate(result, from_attributes=True))
