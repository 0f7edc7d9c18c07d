"""The one way routes answer with a read model: serialised once, as its own config says."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel, TypeAdapter


def json_response(
    content: BaseModel | list[Any], *, adapter: TypeAdapter[Any] | None = None, status: int = 200
) -> Response:
    """Serialise a read model once, with its own config (NaN as "NaN").

    FastAPI would otherwise dump the model, validate it again against `response_model` and
    dump it a second time: most of the time of a page of trials.
    """
    if isinstance(content, BaseModel):
        body = content.model_dump_json()
    else:
        assert adapter is not None
        body = adapter.dump_json(content).decode()
    return Response(content=body, status_code=status, media_type="application/json")
