"""The web dashboard: its page at / (and its own paths), and the compact learning-curve view its
job page draws.

`GET /v1/jobs/{id}/curves` answers in one response, whatever the job's size, the standing of
every policy and the curves of each policy's best trials, thinned to `max_points` epochs, so a
job of thousands of trials draws in one request.
"""

from __future__ import annotations

import math
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from lrtune.schemas.errors import ErrorBody
from lrtune.schemas.jobs import Trial, TrialMetric
from lrtune.service.deps import StoreDep, TenantDep
from lrtune.service.store import MAX_ID, job_curves
from pydantic import BaseModel, ConfigDict, Field

STATIC_DIR = FilePath(__file__).resolve().parents[1] / "static"

router = APIRouter(tags=["dashboard"])

_OUTPUT = ConfigDict(ser_json_inf_nan="strings")


class PolicyStanding(BaseModel):
    """One policy's trials in a job: counts by status and its best and mean best metric."""

    model_config = _OUTPUT

    policy: str
    trials: int
    by_status: dict[str, int]
    best_metric: float | None = None
    best_trial_id: int | None = None
    mean_best_metric: float | None = Field(
        None, description="Mean of the trials' best metric values (trials with one only)."
    )


class TrialCurve(BaseModel):
    """One trial's learning curve; lists are aligned with `epoch`; values may be "NaN"."""

    model_config = _OUTPUT

    trial_id: int
    policy: str
    status: str
    best_metric: float | None
    schedule: dict[str, Any]
    steps: int = Field(description="Optimizer steps done by the trial's last epoch.")
    epoch: list[int]
    metric: list[float | None]
    train_loss: list[float | None]
    val_loss: list[float | None]
    lr: list[float]


class JobCurves(BaseModel):
    """GET /v1/jobs/{id}/curves: every policy's standing and its best trials' curves."""

    model_config = _OUTPUT

    job_id: int
    metric: str
    mode: str
    total_trials: int
    per_policy: int = Field(description="At most this many trials of each policy are drawn.")
    policies: list[PolicyStanding]
    trials: list[TrialCurve]


@router.get("/", include_in_schema=False)
def dashboard_page() -> FileResponse:
    """The dashboard's single page (its views are routed in the browser)."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


# The dashboard's own paths, typed or pasted without their `#` (/jobs/7 for /#/jobs/7), are sent
# to the page, whose router reads the hash.
@router.get("/jobs", include_in_schema=False)
@router.get("/jobs/{job_id}", include_in_schema=False)
@router.get("/trials/{trial_id}", include_in_schema=False)
@router.get("/new", include_in_schema=False)
def dashboard_deep_link(request: Request) -> RedirectResponse:
    """The dashboard at the view this path names."""
    return RedirectResponse(f"/#{request.url.path}")


@router.get(
    "/v1/jobs/{job_id}/curves",
    response_model=JobCurves,
    responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
def get_job_curves(
    job_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The job's id.")],
    store: StoreDep,
    tenant: TenantDep,
    per_policy: Annotated[
        int, Query(ge=1, le=100, description="Best trials of each policy to draw.")
    ] = 25,
    max_points: Annotated[
        int, Query(ge=2, le=2000, description="Most epochs kept per curve (evenly thinned).")
    ] = 200,
) -> Response:
    """Each policy's standing and its best trials' learning curves, in one compact answer."""
    job = store.get_job(job_id, tenant_id=tenant.id)
    standings, trials = job_curves(store, job_id=job_id, per_policy=per_policy, tenant_id=tenant.id)
    metric = job.spec.metric_name
    body = JobCurves(
        job_id=job_id,
        metric=metric,
        mode=job.spec.metric_mode,
        total_trials=sum(s["trials"] for s in standings),
        per_policy=per_policy,
        policies=sorted(
            (PolicyStanding.model_validate(s) for s in standings),
            key=lambda s: _rank_key(s.best_metric, job.spec.metric_mode),
        ),
        trials=[_curve(trial, epochs, metric, max_points) for trial, epochs in trials],
    )
    return Response(content=body.model_dump_json(), media_type="application/json")


def _curve(trial: Trial, epochs: list[TrialMetric], metric: str, max_points: int) -> TrialCurve:
    kept = thin(epochs, max_points)
    return TrialCurve(
        trial_id=trial.id,
        policy=trial.policy,
        status=trial.status,
        best_metric=trial.best_metric,
        schedule=trial.schedule,
        steps=epochs[-1].step if epochs else 0,
        epoch=[e.epoch for e in kept],
        metric=[e.value(metric) for e in kept],
        train_loss=[e.train_loss for e in kept],
        val_loss=[e.val_loss for e in kept],
        lr=[e.lr for e in kept],
    )


def thin(epochs: list[TrialMetric], max_points: int) -> list[TrialMetric]:
    """At most `max_points` epochs, evenly spaced, always keeping the first and the last."""
    if len(epochs) <= max_points:
        return epochs
    last = len(epochs) - 1
    indices = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [epochs[i] for i in indices]


def _rank_key(value: float | None, mode: str) -> float:
    if value is None or not math.isfinite(value):
        return math.inf
    return -value if mode == "max" else value
