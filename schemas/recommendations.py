"""Read models of the LR range test and of a job's recommendation (api.md section 2).

Numbers that may be NaN or infinite (the loss of a diverging range test, the metric of a diverged
trial) are written in JSON as the strings "NaN", "Infinity" and "-Infinity", as in the job models.
"""

from __future__ import annotations

import math
from typing import Literal

from lrtune.schemas.schedules import ScheduleSpec
from lrtune.schemas.trials import OptimizerSpec
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Read models: NaN and +-inf leave as "NaN", "Infinity", "-Infinity".
_OUTPUT = ConfigDict(ser_json_inf_nan="strings", frozen=True)

Ramp = Literal["exponential", "linear"]


class RangeTestConfig(BaseModel):
    """How the LR range test ramps the rate; the defaults are fastai's lr_find."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_lr: float = Field(1e-7, gt=0.0, allow_inf_nan=False, description="Rate of the first step.")
    max_lr: float = Field(10.0, gt=0.0, allow_inf_nan=False, description="Rate of the last step.")
    iterations: int = Field(100, ge=5, le=100_000, description="Steps of the ramp.")
    ramp: Ramp = Field(
        "exponential",
        description="exponential: min*(max/min)**(i/(n-1)); linear: min + (max-min)*i/(n-1).",
    )
    smoothing: float = Field(
        0.98, ge=0.0, lt=1.0, allow_inf_nan=False, description="EMA weight of the past loss."
    )
    divergence_factor: float = Field(
        4.0,
        gt=1.0,
        allow_inf_nan=False,
        description="Stop once the smoothed loss exceeds this times its best value.",
    )

    @field_validator("max_lr")
    @classmethod
    def _above_min(cls, max_lr: float, info: ValidationInfo) -> float:
        min_lr = info.data.get("min_lr")
        if min_lr is not None and max_lr <= min_lr:
            raise ValueError(f"max_lr ({max_lr:g}) must be above min_lr ({min_lr:g})")
        return max_lr


class BoundSuggestion(BaseModel):
    """Rates read off a range-test curve, each with the method that found it.

    `min_lr` and `max_lr` are the bounds a search is centred on; `valley`, `steep` and `minimum`
    are fastai's three suggestions, for users who know them. Any of the last three is None when
    the curve is too short to compute it.
    """

    model_config = _OUTPUT

    min_lr: float
    max_lr: float
    min_method: str = Field(description="How min_lr was found, in words.")
    max_method: str = Field(description="How max_lr was found, in words.")
    valley: float | None = Field(None, description="fastai's valley: inside the longest descent.")
    steep: float | None = Field(None, description="Steepest descent of the loss vs log lr.")
    minimum: float | None = Field(None, description="Rate of the lowest smoothed loss / 10.")


class RangeTestResult(BaseModel):
    """GET /v1/jobs/{id}/range-test: the curve and the bounds suggested from it."""

    model_config = _OUTPUT

    lr: list[float] = Field(description="The base rate (multiplier 1) of each step.")
    loss: list[float] = Field(description="Raw training loss of each step's batch.")
    smoothed_loss: list[float] = Field(description="Bias-corrected EMA of the loss.")
    suggestion: BoundSuggestion
    ramp: Ramp
    iterations: int = Field(description="Steps actually run (fewer than planned if stopped).")
    stopped_early: bool = Field(description="True when the loss blew up before the ramp's end.")


class PolicyEvidence(BaseModel):
    """One schedule configuration's results over its seeds, and its code."""

    model_config = _OUTPUT

    policy: str
    schedule: ScheduleSpec
    optimizer: OptimizerSpec | None = Field(
        None, description="The optimizer its trials trained with (its arm's, else the job's)."
    )
    metric_mean: float
    metric_std: float | None = Field(description="Sample standard deviation; None for one seed.")
    n_seeds: int
    trial_ids: list[str]
    epochs_to_baseline: int | None = Field(
        None,
        description="Epochs (mean curve) to reach the best fixed-rate trial's final metric; None "
        "when the job has no fixed policy or the curve never gets there.",
    )
    auc: float | None = Field(
        None, description="Area under the mean learning curve, divided by the epochs."
    )
    code: dict[str, str] = Field(
        default_factory=dict,
        description="This configuration as code to paste, by format, with its optimizer (the "
        "recommendation's `code` is the winner's).",
    )
    exact: dict[str, bool] = Field(
        default_factory=dict,
        description="By format: whether its `code` gives exactly lrtune's rates (a false one "
        "says why on the code's first line).",
    )


class Comparison(BaseModel):
    """The winner against the runner-up: the difference of means and its confidence interval."""

    model_config = _OUTPUT

    winner: str
    runner_up: str
    difference: float = Field(description="Winner's mean minus runner-up's, in the better sense.")
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    method: str = Field(description="How the interval was computed, or why there is none.")


class SnapshotEnsemble(BaseModel):
    """The winning configuration's snapshot ensemble against its single final model (a job with
    `snapshots`): each over the configuration's seeds, at their last epoch."""

    model_config = _OUTPUT

    snapshots: int = Field(description="The job's `snapshots`: the ensemble's members at most.")
    single_metric: str = Field(description="The single model's metric, e.g. val_accuracy.")
    ensemble_metric: str = Field(description="The ensemble's, e.g. ensemble_val_accuracy.")
    single_mean: float
    ensemble_mean: float
    n_seeds: int
    difference: float = Field(
        description="Ensemble's mean minus the single model's, in the better sense (positive: "
        "the ensemble is better)."
    )
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float = 0.95
    method: str = Field(description="How the interval was computed, or why there is none.")


class Recommendation(BaseModel):
    """GET /v1/jobs/{id}/recommendation; `final` is false while the job still runs."""

    model_config = _OUTPUT

    job_id: str
    final: bool
    metric: str
    mode: Literal["min", "max"]
    winner: PolicyEvidence | None
    by_policy: list[PolicyEvidence]
    comparison: Comparison | None
    snapshot_ensemble: SnapshotEnsemble | None = Field(
        None, description="With `snapshots`: the winner's ensemble against its single model."
    )
    rationale: str
    horizon_epochs: int | None = Field(
        None,
        description="horizon_halving, before any trial has trained the whole budget: the "
        "horizon (epochs) of the longest rung reached, which the leader was judged at.",
    )
    code: dict[str, str] = Field(
        default_factory=dict,
        description="The winner's schedule as code to paste, by format: pytorch "
        "(torch.optim.lr_scheduler), keras (a Keras 3 LearningRateSchedule) and huggingface "
        "(transformers' TrainingArguments, or a scheduler for Trainer(optimizers=...)).",
    )
    exact: dict[str, bool] = Field(
        default_factory=dict,
        description="By format: whether its code gives exactly lrtune's rates. A false one says "
        "why on the code's first line (Keras has no param groups, so no multipliers).",
    )


def mean_and_spread(mean: float, std: float | None) -> str:
    """`mean ± std`, both to the spread's precision (its two leading digits): the digits past
    it are noise, and a mean printed with more of them claims more than the seeds showed. The
    CLI, the worker's log and (in JavaScript, `fmtMeanStd`) the job page print it so."""
    if std is None:
        return _general(mean)
    if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0:
        return f"{_general(mean)} ± {_general(std)}"
    decimals = max(0, 1 - math.floor(math.log10(std)))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _general(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)
