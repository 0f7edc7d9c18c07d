"""Schedule routes: preview a schedule's curve (or a policy's, at the middle of a search space),
list the policy catalogue."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
from fastapi import APIRouter, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.policies import PolicyInfo, policy_catalogue
from lrtune.schemas.schedules import POLICY_NAMES, PreviewRequest, PreviewResponse, ScheduleSpec
from lrtune.schemas.search import SpacePreviewRequest, middle_point, resolve_schedule
from lrtune.service.deps import SettingsDep
from lrtune.service.errors import InvalidInputError, LimitExceededError
from lrtune.service.settings import Settings
from lrtune.workers.schedule_math import learning_rates
from pydantic import ValidationError

router = APIRouter(prefix="/v1", tags=["schedules"])
_CATALOGUE = policy_catalogue()


@router.post(
    "/schedules/preview",
    response_model=PreviewResponse,
    responses={422: {"model": ErrorBody}},
)
def preview_schedule(request: PreviewRequest, settings: SettingsDep) -> Response:
    """Evaluate a schedule at steps 0, every, 2*every, ... below `steps`, without training
    (plateau: given the metric after each epoch, `metrics`, else at its constant rate)."""
    return _curve(
        request.schedule,
        steps=request.steps,
        every=request.every,
        settings=settings,
        metrics=request.metrics or (),
        epoch_ends=request.epoch_ends(),
    )


@router.post(
    "/search-spaces/preview",
    response_model=PreviewResponse,
    responses={422: {"model": ErrorBody}},
)
def preview_search_space(request: SpacePreviewRequest, settings: SettingsDep) -> Response:
    """A policy's curve at the middle of a search space (`middle_point`), its durations resolved
    to steps as a trial's are: what the new-job form draws for each policy."""
    policy = request.policy
    if policy not in POLICY_NAMES:
        raise InvalidInputError(
            f"unknown policy {policy!r}; policies are {list(POLICY_NAMES)}", field="policy"
        )
    try:
        point = middle_point(policy, request.search_space)
    except ValueError as error:
        raise InvalidInputError(_problem(error), field="search_space") from None
    try:
        schedule = resolve_schedule(
            policy, point, steps_per_epoch=request.steps_per_epoch, total_steps=request.steps
        )
    except ValueError as error:
        raise InvalidInputError(
            f"the middle of the search space is not a valid {policy} schedule: " + _problem(error),
            field="search_space",
        ) from None
    return _curve(schedule, steps=request.steps, every=request.every, settings=settings)


def _curve(
    schedule: ScheduleSpec,
    *,
    steps: int,
    every: int,
    settings: Settings,
    metrics: Sequence[float] = (),
    epoch_ends: Sequence[int] = (),
) -> Response:
    """The schedule's rates at steps 0, every, 2*every, ... below `steps`, as JSON."""
    if steps > settings.max_preview_steps:
        raise LimitExceededError(
            f"steps may be at most {settings.max_preview_steps}", field="steps"
        )
    at = np.arange(0, steps, every, dtype=np.int64)
    rates = learning_rates(schedule, at, metrics=metrics, epoch_ends=epoch_ends)
    if not np.isfinite(rates).all():
        # Parameters each valid alone can overflow together (a huge num_periods times a step);
        # JSON has no number for the result, and a trial could not train with it either.
        bad = int(at[np.argmin(np.isfinite(rates))])
        raise InvalidInputError(
            f"the schedule's rate is not a finite number at step {bad}: its parameters "
            "overflow; use smaller values",
            field="schedule",
        )
    # orjson writes numpy arrays directly: a million points in milliseconds, not seconds.
    body = orjson.dumps({"step": at, "lr": rates}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content=body, media_type="application/json")


@router.get("/policies", response_model=list[PolicyInfo])
def list_policies() -> list[PolicyInfo]:
    """Every schedule policy: its fields, defaults, JSON schema and default search space."""
    return _CATALOGUE


def _problem(error: ValueError) -> str:
    """One line for what was wrong: a validation error's first problem, with its field."""
    if not isinstance(error, ValidationError):
        return str(error)
    problem = error.errors()[0]
    # A schedule's errors start at the union's tag (the policy): the user did not write it.
    where = ".".join(str(part) for part in problem["loc"] if part not in POLICY_NAMES)
    message = str(problem["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
