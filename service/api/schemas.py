"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, RootModel, Tag
from pydantic_core import PydanticCustomError
from starlette.responses import JSONResponse

from service.predictions import Explain


def _not_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank_text", "the text is empty (only white space)")
    return text


Text = Annotated[str, Field(min_length=1, json_schema_extra={"pattern": r"\S"}), AfterValidator(_not_blank)]
"""A text to classify: not empty, not only white space (its maximum length is a setting, which the
served spec declares: service.api.openapi)."""


class PairInput(BaseModel):
    """A sentence pair (e.g. paraphrase or entailment tasks)."""

    model_config = ConfigDict(extra="forbid")

    text: Text
    pair: str


Texts = Annotated[list[Text], Field(min_length=1)]
Pairs = Annotated[list[PairInput], Field(min_length=1)]


def _shape(inputs: Any) -> str | None:
    """Which of the three input shapes a body's ``inputs`` is: validated as that one only, so an
    error names what is wrong with it rather than why it is none of the three."""
    if isinstance(inputs, str):
        return "text"
    if isinstance(inputs, list):
        return "pairs" if inputs and isinstance(inputs[0], dict | PairInput) else "texts"
    return None


Inputs = Annotated[
    Annotated[Text, Tag("text")] | Annotated[Texts, Tag("texts")] | Annotated[Pairs, Tag("pairs")],
    Discriminator(
        _shape,
        custom_error_type="inputs_shape",
        custom_error_message="give a text, a list of texts or a list of {text, pair} objects",
    ),
]


class ClassifyRequest(BaseModel):
    """One text, a list of texts, or a list of text pairs."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "a wonderful, warm film"}, {"inputs": ["good", "bad"]}]},
    )

    inputs: Inputs = Field(description="one text, a list of texts, or a list of text pairs")
    explain: Explain = Field(
        "none",
        description="also return which memory parents each input chose (last layer or all layers) "
        "and the layer it left the backbone after",
    )
    exit_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="for a task with early exits: the confidence an input's answer must exceed to "
        "leave at an exit (default: the task's own; 1.0: never leave early). Ignored without exits",
    )


class ParentUse(BaseModel):
    """How one layer's memory routed an input: mean parent weight over its tokens (sums to 1)."""

    model_config = ConfigDict(from_attributes=True)

    layer: int
    weights: list[float]
    top: list[int] = Field(description="parents by decreasing weight (non-zero only)")


class Prediction(BaseModel):
    """Classification: label and the probability of every label. Regression: value."""

    model_config = ConfigDict(from_attributes=True)

    label: str | None = None
    scores: dict[str, float] | None = None
    value: float | None = None
    parents: list[ParentUse] | None = None
    exit_layer: int | None = Field(
        None,
        description="with explain: the layer (0-based) the input left the backbone after; the last "
        "layer unless the task's early exit was sure enough before",
    )


class ClassifyResponse(BaseModel):
    """Every input's prediction and the one memory version that served them."""

    model_config = ConfigDict(from_attributes=True)

    task: str
    version: int = Field(description="the memory version that served every input of this request")
    predictions: list[Prediction]


class PipelineScore(BaseModel):
    """One label and its probability (a regression: LABEL_0 and the value)."""

    model_config = ConfigDict(from_attributes=True)

    label: str
    score: float


class PipelineAnswer(RootModel[list[PipelineScore] | list[list[PipelineScore]]]):
    """What a transformers text-classification pipeline returns (``format=pipeline``): one
    ``{label, score}`` per input, or with ``top_k`` a list per input (one flat list for one text)."""


class RolloutInfo(BaseModel):
    """A candidate on trial beside the current version."""

    model_config = ConfigDict(from_attributes=True)

    version: int = Field(description="the candidate version")
    mode: Literal["canary", "shadow"] = Field(
        description="canary: serves a share of the requests; shadow: scored beside, answers unchanged"
    )
    share: float = Field(description="canary: the share of requests the candidate serves")
    started_at: float


class MemoryInfo(BaseModel):
    """One stored version of a task's memory (the current one, unless listed among versions)."""

    task: str
    version: int
    sha256: str
    size: int
    owner: str
    created_at: float = Field(description="Unix time it was stored (0: unknown, stored by an old release)")
    metadata: dict[str, Any]
    restored_from: int | None = Field(None, description="the older version this one restored (a rollback)")
    rollout: RolloutInfo | None = Field(None, description="on the current version: a candidate on trial")


class ArmNumbers(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    requests: int
    mean_latency_s: float | None


class TrialNumbers(BaseModel):
    """How the candidate compares with the current version on this replica's traffic."""

    model_config = ConfigDict(from_attributes=True)

    served: dict[Literal["current", "candidate"], ArmNumbers] = Field(
        description="requests each version answered and their latency"
    )
    scored: dict[Literal["current", "candidate"], ArmNumbers] = Field(
        description="background scores of the other version (for the comparison) and their latency"
    )
    compared_rows: int
    agreement: float | None = Field(description="share of compared rows with the same label")
    mean_difference: float | None = Field(
        description="mean absolute probability difference over the labels (regression: of the value)"
    )
    skipped: int = Field(description="comparisons skipped: too many background scores in flight")
    failed: int


class CandidateStatus(BaseModel):
    """A task's candidate on trial and how it compares, as this replica saw it."""

    task: str
    current: int
    rollout: RolloutInfo
    replica: TrialNumbers


class VersionList(BaseModel):
    """A task's kept versions, newest first; older ones are pruned (``keep_versions``)."""

    task: str
    current: int
    items: list[MemoryInfo]


class MemoryPage(BaseModel):
    items: list[MemoryInfo]
    next: str | None = Field(None, description="pass as ?after= to get the next page")


class Health(BaseModel):
    status: Literal["ok"]


class PrecisionCandidate(BaseModel):
    """One mode ``auto`` considered: its check against fp32 on the probe and its speed."""

    model_config = ConfigDict(from_attributes=True)

    mode: str
    passed: bool
    reason: str
    decided_agreement: float | None
    mean_prob_diff: float | None
    parent_agreement: float | None
    seconds_per_batch: float | None
    speedup: float | None = Field(description="fp32 seconds per probe batch / this mode's")


class PrecisionStatus(BaseModel):
    """The backbone's precision: what was asked, what runs, and what ``auto`` measured (if it ran)."""

    setting: str
    mode: str
    cpu: str | None = None
    cpu_flags: list[str] = []
    torch_capability: str | None = None
    decided_in_s: float | None = None
    cached: bool = Field(False, description="auto reused its decision from an earlier start on this CPU")
    candidates: list[PrecisionCandidate] = []
    routing: str = Field(
        "eager",
        description="the SPARTAN op's routing: fused (one compiled kernel, with its shapes) or eager (why)",
    )


class Readiness(BaseModel):
    ready: bool
    backbone: str | None
    precision: PrecisionStatus
    registry: Literal["ok", "unavailable"]
    degraded: list[str]
    resident_tasks: int
    resident_bytes: int


class JSONModelResponse(JSONResponse):
    """A pydantic model serialised once by pydantic itself (the route still declares response_model).

    Returning a Response makes FastAPI skip its own second validation and jsonable_encoder pass.
    """

    def render(self, content: Any) -> bytes:
        if isinstance(content, BaseModel):
            return content.model_dump_json().encode()
        return super().render(content)


class UsageHour(BaseModel):
    """Answered classify requests of one task in one clock hour, summed over replicas."""

    model_config = ConfigDict(from_attributes=True)

    task: str
    hour: datetime = Field(description="start of the hour (UTC)")
    requests: int
    rows: int = Field(description="texts classified")
    tokens: int = Field(description="real tokens classified (padding excluded)")


class UsageTotal(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    task: str
    requests: int
    rows: int
    tokens: int


class UsageReport(BaseModel):
    """What a tenant used over whole clock hours: per task in total, and hour by hour."""

    model_config = ConfigDict(from_attributes=True)

    tenant: str
    since: datetime = Field(description="start of the first hour counted (UTC)")
    until: datetime = Field(description="end of the last hour counted (UTC)")
    totals: list[UsageTotal]
    hours: list[UsageHour]
