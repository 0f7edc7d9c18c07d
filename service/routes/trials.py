"""Trial routes: one trial, its metrics epoch by epoch, and its cooldown probes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.jobs import Trial, TrialMetric, TrialProbe
from lrtune.service.codecs import MAX_ID
from lrtune.service.deps import StoreDep, TenantDep
from lrtune.service.responses import json_response
from pydantic import TypeAdapter

router = APIRouter(prefix="/v1", tags=["trials"])

TrialId = Annotated[int, Path(ge=1, le=MAX_ID, description="The trial's id.")]
_METRIC_ROWS: TypeAdapter[list[TrialMetric]] = TypeAdapter(list[TrialMetric])
_PROBE_ROWS: TypeAdapter[list[TrialProbe]] = TypeAdapter(list[TrialProbe])
_ERRORS: dict[int | str, dict[str, object]] = {404: {"model": ErrorBody}, 422: {"model": ErrorBody}}


@router.get("/trials/{trial_id}", response_model=Trial, responses=_ERRORS)
def get_trial(trial_id: TrialId, store: StoreDep, tenant: TenantDep) -> Response:
    """One trial: policy, resolved schedule, seed, status, epochs done, last and best metric."""
    return json_response(store.get_trial(trial_id, tenant_id=tenant.id))


@router.get("/trials/{trial_id}/metrics", response_model=list[TrialMetric], responses=_ERRORS)
def list_trial_metrics(trial_id: TrialId, store: StoreDep, tenant: TenantDep) -> Response:
    """One row per epoch; NaN and infinities are the strings "NaN", "Infinity", "-Infinity"."""
    metrics = store.list_trial_metrics(trial_id=trial_id, tenant_id=tenant.id)
    return json_response(metrics, adapter=_METRIC_ROWS)


@router.get("/trials/{trial_id}/probes", response_model=list[TrialProbe], responses=_ERRORS)
def list_trial_probes(trial_id: TrialId, store: StoreDep, tenant: TenantDep) -> Response:
    """The trial's cooldown probes in epoch order, with early stopping's decision at each."""
    probes = store.list_trial_probes(trial_id, tenant_id=tenant.id)
    return json_response(probes, adapter=_PROBE_ROWS)
