"""Schedule routes: preview a schedule's curve, list the policy catalogue."""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import APIRouter, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.policies import PolicyInfo, policy_catalogue
from lrtune.schemas.schedules import PreviewRequest, PreviewResponse
from lrtune.service.deps import SettingsDep
from lrtune.service.errors import InvalidInputError, LimitExceededError
from lrtune.workers.schedule_math import learning_rates

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
    if request.steps > settings.max_preview_steps:
        raise LimitExceededError(
            f"steps may be at most {settings.max_preview_steps}", field="steps"
        )
    steps = np.arange(0, request.steps, request.every, dtype=np.int64)
    rates = learning_rates(
        request.schedule, steps, metrics=request.metrics or (), epoch_ends=request.epoch_ends()
    )
    if not np.isfinite(rates).all():
        # Parameters each valid alone can overflow together (a huge num_periods times a step);
        # JSON has no number for the result, and a trial could not train with it either.
        bad = int(steps[np.argmin(np.isfinite(rates))])
        raise InvalidInputError(
            f"the schedule's rate is not a finite number at step {bad}: its parameters "
            "overflow; use smaller values",
            field="schedule",
        )
    # orjson writes numpy arrays directly: a million points in milliseconds, not seconds.
    body = orjson.dumps({"step": steps, "lr": rates}, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content=body, media_type="application/json")


@router.get("/policies", response_model=list[PolicyInfo])
def list_policies() -> list[PolicyInfo]:
    """Every schedule policy: its fields, defaults, JSON schema and default search space."""
    return _CATALOGUE
