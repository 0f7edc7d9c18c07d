"""The job spec (POST /v1/jobs) and the read models of jobs, trials, metrics and best settings.

Numbers that may be NaN or infinite (metric values of a diverging trial) are written in JSON as
the strings "NaN", "Infinity" and "-Infinity": JSON has no literal for them, and these are the
spellings JavaScript's `Number()` and Python's `float()` both read back.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal, NoReturn

from lrtune.schemas.halving import HorizonLadder
from lrtune.schemas.recommendations import RangeTestConfig
from lrtune.schemas.schedules import POLICY_NAMES, ParamGroupRule
from lrtune.schemas.search import (
    SearchSpaceError,
    check_metric_mode,
    field_of,
    validate_search_space,
)
from lrtune.schemas.tenants import TokenRef
from lrtune.schemas.trials import (
    ENSEMBLE_PREFIX,
    MAX_SNAPSHOTS,
    SNAPSHOT_POLICIES,
    MetricValues,
    OptimizerSpec,
    schedule_free_policy_error,
    single_model_metric,
)
from lrtune.schemas.workloads import BUILTIN_WORKLOADS, WorkloadSpec
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelling", "cancelled"]
TrialStatus = Literal["pending", "running", "completed", "pruned", "diverged", "failed"]
# A search trial samples the search space; a confirm trial reruns a top configuration with a
# fresh seed (the job's `confirm`).
TrialPhase = Literal["search", "confirm"]
TRIAL_STATUSES: tuple[str, ...] = (
    "pending",
    "running",
    "completed",
    "pruned",
    "diverged",
    "failed",
)
FINISHED_TRIAL_STATUSES = frozenset({"completed", "pruned", "diverged", "failed"})
# Trials whose metric is evidence about their schedule, the ones a recommendation counts: a
# diverged trial is a (bad) result; a failed one broke for reasons of its own, and a pruned or
# running one has not trained its full budget, so its metric is not comparable with the others'.
COUNTED_TRIAL_STATUSES = frozenset({"completed", "diverged"})
# What the worker records as the error of a trial that cancelling its job stopped.
CANCELLED_TRIAL_ERROR = "stopped: the job was cancelled"
# A job in one of these has ended and changes no more.
FINISHED_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# A job in one of these holds one of its tenant's concurrent places (and may still end).
ACTIVE_JOB_STATUSES = ("queued", "running", "cancelling")
# The losses every workload reports each epoch, besides its own metrics.
ALWAYS_REPORTED = ("train_loss", "val_loss")

_INPUT = ConfigDict(extra="forbid")
# Read models: NaN and +-inf leave as "NaN", "Infinity", "-Infinity" (see the module docstring).
_OUTPUT = ConfigDict(ser_json_inf_nan="strings")


class MetricSpec(BaseModel):
    """The metric that ranks trials; both parts default to the built-in workload's own."""

    model_config = _INPUT

    name: str = Field(
        min_length=1, max_length=100, description="train_loss, val_loss or a workload metric."
    )
    mode: Literal["min", "max"] | None = Field(None, description="Default: the workload's.")


class PolicySearch(BaseModel):
    """One arm of the job: a policy and its search space, and the optimizer its trials train with
    when not the job's. `search` is laid over the policy's default space field by field (a field
    it names replaces the default's; `step_size_epochs` replaces a default `step_size_frac`), so
    naming one field keeps the others searched."""

    model_config = _INPUT

    policy: str
    search: dict[str, Any] | None = Field(
        None,
        description='Fixed values or domains: {"choice": [...]}, {"uniform": [a, b]}, '
        '{"loguniform": [a, b]}, {"int": [a, b]}.',
    )
    optimizer: OptimizerSpec | None = Field(
        None,
        description="This arm's optimizer instead of the job's (e.g. a schedule-free one on the "
        "fixed policy, to compare it with the job's schedules); default: the job's.",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, data: Any) -> Any:
        # "clr" is shorthand for {"policy": "clr"}.
        return {"policy": data} if isinstance(data, str) else data

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        if policy not in POLICY_NAMES:
            raise ValueError(f"unknown policy {policy!r}; policies are {list(POLICY_NAMES)}")
        return policy

    @field_validator("search")
    @classmethod
    def _valid_space(cls, search: dict[str, Any] | None, info: ValidationInfo) -> Any:
        policy = info.data.get("policy")
        if search is None or policy is None:
            return search
        try:
            validate_search_space(policy, search)
        except SearchSpaceError as error:
            # Said at the key (policies.0.search.max_lr), not at the whole space.
            raise _value_error(
                cls.__name__, loc=(error.key,), value=search[error.key], reason=str(error)
            ) from None
        return search

    @field_validator("optimizer")
    @classmethod
    def _schedule_free_runs_fixed(
        cls, optimizer: OptimizerSpec | None, info: ValidationInfo
    ) -> OptimizerSpec | None:
        policy = info.data.get("policy")
        if optimizer is not None and optimizer.schedule_free and policy not in (None, "fixed"):
            raise ValueError(schedule_free_policy_error(optimizer.name, [policy]))
        return optimizer


def _value_error(
    title: str, *, loc: tuple[str | int, ...], value: Any, reason: str
) -> ValidationError:
    """A value error said at `loc` below the validated field or model, rather than at it."""
    detail = InitErrorDetails(
        type=PydanticCustomError("value_error", "Value error, {reason}", {"reason": reason}),
        loc=loc,
        input=value,
    )
    return ValidationError.from_exception_data(title, [detail])


class LrBounds(BaseModel):
    model_config = _INPUT

    min: float = Field(gt=0.0, allow_inf_nan=False)
    max: float = Field(gt=0.0, allow_inf_nan=False)

    @field_validator("max")
    @classmethod
    def _above_min(cls, value: float, info: ValidationInfo) -> float:
        low = info.data.get("min")
        if low is not None and value <= low:
            raise ValueError(f"max ({value:g}) must be above min ({low:g})")
        return value


class Budget(BaseModel):
    """The same for every policy, so the comparison is fair; upper limits are the server's."""

    model_config = _INPUT

    epochs: int = Field(gt=0)
    trials_per_policy: int = Field(gt=0)
    max_concurrent_trials: int | None = Field(
        None,
        gt=0,
        description="Trials running at once. Unset: as many as the Ray cluster's free CPUs and "
        "GPUs hold (divided by resources_per_trial) when the worker starts the job, at least 1.",
    )


# The probe's length as a share of the steps already trained, chosen on bench/bench_search.py:
# the cheapest fraction that keeps the rank correlation with the final value (bench/RESULTS.md).
DEFAULT_COOLDOWN_FRACTION = 0.5


class Cooldown(BaseModel):
    """The cooldown probe a trial runs at each rung: `fraction` x the steps trained so far, the
    rate annealed from the schedule's current rate to 0 in `shape`."""

    model_config = _INPUT

    fraction: float = Field(
        DEFAULT_COOLDOWN_FRACTION,
        gt=0.0,
        le=2.0,
        allow_inf_nan=False,
        description="The probe's length as a share of the steps already trained, in (0, 2].",
    )
    shape: Literal["linear", "1-sqrt"] = Field(
        "linear", description="linear: lr0 (1 - i/n); 1-sqrt: lr0 (1 - sqrt(i/n))."
    )


class EarlyStopping(BaseModel):
    """ASHA on epochs, or successive halving over training length.

    With "asha", at each rung a trial is judged by `judge`: "cooldown" (the default with ASHA)
    runs a cooldown probe and compares what each trial would reach if annealed now; "raw"
    compares the metric of the epoch reached (Ray Tune's ASHA as it is).
    With "horizon_halving", each point first trains its whole schedule compressed to the
    shortest rung's horizon; the top 1/reduction_factor of each policy train it again at the
    next horizon, up to the budget (`lrtune.schemas.halving`)."""

    model_config = _INPUT

    kind: Literal["none", "asha", "horizon_halving"] = "none"
    grace_epochs: int = Field(1, gt=0)
    reduction_factor: int = Field(3, ge=2)
    min_epochs: int | None = Field(
        None,
        gt=0,
        validate_default=True,
        description="horizon_halving: the shortest rung's horizon, in epochs (default 1).",
    )
    judge: Literal["cooldown", "raw"] | None = Field(
        None, validate_default=True, description='Default: "cooldown" with ASHA, none without.'
    )
    cooldown: Cooldown | None = Field(
        None, validate_default=True, description='The probe of judge "cooldown".'
    )
    chosen_by: Literal["job", "lrtune"] = Field(
        "job",
        description='"lrtune": the job named no early stopping and this is lrtune\'s default '
        "for it (`default_early_stopping`; the job's notes say why).",
    )

    @field_validator("min_epochs")
    @classmethod
    def _min_epochs_of_halving(cls, min_epochs: int | None, info: ValidationInfo) -> int | None:
        if info.data.get("kind") != "horizon_halving":
            if min_epochs is not None:
                raise ValueError('min_epochs applies to kind "horizon_halving"')
            return None
        return 1 if min_epochs is None else min_epochs

    @field_validator("judge")
    @classmethod
    def _judge_needs_early_stopping(cls, judge: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind", "none")
        if kind == "horizon_halving":
            if judge is not None:
                raise ValueError(
                    "horizon_halving judges each rung by its final value; judge applies to "
                    'kind "asha"'
                )
            return None
        if kind == "none":
            if judge == "cooldown":
                raise ValueError('judge "cooldown" needs early stopping (kind "asha")')
            return judge
        return judge or "cooldown"

    @field_validator("cooldown")
    @classmethod
    def _cooldown_needs_its_judge(
        cls, cooldown: Cooldown | None, info: ValidationInfo
    ) -> Cooldown | None:
        judge = info.data.get("judge")
        if cooldown is not None and judge != "cooldown":
            raise ValueError(
                f'cooldown applies to judge "cooldown" with kind "asha"; this judge is {judge!r}'
            )
        if cooldown is None and judge == "cooldown":
            return Cooldown.model_validate({})
        return cooldown


class SearchConfig(BaseModel):
    model_config = _INPUT

    algorithm: Literal["random", "grid", "tpe"] = "random"
    seed: int = Field(0, ge=0)


class Confirm(BaseModel):
    """Re-run each policy's top_k settings with `seeds` seeds to tell signal from noise."""

    model_config = _INPUT

    top_k: int = Field(1, gt=0)
    seeds: int = Field(3, gt=0)


class Resources(BaseModel):
    model_config = _INPUT

    cpu: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    gpu: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="Fractions share a GPU.")


# Horizons of a training-length sweep at most: each is a trial per wsd configuration.
MAX_HORIZONS = 32
# Members of one population at most (its stacked weights and optimizer state are K models').
MAX_POPULATION_SIZE = 256


class JobSpec(BaseModel):
    """What POST /v1/jobs takes (api.md section 2)."""

    model_config = _INPUT

    kind: Literal["search", "range_test"] = "search"
    name: str = Field("", max_length=200)
    workload: WorkloadSpec
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    # Before `metric`, whose validator reads it (an ensemble metric needs snapshots).
    snapshots: int | None = Field(
        None,
        ge=2,
        le=MAX_SNAPSHOTS,
        description="Snapshot ensembles (Huang et al. 2017), for clr and sgdr policies only: "
        "each trial keeps its weights at every cycle's end and reports, besides each metric, "
        "ensemble_<metric> of the average prediction of its last `snapshots` snapshots.",
    )
    metric: MetricSpec | None = Field(
        None, validate_default=True, description="Default: the workload's own metric."
    )
    policies: list[PolicySearch] = Field(default_factory=list)
    lr_bounds: Literal["auto"] | LrBounds | None = None
    budget: Budget
    early_stopping: EarlyStopping = Field(default_factory=lambda: EarlyStopping.model_validate({}))
    search: SearchConfig = Field(default_factory=lambda: SearchConfig.model_validate({}))
    confirm: Confirm | None = None
    range_test: RangeTestConfig = Field(
        default_factory=lambda: RangeTestConfig.model_validate({}),
        description='The LR range test of a range_test job, or of lr_bounds "auto".',
    )
    resources_per_trial: Resources = Field(default_factory=lambda: Resources.model_validate({}))
    param_groups: list[ParamGroupRule] = Field(default_factory=list)
    horizons: list[Annotated[int, Field(gt=0)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_HORIZONS,
        description="Training lengths in epochs, increasing, the last the budget's epochs (which "
        "it sets when the budget leaves epochs out): each wsd trial is one trunk cooled down to "
        "every length, each length a trial of its own (a training-length sweep).",
    )
    execution: Literal["trials", "population", "auto"] = Field(
        "auto",
        description='"auto" (the default): populations when the job\'s trials can train so, '
        "else trials (the job's notes say which, and why). "
        '"trials": every trial trains on its own (one Ray Tune trial each). '
        '"population": the trials train together as one batched model per population (one Ray '
        "Tune trial each), every member still a trial of its own in the results; sgd, adam and "
        "adamw, on models without BatchNorm's running statistics or dropout. Where the job's "
        "decisions do not depend on timing (random or grid search; no early stopping, or "
        "horizon halving) every execution stores the same trials and epochs.",
    )
    population_size: int | None = Field(
        None,
        ge=2,
        le=MAX_POPULATION_SIZE,
        description='Members per population (execution "population" or "auto"). Default: '
        "each phase's trials (search, confirmation) spread evenly over the trial slots "
        "(budget.max_concurrent_trials).",
    )

    @model_validator(mode="before")
    @classmethod
    def _budget_from_horizons(cls, data: Any) -> Any:
        # A sweep's budget is its longest horizon; a budget without epochs takes it from there.
        if not isinstance(data, dict):
            return data
        horizons, budget = data.get("horizons"), data.get("budget")
        if (
            isinstance(horizons, list)
            and horizons
            and all(isinstance(epochs, int) for epochs in horizons)
            and isinstance(budget, dict)
            and "epochs" not in budget
        ):
            data = {**data, "budget": {**budget, "epochs": max(horizons)}}
        return data

    @field_validator("metric")
    @classmethod
    def _metric_reported(cls, metric: MetricSpec | None, info: ValidationInfo) -> MetricSpec:
        workload: WorkloadSpec | None = info.data.get("workload")
        builtin = BUILTIN_WORKLOADS.get(workload.name or "") if workload else None
        if metric is None:
            if builtin is not None:
                return MetricSpec(name=builtin.default_metric, mode=builtin.default_mode)
            return MetricSpec(name="val_loss", mode="min")
        # ensemble_<metric> is <metric> of the snapshot ensemble: reported when both are there.
        single = single_model_metric(metric.name)
        if single != metric.name and info.data.get("snapshots") is None:
            raise ValueError(
                f"{metric.name!r} is a snapshot ensemble's metric: it needs `snapshots` "
                f"(2 to {MAX_SNAPSHOTS}) with clr or sgdr policies"
            )
        if builtin is not None:
            reported = [*ALWAYS_REPORTED, *builtin.metrics]
            if single not in reported:
                raise ValueError(
                    f"workload {builtin.name!r} does not report {metric.name!r}; "
                    f"it reports {reported}"
                )
        if metric.mode is None:
            if builtin is not None and single == builtin.default_metric:
                mode = builtin.default_mode
            else:
                mode = "max" if "acc" in single else "min"
            return MetricSpec(name=metric.name, mode=mode)
        return metric

    @field_validator("policies")
    @classmethod
    def _policies_listed_once(
        cls, policies: list[PolicySearch], info: ValidationInfo
    ) -> list[PolicySearch]:
        if info.data.get("kind", "search") == "search" and not policies:
            raise ValueError("a search job needs at least one policy")
        names = [p.policy for p in policies]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"each policy may be listed once; repeated: {repeated}")
        return policies

    @field_validator("policies")
    @classmethod
    def _plateau_watches_the_metric(
        cls, policies: list[PolicySearch], info: ValidationInfo
    ) -> list[PolicySearch]:
        metric: MetricSpec | None = info.data.get("metric")
        mode = metric.mode if metric is not None and metric.mode else "min"
        for entry in policies:
            check_metric_mode(entry.policy, entry.search or {}, mode)
        return policies

    @model_validator(mode="after")
    def _schedule_free_job_runs_fixed(self) -> JobSpec:
        # The arms that inherit a schedule-free job optimizer (an arm's own is checked on the arm).
        # Said at optimizer.name, the field to change, though policies come after it.
        inheriting = [
            p.policy for p in self.policies if p.optimizer is None and p.policy != "fixed"
        ]
        if not self.optimizer.schedule_free or not inheriting:
            return self
        reason = (
            f"{schedule_free_policy_error(self.optimizer.name, inheriting)}. To compare it with "
            f'schedules, give it to the fixed arm ({{"policy": "fixed", "optimizer": '
            f'{{"name": "{self.optimizer.name}"}}}}) and keep a scheduled optimizer for the job'
        )
        raise _value_error(
            type(self).__name__, loc=("optimizer", "name"), value=self.optimizer.name, reason=reason
        )

    @model_validator(mode="after")
    def _snapshots_need_cycles(self) -> JobSpec:
        if self.snapshots is None:
            return self
        if self.kind != "search":
            _raise_at(self, ("snapshots",), self.snapshots, "snapshots applies to search jobs")
        acyclic = [p.policy for p in self.policies if p.policy not in SNAPSHOT_POLICIES]
        if acyclic:
            _raise_at(
                self,
                ("snapshots",),
                self.snapshots,
                f"snapshots applies to cyclic policies ({sorted(SNAPSHOT_POLICIES)}) only, "
                f"whose cycles end with the rate at its lowest; this job also has {acyclic}",
            )
        if self.early_stopping.kind != "none" and self.metric_name.startswith(ENSEMBLE_PREFIX):
            _raise_at(
                self,
                ("early_stopping", "kind"),
                self.early_stopping.kind,
                f"early stopping cannot judge trials by {self.metric_name!r}: a trial has no "
                f"snapshot ensemble before its first cycle ends, and a cooldown probe none at "
                f"all; rank by {single_model_metric(self.metric_name)!r} or drop early stopping",
            )
        return self

    @model_validator(mode="after")
    def _lrtune_chooses_early_stopping(self) -> JobSpec:
        if "early_stopping" not in self.model_fields_set:
            self.early_stopping, _ = default_early_stopping(self)
        return self

    @model_validator(mode="after")
    def _halving_fits_the_budget(self) -> JobSpec:
        stopping = self.early_stopping
        if stopping.kind != "horizon_halving":
            return self
        assert stopping.min_epochs is not None  # EarlyStopping defaults it
        if stopping.min_epochs > self.budget.epochs:
            _raise_at(
                self,
                ("early_stopping", "min_epochs"),
                stopping.min_epochs,
                f"min_epochs ({stopping.min_epochs}) is above the budget's "
                f"{self.budget.epochs} epochs: the shortest rung cannot be longer than the last",
            )
        if self.snapshots is not None:
            _raise_at(
                self,
                ("early_stopping", "kind"),
                stopping.kind,
                "horizon_halving judges compressed schedules by their final value; snapshot "
                "ensembles are taken along a full-length run: drop one of them",
            )
        return self

    @model_validator(mode="after")
    def _horizons_sweep_wsd_to_the_budget(self) -> JobSpec:
        horizons = self.horizons
        if horizons is None:
            return self
        for index in range(1, len(horizons)):
            if horizons[index] <= horizons[index - 1]:
                _raise_at(
                    self,
                    ("horizons", index),
                    horizons[index],
                    f"horizons must increase: {horizons[index]} comes after {horizons[index - 1]}",
                )
        budget = self.budget.epochs
        for index, epochs in enumerate(horizons):
            if epochs > budget:
                _raise_at(
                    self,
                    ("horizons", index),
                    epochs,
                    f"horizon {epochs} is beyond the budget's {budget} epochs",
                )
        if horizons[-1] != budget:
            _raise_at(
                self,
                ("horizons",),
                horizons,
                f"the longest horizon ({horizons[-1]}) must be the budget's epochs ({budget}): "
                "the trunk trains that long",
            )
        problem = _sweep_problem(self)
        if problem is not None:
            _raise_at(self, ("horizons",), horizons, problem)
        return self

    @model_validator(mode="after")
    def _population_fuses(self) -> JobSpec:
        if self.execution == "auto":
            return self  # the worker chooses, knowing the built model too
        if self.execution != "population":
            if self.population_size is not None:
                _raise_at(
                    self,
                    ("population_size",),
                    self.population_size,
                    'population_size applies to execution "population" or "auto"',
                )
            return self
        problem = population_problem(self)
        if problem is not None:
            _raise_at(self, ("execution",), self.execution, problem)
        return self

    def optimizer_for(self, policy: str) -> OptimizerSpec:
        """The optimizer `policy`'s trials train with: its arm's own, else the job's."""
        for entry in self.policies:
            if entry.policy == policy and entry.optimizer is not None:
                return entry.optimizer
        return self.optimizer

    @property
    def metric_name(self) -> str:
        return self.metric.name if self.metric else "val_loss"

    @property
    def metric_mode(self) -> Literal["min", "max"]:
        return self.metric.mode if self.metric and self.metric.mode else "min"

    @property
    def horizon_ladder(self) -> HorizonLadder | None:
        """The rungs of early stopping "horizon_halving" (None for any other kind)."""
        stopping = self.early_stopping
        if stopping.kind != "horizon_halving":
            return None
        return HorizonLadder(
            budget_epochs=self.budget.epochs,
            min_epochs=stopping.min_epochs or 1,
            reduction_factor=stopping.reduction_factor,
        )

    @property
    def planned_trials(self) -> int:
        """Search trials plus confirmation runs (top_k x seeds per policy); with
        horizon_halving, every rung's trials.

        A policy has at most `trials_per_policy` configurations to confirm, so top_k counts up
        to that. (Fewer can run: pruned and failed trials are not confirmed, and a grid may
        repeat a point; the worker then lowers the job's planned count to what it runs.)
        """
        if self.kind != "search":
            return 0
        first_rung = self.budget.trials_per_policy
        per_policy, full_length = first_rung, first_rung
        ladder = self.horizon_ladder
        if ladder is not None:
            # Every rung's trials count (trials_per_policy is the first rung's).
            per_policy = ladder.trials_per_policy(first_rung)
            full_length = ladder.last_rung_trials(first_rung)
        if self.confirm is not None:
            per_policy += min(self.confirm.top_k, full_length) * self.confirm.seeds
        # A sweep's wsd trials are one per horizon (the trunk the longest).
        swept = per_policy * (len(self.horizons) - 1) if self.horizons else 0
        return per_policy * len(self.policies) + swept


# lrtune's default early stopping (bench/RESULTS.md, "Search that picks right"): one halving
# over training length, the whole schedule compressed to a quarter of the budget, the top
# quarter of each policy's points then trained to the budget.
DEFAULT_HALVING_FACTOR = 4


def default_early_stopping(spec: JobSpec) -> tuple[EarlyStopping, str]:
    """The early stopping of a job that names none, and why, for its notes: horizon halving
    where it applies, else none."""
    budget, first_rung = spec.budget.epochs, spec.budget.trials_per_policy
    why_not = None
    if spec.kind != "search":
        why_not = "a range test is one run"
    elif spec.horizons is not None:
        why_not = "a sweep trains every horizon of every configuration"
    elif spec.snapshots is not None:
        why_not = "snapshot ensembles are taken along full-length runs"
    elif spec.metric_name.startswith(ENSEMBLE_PREFIX):
        why_not = f"{spec.metric_name!r} exists only along full-length runs"
    elif first_rung < DEFAULT_HALVING_FACTOR:
        why_not = (
            f"halving keeps the top 1/{DEFAULT_HALVING_FACTOR} of each policy's points, and "
            f"trials_per_policy is {first_rung}"
        )
    elif budget < DEFAULT_HALVING_FACTOR:
        why_not = f"a quarter of the budget's {budget} epochs is not a whole epoch"
    if why_not is not None:
        none = EarlyStopping.model_validate({"chosen_by": "lrtune"})
        return none, f"early stopping: none (lrtune's default here: {why_not})"
    shortest = round(budget / DEFAULT_HALVING_FACTOR)
    halving = EarlyStopping.model_validate(
        {
            "kind": "horizon_halving",
            "min_epochs": shortest,
            "reduction_factor": DEFAULT_HALVING_FACTOR,
            "chosen_by": "lrtune",
        }
    )
    return halving, (
        f"early stopping: horizon halving, lrtune's default (the job named none): each point "
        f"trains its whole schedule compressed to {shortest} epochs, and the top "
        f"1/{DEFAULT_HALVING_FACTOR} of each policy's train it to the budget's {budget}"
    )


def _sweep_problem(spec: JobSpec) -> str | None:
    """Why the job cannot sweep its horizons, or None."""
    wsd = next((entry for entry in spec.policies if entry.policy == "wsd"), None)
    if wsd is None:
        return "horizons sweep the wsd policy's training length; add wsd to policies"
    if any(field_of("wsd", key)[0] == "total_steps" for key in wsd.search or {}):
        return "horizons set each wsd trial's total_steps; leave total_steps out of its search"
    if spec.early_stopping.kind != "none":
        return "a sweep trains every horizon of every configuration; it takes no early stopping"
    if spec.confirm is not None:
        return "a sweep's horizons are not confirmed with fresh seeds; leave confirm out"
    return None


def population_problem(spec: JobSpec) -> str | None:
    """Why the job's trials cannot train as populations, or None (the model itself is checked
    when the worker builds it: BatchNorm, dropout and train functions are not fusible). Said
    with a 422 for execution "population"; execution "auto" then runs trials."""
    if spec.kind != "search":
        return "populations train a search's trials; a range test is one run"
    arms = [spec.optimizer_for(entry.policy) for entry in spec.policies]
    free = sorted({optimizer.name for optimizer in arms if optimizer.schedule_free})
    if free:
        return (
            f"{free[0]} keeps two weight sets and swaps them for evaluation; populations fuse "
            'sgd, adam and adamw: use execution "trials"'
        )
    if spec.horizons is not None:
        return 'a sweep forks each trunk on its own; use execution "trials" with horizons'
    if spec.snapshots is not None:
        return 'snapshot ensembles are taken by lone trials; use execution "trials"'
    return None


def _raise_at(model: BaseModel, loc: tuple[str | int, ...], value: Any, reason: str) -> NoReturn:
    """A 422 naming the field at `loc`, from a validator of the whole `model`."""
    raise _value_error(type(model).__name__, loc=loc, value=value, reason=reason)


# ---- read models ------------------------------------------------------------------------------


class JobProgress(BaseModel):
    """Trials by status, and how many the job plans in all."""

    planned: int = 0
    pending: int = 0
    running: int = 0
    completed: int = 0
    pruned: int = 0
    diverged: int = 0
    failed: int = 0


class BestSoFar(BaseModel):
    """The job's leader so far: the live recommendation's winner, by the value it ranks on (the
    mean over seeds of the job's metric at the last epoch), so that "best so far" and the
    recommendation never name different leaders. `value` is always finite."""

    model_config = _OUTPUT

    trial_id: int = Field(description="The leader's seed with the best final value.")
    policy: str
    value: float = Field(description="The leader's mean final metric over its seeds.")
    std: float | None = Field(
        None, description="Sample standard deviation over the seeds; None for one seed."
    )
    n_seeds: int = 1
    horizon_epochs: int | None = Field(
        None,
        description="horizon_halving, before any trial has trained the whole budget: the "
        "horizon (epochs) of the longest rung reached, which the leader was judged at.",
    )


class TrialErrorCount(BaseModel):
    """One error the job's trials ended with, and how many ended with it."""

    model_config = _OUTPUT

    error: str = Field(
        description="As in trials.error: the exception, its message and, for user code, the "
        "innermost frame of that code (file:line in function)."
    )
    trials: int = Field(ge=1)
    first_trial_id: int


class Job(BaseModel):
    """A job as GET /v1/jobs/{id} answers it."""

    model_config = _OUTPUT

    id: int
    name: str
    kind: Literal["search", "range_test"]
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    spec: JobSpec
    progress: JobProgress
    best: BestSoFar | None = None
    error: str | None = None
    trial_errors: list[TrialErrorCount] = Field(
        default_factory=list,
        description="The job's error summary: each distinct error its trials ended with, most "
        "frequent first (a job succeeds while some of its trials fail).",
    )
    notes: list[str] = Field(
        default_factory=list,
        description="What the worker decided that the spec does not say, e.g. that a train "
        "function is judged on the raw metric by early stopping.",
    )
    search_spaces: dict[str, dict[str, Any]] | None = Field(
        None,
        description="Per policy, the search space the trials actually sampled (after the range "
        'test for lr_bounds "auto"); None until the worker has planned the search.',
    )
    submitted_by: TokenRef | None = Field(
        None, description="The token that submitted the job; null with LRTUNE_AUTH=off."
    )
    cancelled_by: TokenRef | None = Field(
        None,
        description="The token whose request cancelled the job; null if none did, or with "
        "LRTUNE_AUTH=off.",
    )


class Trial(BaseModel):
    """One trial. `last_metric` may be "NaN"/"Infinity"/"-Infinity"; `best_metric` is finite."""

    model_config = _OUTPUT

    id: int
    job_id: int
    policy: str
    schedule: dict[str, Any] = Field(description="The resolved schedule spec, counted in steps.")
    search_config: dict[str, Any] = Field(description="The sampled point of the search space.")
    seed: int
    phase: TrialPhase = Field(
        "search", description="search: sampled from the space; confirm: a top config rerun."
    )
    status: TrialStatus
    epochs_done: int
    last_metric: float | None = None
    best_metric: float | None = Field(
        None, description="Best finite value of the job's metric (None while there is none)."
    )
    error: str | None = None
    ray_trial_id: str | None = None
    node_id: str | None = None
    restored_from_epoch: int | None = Field(
        None,
        description="The epoch of the checkpoint the trial last resumed from (a worker or node "
        "died mid-trial); None when it never resumed.",
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class TrialMetric(MetricValues, BaseModel):
    """One epoch of one trial; any float may be "NaN", "Infinity" or "-Infinity" in JSON."""

    model_config = ConfigDict(ser_json_inf_nan="strings", extra="forbid")

    epoch: int = Field(ge=1, description="1-based.")
    step: int = Field(ge=0)
    lr: float
    train_loss: float | None = None
    val_loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    elapsed_s: float = Field(ge=0.0, allow_inf_nan=False)


RungDecision = Literal["continue", "stop"]


class TrialProbe(MetricValues, BaseModel):
    """A cooldown probe of a trial (see `lrtune.schemas.trials.ProbeResult`), as GET
    /v1/trials/{id}/probes answers it; `decision` is what early stopping did at that rung."""

    model_config = ConfigDict(ser_json_inf_nan="strings", extra="forbid")

    epoch: int = Field(ge=1, description="The epoch whose end the probe branched from.")
    step: int = Field(ge=0)
    cooldown_steps: int = Field(ge=1)
    train_loss: float | None = None
    val_loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    elapsed_s: float = Field(ge=0.0, allow_inf_nan=False)
    decision: RungDecision | None = Field(
        None, description="continue: promoted past this rung; stop: pruned here."
    )


class RungTrial(BaseModel):
    """One probed trial at a rung: the job's metric at the epoch reached (`raw`) beside the
    value of its cooldown probe (`judged`, what early stopping compared); either may be None
    (not reported) or "NaN"/"Infinity"/"-Infinity"."""

    model_config = _OUTPUT

    trial_id: int
    policy: str
    raw: float | None = Field(None, description="The job's metric of the epoch, unannealed.")
    judged: float | None = Field(None, description="The job's metric of the cooldown probe.")
    decision: RungDecision | None = None


class JobRung(BaseModel):
    """An epoch at which trials of the job were probed, its trials best first by `judged`
    under the job's metric mode (a missing or non-finite value last).

    With horizon_halving, one rung of the ladder: `epoch` is its horizon, each trial a
    candidate that trained its whole schedule compressed to it (`raw` and `judged` both its
    final value) and `decision` whether it went on to the next horizon."""

    model_config = _OUTPUT

    epoch: int = Field(ge=1)
    trials: list[RungTrial]
    rung: int | None = Field(
        None, description="horizon_halving: the rung's index, 0 the shortest horizon."
    )


# A job's phases, in the order a search job with lr_bounds "auto" and `confirm` runs them:
# waiting for a worker, planning (a Ray task builds the workload once to count its steps), the
# LR range test (deriving the search spaces from it included), the search, the confirmation
# runs, and storing the final recommendation. A range_test job has queued and range_test only;
# a requeued job is queued again.
JobPhaseName = Literal[
    "queued", "planning", "range_test", "search", "confirmation", "recommendation"
]
JOB_PHASES: tuple[str, ...] = (
    "queued",
    "planning",
    "range_test",
    "search",
    "confirmation",
    "recommendation",
)


class JobPhase(BaseModel):
    """One phase of a job as it ran; it started where the job's previous phase ended."""

    model_config = _OUTPUT

    phase: JobPhaseName
    started_at: datetime
    ended_at: datetime | None = Field(None, description="None while the phase runs.")
    seconds: float = Field(description="Its wall-clock: ended_at (now while it runs) - started_at.")
    worker_id: str | None = Field(None, description="The worker that ran it; None for queued.")


class TrialTiming(BaseModel):
    """Where one trial's wall-clock went: `wall_s` from Ray Tune starting it (its actor up) to
    its end, `busy_s` the trial's own clock up to its last epoch (building its workload,
    training, evaluating and probing), `start_up_s` the rest (the trainable starting, restarts
    after a lost worker, and the few milliseconds of its end). `first_epoch_s` is the part of
    `busy_s` up to its first epoch, the workload's build included: `start_up_s +
    first_epoch_s` is the wait from Ray Tune starting the trial to its first result."""

    model_config = _OUTPUT

    trial_id: int
    policy: str
    phase: TrialPhase
    status: TrialStatus
    epochs_done: int
    started_at: datetime | None = Field(None, description="When Ray Tune started it.")
    wall_s: float | None = Field(None, description="None while the trial runs.")
    busy_s: float = Field(description="The elapsed_s of its last epoch (0 before its first).")
    first_epoch_s: float = Field(description="The elapsed_s of its first epoch (0 before it).")
    start_up_s: float | None = Field(None, description="wall_s - busy_s; None while it runs.")


class JobTimeline(BaseModel):
    """Where a job's time went: its phases in order (they tile its wall-clock from submission
    to the stored recommendation) and each trial's start-up and busy time."""

    model_config = _OUTPUT

    job_id: int
    status: JobStatus
    created_at: datetime
    finished_at: datetime | None = None
    wall_clock_s: float | None = Field(
        None, description="finished_at - created_at; None while the job runs."
    )
    phases: list[JobPhase] = Field(
        description="In the order they ran; empty for a job stored before timelines were recorded."
    )
    phases_s: float = Field(description="The phases' seconds summed.")
    trials: list[TrialTiming] = Field(description="Every trial of the job, oldest first.")
    trials_start_up_s: float = Field(description="start_up_s summed over finished trials.")
    trials_busy_s: float = Field(description="busy_s summed over every trial.")


class JobPage(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` as `cursor` for the next page."""

    model_config = _OUTPUT

    items: list[Job]
    next_cursor: str | None = None


class TrialPage(BaseModel):
    """A page of trials, newest first; pass `next_cursor` as `cursor` for the next page."""

    model_config = _OUTPUT

    items: list[Trial]
    next_cursor: str | None = None


class BestSetting(BaseModel):
    """The best trial of one (workload, policy) over finished jobs, with the schedule it used."""

    model_config = _OUTPUT

    workload: str
    policy: str
    metric: str
    mode: Literal["min", "max"]
    value: float
    job_id: int
    trial_id: int
    schedule: dict[str, Any]
    optimizer: OptimizerSpec = Field(
        default_factory=OptimizerSpec,
        description="The optimizer the trial trained with (its arm's, else its job's).",
    )
    epochs: int


def is_better(value: float, than: float | None, mode: str) -> bool:
    """Whether finite `value` beats `than` under `mode` (None: anything beats it)."""
    if not math.isfinite(value):
        return False
    if than is None:
        return True
    return value > than if mode == "max" else value < than
