"""What the dashboard's job page reads in one request: each policy's standing and the learning
curves of its best trials (GET /v1/jobs/{id}/curves)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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
