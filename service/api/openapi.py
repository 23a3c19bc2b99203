"""The served OpenAPI spec: FastAPI's, plus what it cannot know by itself.

- the schemas that operations refer to but FastAPI does not see as a route's model: the Problem
  of every error response (service.api.problems), the v2 inference request (its route reads
  the body itself, for the binary tensor extension);
- the request limits that are settings, not types (texts per request, characters per text), so
  a client reads from the spec what the server it talks to enforces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.api.problems import Problem
from service.api.v2_schemas import InferRequest

REFERRED: tuple[type[BaseModel], ...] = (Problem, InferRequest)


def add_models(spec: dict[str, Any], *models: type[BaseModel]) -> None:
    """Put ``models`` (and the models they use) into ``spec``'s components, under their names."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in models:
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(generated.pop("$defs", {}))
        schemas[model.__name__] = generated


def _limit(node: dict[str, Any], max_items: int, max_chars: int) -> None:
    """Declare the limits on one schema node and the strings and arrays under it."""
    for member in node.get("oneOf", []) + node.get("anyOf", []):
        _limit(member, max_items, max_chars)
    if node.get("type") == "string":
        node["maxLength"] = max_chars
    elif node.get("type") == "array":
        node["maxItems"] = max_items
        _limit(node.get("items", {}), max_items, max_chars)


def declare_limits(spec: dict[str, Any], max_inputs: int, max_text_chars: int) -> None:
    schemas = spec["components"]["schemas"]
    _limit(schemas["ClassifyRequest"]["properties"]["inputs"], max_inputs, max_text_chars)
    for field in schemas["PairInput"]["properties"].values():
        _limit(field, max_inputs, max_text_chars)


def spec_builder(app: FastAPI, max_inputs: int, max_text_chars: int) -> Callable[[], dict[str, Any]]:
    """``app.openapi``: the spec, built on first use and kept."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            add_models(spec, *REFERRED)
            declare_limits(spec, max_inputs, max_text_chars)
            app.openapi_schema = spec
        return app.openapi_schema

    return openapi
