"""POST /v1/{task}/classify: parse the body, make one call into the runtime, render its answer.

This is the hot path: the engine thread has already made every prediction
(service.predictions), and the response is validated once and serialised by pydantic directly
(:class:`~service.api.schemas.JSONModelResponse`) instead of FastAPI validating it a second time.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service.api.deps import RuntimeDep, TaskRefDep
from service.api.problems import problem_responses
from service.api.schemas import ClassifyRequest, ClassifyResponse, JSONModelResponse, PipelineAnswer
from service.predictions import AnswerFormat, Classification, TextInput, render

router = APIRouter(tags=["classify"])


def _inputs(body: ClassifyRequest) -> list[TextInput]:
    if isinstance(body.inputs, str):
        return [TextInput(body.inputs)]
    return [TextInput(i) if isinstance(i, str) else TextInput(i.text, i.pair) for i in body.inputs]


@router.post(
    "/v1/{task}/classify",
    response_model=ClassifyResponse | PipelineAnswer,
    response_class=JSONModelResponse,
    responses=problem_responses(400, 401, 403, 404, 413, 422, 429, 503, 504),
)
async def classify(
    ref: TaskRefDep,
    body: ClassifyRequest,
    runtime: RuntimeDep,
    answer_format: Annotated[
        AnswerFormat,
        Query(
            alias="format",
            description="spartan: this API's answer; pipeline: what a transformers text-classification "
            "pipeline returns for the same inputs ([{label, score}], no routing)",
        ),
    ] = "spartan",
    top_k: Annotated[
        int | None,
        Query(
            ge=1,
            le=1000,
            description="only the k most probable labels (spartan: of scores; pipeline: a list of k "
            "per input, as the pipeline's top_k). Default: spartan every label, pipeline the best one",
        ),
    ] = None,
) -> JSONModelResponse:
    """Classify one text, a list of texts or text pairs with the task's current memory."""
    result = await runtime.classify(ref, _inputs(body), body.explain, body.exit_threshold)
    answer = render(result, answer_format, top_k, single_text=isinstance(body.inputs, str))
    if isinstance(answer, Classification):
        return JSONModelResponse(ClassifyResponse.model_validate(answer, from_attributes=True))
    return JSONModelResponse(PipelineAnswer.model_validate(answer, from_attributes=True))
