"""The one error body every 4xx and 5xx answer carries."""

from __future__ import annotations

from pydantic import BaseModel


class FieldProblem(BaseModel):
    path: str  # dotted path of the offending field, e.g. "schedule.max_lr" or "budget.epochs"
    message: str


class ErrorDetail(BaseModel):
    code: str  # machine-readable: validation_error, not_found, conflict, limit_exceeded, ...
    message: str  # one sentence a user can act on
    fields: list[FieldProblem] = []


class ErrorBody(BaseModel):
    error: ErrorDetail
