"""What one trial is given and what it reports: optimizer spec, trial config, epoch rows, outcome.

`OptimizerSpec` is part of the job spec; `TrialConfig` is what the runner hands each trial;
`EpochResult` is one row of GET /v1/trials/{id}/metrics. Metric values may be NaN or infinite
(a diverging rate), so float fields accept them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Protocol

from lrtune.schemas.schedules import ParamGroupRule, ScheduleSpec
from lrtune.schemas.workloads import BUILTIN_WORKLOADS, WorkloadSpec
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# How one run of a trial ended (a TrialOutcome), not the stored status of a trial row
# (`lrtune.schemas.jobs.TrialStatus`: pending, running, ..., pruned).
TrialOutcomeStatus = Literal["completed", "diverged", "stopped", "failed"]
Beta = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
OptimizerName = Literal["sgd", "adam", "adamw", "sgd_schedulefree", "adamw_schedulefree"]
# Defazio et al. 2024 ("The Road Less Scheduled"), the `schedulefree` package: they average
# their iterates instead of annealing, so they run under the fixed policy (plus warmup) only.
SCHEDULE_FREE_OPTIMIZERS: frozenset[str] = frozenset({"sgd_schedulefree", "adamw_schedulefree"})
# schedulefree's SGDScheduleFree default; its momentum must lie in (0, 1), so 0 cannot be ours.
SCHEDULE_FREE_SGD_MOMENTUM = 0.9
# Snapshot ensembles (Huang et al. 2017): the policies whose cycles end with the rate at its
# lowest, the prefix of the metrics their ensembles report, and how many snapshots may be kept.
SNAPSHOT_POLICIES: frozenset[str] = frozenset({"clr", "sgdr"})
ENSEMBLE_PREFIX = "ensemble_"
MAX_SNAPSHOTS = 20


def single_model_metric(metric: str) -> str:
    """The metric an ensemble metric is the snapshot ensemble's version of (itself otherwise):
    ensemble_val_accuracy -> val_accuracy."""
    return metric.removeprefix(ENSEMBLE_PREFIX)


class OptimizerSpec(BaseModel):
    """A torch.optim optimizer, or a schedule-free one from the `schedulefree` package; the
    learning rate is not here, the schedule drives it.

    Defaults are PyTorch's (schedulefree's for `sgd_schedulefree`: momentum 0.9), except
    AdamW's weight decay (0.0 here, 0.01 in PyTorch): a job says what it decays.
    `sgd_schedulefree` maps `momentum` and `weight_decay` onto SGDScheduleFree;
    `adamw_schedulefree` maps `betas`, `eps` and `weight_decay` onto AdamWScheduleFree (betas[0]
    is its interpolation between the average and the fast iterate). Their own `warmup_steps`
    stays 0: the schedule's warmup drives the rate, as for every other optimizer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: OptimizerName = "sgd"
    momentum: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        allow_inf_nan=False,
        description="SGD and sgd_schedulefree only (sgd_schedulefree: in (0, 1), default 0.9).",
    )
    nesterov: bool = Field(default=False, description="SGD only; needs momentum > 0.")
    weight_decay: float = Field(default=0.0, ge=0.0, allow_inf_nan=False)
    betas: tuple[Beta, Beta] = Field(
        default=(0.9, 0.999),
        description="Adam, AdamW and adamw_schedulefree only (adamw_schedulefree: betas[0] > 0).",
    )
    eps: float = Field(
        default=1e-8,
        gt=0.0,
        allow_inf_nan=False,
        description="Adam, AdamW and adamw_schedulefree only.",
    )

    @property
    def schedule_free(self) -> bool:
        """Whether this optimizer averages its iterates instead of following a schedule."""
        return self.name in SCHEDULE_FREE_OPTIMIZERS

    @model_validator(mode="before")
    @classmethod
    def _schedule_free_sgd_default_momentum(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("name") == "sgd_schedulefree"
            and "momentum" not in data
        ):
            return {**data, "momentum": SCHEDULE_FREE_SGD_MOMENTUM}
        return data

    @model_validator(mode="after")
    def _fields_fit_the_optimizer(self) -> OptimizerSpec:
        if self.nesterov and self.name != "sgd":
            raise ValueError(f"nesterov applies to sgd only; {self.name} has no nesterov variant")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov needs momentum > 0")
        # Adam has no `momentum`; a user who sets it most likely meant betas[0], so say so rather
        # than silently ignore it.
        if self.name not in ("sgd", "sgd_schedulefree") and self.momentum != 0.0:
            raise ValueError(
                f"momentum applies to sgd and sgd_schedulefree only; {self.name} uses betas "
                f"(betas[0] plays momentum's part)"
            )
        # Both swap their weights with a division by this coefficient (optimizer.eval()).
        if self.name == "sgd_schedulefree" and self.momentum == 0.0:
            raise ValueError(
                "sgd_schedulefree needs momentum in (0, 1): it interpolates between its "
                f"average and its fast iterate by it (default {SCHEDULE_FREE_SGD_MOMENTUM})"
            )
        if self.name == "adamw_schedulefree" and self.betas[0] == 0.0:
            raise ValueError(
                "adamw_schedulefree needs betas[0] > 0: it interpolates between its average "
                "and its fast iterate by it"
            )
        return self


def schedule_free_policy_error(optimizer: str, policies: list[str]) -> str:
    """Why a schedule-free optimizer refuses these (non-fixed) policies, in one sentence."""
    return (
        f"{optimizer} runs with the fixed policy (plus warmup) only, not {policies}: a "
        f"schedule-free optimizer replaces the schedule by averaging its iterates and expects "
        f"a constant rate after warmup"
    )


class TrialConfig(BaseModel):
    """Everything one trial needs; the same config and seed give the same metrics on a CPU."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workload: WorkloadSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(description="The resolved schedule, counted in steps.")
    param_groups: list[ParamGroupRule] = Field(default_factory=list)
    epochs: int = Field(gt=0)
    seed: int = Field(default=0, ge=0)
    shuffle_seed: int | None = Field(
        default=None,
        ge=0,
        description="The seed of the training batches' order when it is not `seed` (a job's "
        "search trials share one order, its confirmation trials one per confirmation seed, "
        "alone or in a population); `seed` alone still initialises the model.",
    )
    device: Literal["cpu", "cuda"] = "cpu"
    divergence_factor: float = Field(
        default=4.0,
        gt=1.0,
        allow_inf_nan=False,
        description="Diverged once the smoothed training loss exceeds this times the first "
        "batch's loss (or any loss is NaN/inf).",
    )
    metric: str | None = Field(
        default=None,
        description="The metric that makes a trial 'best' (default: the built-in workload's, "
        "else val_loss).",
    )
    mode: Literal["max", "min"] | None = None
    snapshots: int | None = Field(
        default=None,
        ge=2,
        le=MAX_SNAPSHOTS,
        description="clr and sgdr only: keep the weights at each cycle's end and report the "
        "metrics of the last this-many snapshots' average prediction as ensemble_<metric>.",
    )

    @model_validator(mode="after")
    def _snapshots_need_cycles(self) -> TrialConfig:
        if self.snapshots is not None and self.schedule.policy not in SNAPSHOT_POLICIES:
            raise ValueError(
                f"snapshots applies to cyclic policies ({sorted(SNAPSHOT_POLICIES)}) only, "
                f"not {self.schedule.policy!r}: a snapshot is taken at each cycle's end"
            )
        if self.snapshots is None and self.metric_name.startswith(ENSEMBLE_PREFIX):
            raise ValueError(f"metric {self.metric_name!r} needs snapshots")
        return self

    @model_validator(mode="after")
    def _schedule_free_runs_fixed(self) -> TrialConfig:
        if self.optimizer.schedule_free and self.schedule.policy != "fixed":
            raise ValueError(
                schedule_free_policy_error(self.optimizer.name, [self.schedule.policy])
            )
        return self

    @field_validator("metric")
    @classmethod
    def _metric_named(cls, metric: str | None) -> str | None:
        if metric is not None and not metric.strip():
            raise ValueError("metric must be a non-empty name")
        return metric

    @property
    def metric_name(self) -> str:
        if self.metric is not None:
            return self.metric
        info = BUILTIN_WORKLOADS.get(self.workload.name or "")
        return info.default_metric if info is not None else "val_loss"

    @property
    def metric_mode(self) -> Literal["max", "min"]:
        if self.mode is not None:
            return self.mode
        info = BUILTIN_WORKLOADS.get(self.workload.name or "")
        single = single_model_metric(self.metric_name)
        if info is not None and single == info.default_metric:
            return info.default_mode
        return "max" if single.endswith("accuracy") else "min"


class _Reported(Protocol):
    @property
    def train_loss(self) -> float | None: ...

    @property
    def val_loss(self) -> float | None: ...

    @property
    def metrics(self) -> dict[str, float]: ...


class MetricValues:
    """The one way to read a metric from what a trial reported (an epoch or a cooldown probe, as
    the trial reports it or as the store answers it)."""

    def value(self: _Reported, name: str) -> float | None:
        """Metric `name`, train_loss and val_loss included (what a job's `metric` refers to);
        None when it was not reported."""
        if name == "train_loss":
            return self.train_loss
        if name == "val_loss":
            return self.val_loss
        return self.metrics.get(name)


class EpochResult(MetricValues, BaseModel):
    """One epoch of one trial: a row of the trial's metrics."""

    model_config = ConfigDict(frozen=True)

    epoch: int = Field(ge=1, description="1-based.")
    step: int = Field(ge=0, description="Optimizer steps done by the end of this epoch.")
    lr: float = Field(
        description="The base rate (multiplier 1) of the epoch's last update: lr(step - 1)."
    )
    train_loss: float = Field(description="Mean training loss over the epoch's steps.")
    val_loss: float
    metrics: dict[str, float] = Field(
        default_factory=dict, description="The workload's other metrics, e.g. val_accuracy."
    )
    elapsed_s: float = Field(description="Seconds since the trial started.")


class ProbeResult(MetricValues, BaseModel):
    """A cooldown probe: a branch from the trial's state at the end of `epoch` (a copy of model
    and optimizer), trained `cooldown_steps` more steps with the rate annealed from the
    schedule's current rate to 0, evaluated and thrown away. The trial goes on from before it.

    What the trial would reach if its schedule annealed now: the value early stopping judges a
    schedule by at a rung (a high rate mid-schedule looks worse than it will end).
    """

    model_config = ConfigDict(frozen=True)

    epoch: int = Field(ge=1, description="The epoch whose end the probe branched from.")
    step: int = Field(ge=0, description="Optimizer steps the trial had taken then.")
    cooldown_steps: int = Field(ge=1, description="Steps the probe trained, annealing to 0.")
    train_loss: float = Field(description="Mean training loss over the probe's steps.")
    val_loss: float
    metrics: dict[str, float] = Field(default_factory=dict)
    elapsed_s: float = Field(description="Seconds the probe took, evaluation included.")


class TrialOutcome(BaseModel):
    """How a trial ended. `diverged` is a result, not an error; `failed` carries the error."""

    model_config = ConfigDict(frozen=True)

    status: TrialOutcomeStatus
    epochs_done: int = Field(ge=0)
    steps_done: int = Field(default=0, ge=0)
    last: EpochResult | None = Field(default=None, description="The last epoch reported.")
    metric: str = Field(description="The metric `best_metric` is about.")
    best_metric: float | None = Field(
        default=None, description="Best finite value of `metric` over the epochs (None if none)."
    )
    best_epoch: int | None = None
    elapsed_s: float = 0.0
    error: str | None = None
