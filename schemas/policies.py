"""The policy catalogue served by GET /v1/policies: fields, defaults, JSON schema, search space."""

from __future__ import annotations

from typing import Any

from lrtune.schemas.schedules import SCHEDULE_MODELS
from lrtune.schemas.search import DEFAULT_SEARCH_SPACES
from pydantic import BaseModel


class PolicyField(BaseModel):
    name: str
    required: bool
    default: Any = None
    json_schema: dict[str, Any]
    duration: bool  # counted in steps; a search space may give it as `_epochs` or `_frac`


class PolicyInfo(BaseModel):
    name: str
    family: str
    source: str
    fields: list[PolicyField]
    json_schema: dict[str, Any]
    default_search_space: dict[str, Any]


def policy_catalogue() -> list[PolicyInfo]:
    catalogue = []
    for name, model in SCHEDULE_MODELS.items():
        schema = model.model_json_schema()
        fields = [
            PolicyField(
                name=field,
                required=info.is_required(),
                default=None if info.is_required() else info.default,
                json_schema=schema["properties"][field],
                duration=field in model.durations(),
            )
            for field, info in model.model_fields.items()
            if field != "policy"
        ]
        catalogue.append(
            PolicyInfo(
                name=name,
                family=model.family,
                source=model.source,
                fields=fields,
                json_schema=schema,
                default_search_space=DEFAULT_SEARCH_SPACES[name],
            )
        )
    return catalogue
