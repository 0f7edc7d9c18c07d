"""A job spec as one Ray Tune experiment: per-policy search spaces, equal budgets, seeds, ASHA.

Design: one Tuner per job, whose search algorithm is `EqualBudgetSearcher`. It hands out exactly
`trials_per_policy` trials for each policy, round robin (so concurrent slots mix policies and a
cancelled or failed job has spent its budget evenly), each trial's point coming from that
policy's own space: random (a scrambled Sobol sequence per policy, seeded from the job's seed
and the policy, its index-th point for the policy's index-th trial: the same job gives the same
points whatever the timing), grid
(an evenly thinned Cartesian product) or tpe (one OptunaSearch per policy, so TPE never moves
budget from one policy to another). The policy is part of each trial's config, so ASHA ranks
all of them together (by their cooldown probes at rungs: `lrtune.workers.early_stopping`) and
Ray Tune's experiment state and the trials' checkpoints cover the whole job (Tuner.restore).
A job that confirms runs its confirmation as further trials of the same Tune run
(`SearchThenConfirm`), on the actors the search started. Early stopping "horizon_halving" runs
the search's points as a ladder of ever longer, compressed schedules (`HorizonHalvingSearcher`),
also in that one run.

Seeds: the i-th trial of every policy gets the same seed (common random numbers), so two
policies are compared on the same initialisations. The data order is the job's, not the trial's:
every search trial trains on one order (`search_shuffle_seed`), every confirmation trial of one
confirmation seed on that seed's, whether it trains alone or in a population; so the execution
never changes a trial's numbers. A train function, or a train loader of the user's own, orders
its own data (no `shuffle_seed` then).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import pickle
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from lrtune.schemas.halving import PEAK_RATE_FIELDS, HorizonLadder, RungCandidate, range_edge
from lrtune.schemas.jobs import JobSpec, LrBounds, PolicySearch
from lrtune.schemas.recommendations import BoundSuggestion
from lrtune.schemas.schedules import parse_schedule
from lrtune.schemas.search import (
    DEFAULT_SEARCH_SPACES,
    Choice,
    Domain,
    IntRange,
    LogUniform,
    Uniform,
    compress_schedule,
    field_of,
    resolve_schedule,
    validate_search_space,
)
from lrtune.schemas.trials import EpochResult, OptimizerSpec
from lrtune.workers.early_stopping import make_scheduler
from lrtune.workers.lr_range_test import derive_search_spaces
from lrtune.workers.recommendation import select_for_confirmation
from lrtune.workers.results import (
    MEMBERS_KEY,
    CancelStopper,
    ConfirmationSink,
    EndRunOnHandBack,
    HalvingSink,
    RecordResults,
    TuneTrialConfig,
    sink_for,
)
from lrtune.workers.run_storage import PruneCheckpoints, experiment_name, storage_uri
from lrtune.workers.sweep import sweep_trial_config
from lrtune.workers.trainable import make_trainable
from lrtune.workers.user_code import CodeSnapshot
from pydantic import ValidationError
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.sample import Domain as TuneDomain
from scipy.stats import qmc

log = logging.getLogger(__name__)

# Per-trial CSV/JSON/TensorBoard files nobody reads cost time on every result; results go to SQL.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Experiment snapshots (what Tuner.restore resumes from) every 2 s instead of Tune's adaptive
# 10 s or more, so a worker killed mid-job loses at most a couple of seconds of bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# The result grid Tuner.fit returns reads those files and warns for every trial; SQL has it all.
logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

# Seeds are stored in a 32-bit SQL integer.
_SEED_LIMIT = 2**31 - 1
# Points per continuous dimension in a grid never go above this (budgets are small anyway).
_MAX_GRID_POINTS_PER_DIM = 16
# A trial that raises (a bug in user code, a node lost) is retried once before it is recorded
# as failed; deterministic errors just fail twice, quickly.
MAX_TRIAL_FAILURES = 1


_DOMAIN_TYPES = (Choice, Uniform, LogUniform, IntRange)


@dataclass(frozen=True)
class PolicySpace:
    """One policy's search space: fixed fields and searched fields (domains)."""

    policy: str
    fixed: dict[str, Any]
    domains: dict[str, Domain]


def raw_space(entry: PolicySearch, *, bounds: BoundSuggestion | None = None) -> dict[str, Any]:
    """The policy's search space as JSON: its default (GET /v1/policies), overridden key by key
    by the job's, with the rate fields centred on `bounds` when given.

    A job that sets `step_size_epochs` replaces the default's `step_size_frac` (same field).
    With bounds (the range test's for lr_bounds "auto", or explicit lr_bounds as min/max) the
    rates come from `derive_search_spaces`; fields the job sets itself win.
    """
    policy = entry.policy
    override = dict(entry.search or {})
    if bounds is not None:
        return derive_search_spaces(
            policies=[policy],
            bounds=bounds,
            base_spaces=DEFAULT_SEARCH_SPACES,
            overrides={policy: override},
        )[policy]
    overridden_fields = {field_of(policy, key)[0] for key in override}
    merged = {
        key: value
        for key, value in DEFAULT_SEARCH_SPACES[policy].items()
        if field_of(policy, key)[0] not in overridden_fields
    }
    merged.update(override)
    return merged


def parse_space(policy: str, space: dict[str, Any]) -> PolicySpace:
    """A JSON search space as fixed fields and domains (ValidationError when invalid)."""
    parsed = validate_search_space(policy, space)
    domains = {k: v for k, v in parsed.items() if isinstance(v, _DOMAIN_TYPES)}
    fixed = {k: v for k, v in parsed.items() if k not in domains}
    return PolicySpace(policy=policy, fixed=fixed, domains=domains)


def explicit_bounds(bounds: LrBounds) -> BoundSuggestion:
    """Explicit lr_bounds as the suggestion `derive_search_spaces` centres spaces on."""
    return BoundSuggestion(
        min_lr=bounds.min, max_lr=bounds.max, min_method="given", max_method="given"
    )


def policy_space(entry: PolicySearch, *, lr_bounds: LrBounds | None = None) -> PolicySpace:
    """The policy's parsed search space (see `raw_space`), explicit `lr_bounds` applied."""
    bounds = explicit_bounds(lr_bounds) if lr_bounds is not None else None
    return parse_space(entry.policy, raw_space(entry, bounds=bounds))


def to_tune_domain(domain: Domain) -> TuneDomain:
    """Our domain as a Tune domain. Choices become a choice of indices (Optuna only takes
    scalars, and some choices are lists, e.g. milestones); `int` bounds are inclusive in our
    contract and Tune's randint excludes its upper bound."""
    if isinstance(domain, Choice):
        return tune.choice(list(range(len(domain.choice))))
    if isinstance(domain, Uniform):
        return tune.uniform(*domain.uniform)
    if isinstance(domain, LogUniform):
        return tune.loguniform(*domain.loguniform)
    low, high = domain.int
    return tune.randint(low, high + 1)


def tune_space(space: PolicySpace) -> dict[str, TuneDomain]:
    return {key: to_tune_domain(domain) for key, domain in space.domains.items()}


def decode_point(space: PolicySpace, encoded: dict[str, Any]) -> dict[str, Any]:
    """A full point (fixed fields included) from values of the Tune domains."""
    point = dict(space.fixed)
    for key, domain in space.domains.items():
        value = _plain(encoded[key])
        point[key] = domain.choice[int(value)] if isinstance(domain, Choice) else value
    return point


def trial_seed(base_seed: int, index: int) -> int:
    """The seed of the index-th trial of every policy, from the job's search seed."""
    state = np.random.SeedSequence([base_seed, index]).generate_state(1)[0]
    return int(state) % _SEED_LIMIT


# The stream confirmation seeds are drawn from: apart from the search trials' [seed, index].
_CONFIRM_STREAM = 0x636F6E66  # "conf"


def confirmation_seed(base_seed: int, index: int) -> int:
    """The index-th confirmation seed of every configuration: fresh (not a search seed's
    stream) and deterministic from the job's search seed. It is also the data order of the
    confirmation trials of that seed, so the spread across seeds covers the data order too."""
    state = np.random.SeedSequence([base_seed, _CONFIRM_STREAM, index]).generate_state(1)[0]
    return int(state) % _SEED_LIMIT


# The stream the search's data order is drawn from: apart from the trial seeds' [seed, index].
_ORDER_STREAM = 0x6F726472  # "ordr"


def search_shuffle_seed(base_seed: int) -> int:
    """The data order of every search trial of a job: one order, so that a trial's batches do
    not depend on which trials it shares a population with."""
    state = np.random.SeedSequence([base_seed, _ORDER_STREAM]).generate_state(1)[0]
    return int(state) % _SEED_LIMIT


def quasi_random_point(
    space: PolicySpace, *, base_seed: int, index: int, stream: int = 0
) -> dict[str, Any]:
    """The index-th point of the policy's scrambled Sobol sequence: depends on nothing but
    (seed, policy, stream, index). Low-discrepancy points cover each range evenly with few
    trials, where i.i.d. draws clump and leave gaps (Bergstra & Bengio 2012); Owen scrambling
    keeps every point uniformly distributed. `stream` starts a fresh sequence (a range extended
    mid-search draws its new points from one)."""
    if not space.domains:
        return dict(space.fixed)
    seed = np.random.default_rng([base_seed, zlib.crc32(space.policy.encode()), stream])
    engine = qmc.Sobol(d=len(space.domains), scramble=True, seed=seed)
    if index:  # scipy refuses to fast-forward by 0
        engine.fast_forward(index)
    unit = engine.random(1)[0]
    encoded = {
        key: _from_unit(domain, float(u))
        for (key, domain), u in zip(space.domains.items(), unit, strict=True)
    }
    return decode_point(space, encoded)


def _from_unit(domain: Domain, u: float) -> Any:
    """A value of `domain` from a number in [0, 1) (choices as indices, like Tune's)."""
    if isinstance(domain, Choice):
        return min(int(u * len(domain.choice)), len(domain.choice) - 1)
    if isinstance(domain, Uniform):
        low, high = domain.uniform
        return low + u * (high - low)
    if isinstance(domain, LogUniform):
        low, high = domain.loguniform
        return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    first, last = domain.int
    return first + min(int(u * (last - first + 1)), last - first)


def grid_points(space: PolicySpace, *, budget: int) -> list[dict[str, Any]]:
    """`budget` points of a grid: choices and small int ranges in full, continuous ranges on
    k evenly spaced values (k as small as gives at least `budget` points); the product is
    thinned evenly when larger, and repeated (with new seeds) when smaller."""
    discrete: dict[str, list[Any]] = {}
    continuous: list[str] = []
    for key, domain in space.domains.items():
        if isinstance(domain, Choice):
            discrete[key] = list(range(len(domain.choice)))
        elif isinstance(domain, IntRange) and domain.int[1] - domain.int[0] < budget:
            discrete[key] = list(range(domain.int[0], domain.int[1] + 1))
        else:
            continuous.append(key)
    n_discrete = math.prod(len(values) for values in discrete.values())
    k = 1
    if continuous:
        k = max(2, math.ceil((budget / n_discrete) ** (1 / len(continuous))))
        k = min(k, _MAX_GRID_POINTS_PER_DIM)
    axes: dict[str, list[Any]] = dict(discrete)
    for key in continuous:
        axes[key] = _grid_axis(space.domains[key], k)
    keys = list(axes)
    product = [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]
    if len(product) >= budget:
        chosen = [product[(i * len(product)) // budget] for i in range(budget)]
    else:
        chosen = [product[i % len(product)] for i in range(budget)]
    return [decode_point(space, encoded) for encoded in chosen]


def _grid_axis(domain: Domain, k: int) -> list[Any]:
    if isinstance(domain, Uniform):
        low, high = domain.uniform
        return [float(v) for v in np.linspace(low, high, k)]
    if isinstance(domain, LogUniform):
        low, high = domain.loguniform
        return [float(v) for v in np.geomspace(low, high, k)]
    assert isinstance(domain, IntRange)
    first, last = domain.int
    return sorted({round(float(v)) for v in np.linspace(first, last, k)})


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (they go to JSON and to pydantic)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class _SearchState:
    suggested: dict[str, int] = field(default_factory=dict)
    # Tune trial id -> policy, for routing TPE feedback to that policy's searcher.
    owner: dict[str, str] = field(default_factory=dict)
    # Points per policy drawn before a pause (horizon halving's first wave); None: no pause.
    wave_limit: int | None = None
    # Spaces extended mid-search, by policy: their points come from a fresh sequence.
    extended: dict[str, PolicySpace] = field(default_factory=dict)


class _StatefulSearcher(Searcher):
    """A searcher whose whole state is `get_state()`; Tune saves it with the experiment so a
    restored job continues the same sequence of trials."""

    def get_state(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_state(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as file:
            pickle.dump(self.get_state(), file)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as file:
            self.set_state(pickle.load(file))


class EqualBudgetSearcher(_StatefulSearcher):
    """Exactly `trials_per_policy` trials per policy, round robin, points per `algorithm`.

    Each suggestion is a trial config: `trial_key` ("<policy>-<index>", stable across
    restores), `policy`, `index`, `seed`, `shuffle_seed` (the job's search order, when given:
    None for a workload that orders its own data), `optimizer` (the policy's arm's, as JSON:
    `optimizers` maps each policy to it), `point` (the sampled search-space point, durations
    still in epochs or fractions) and `schedule` (resolved in steps) or `schedule_error`.
    Suggests nothing once the job must stop (cancellation). With `horizons` (a training-length
    sweep) each wsd trial is a trunk, its config also listing the horizons it forks
    (`lrtune.workers.sweep`).
    """

    def __init__(
        self,
        *,
        job_key: str,
        spaces: list[PolicySpace],
        optimizers: Mapping[str, OptimizerSpec],
        trials_per_policy: int,
        algorithm: str,
        seed: int,
        metric: str,
        mode: str,
        steps_per_epoch: int,
        epochs: int,
        horizons: Sequence[int] = (),
        shuffle_seed: int | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.job_key = job_key
        self.spaces = {space.policy: space for space in spaces}
        self.order = [space.policy for space in spaces]
        self.optimizers = {policy: optimizers[policy] for policy in self.order}
        self.trials_per_policy = trials_per_policy
        self.algorithm = algorithm
        self.seed = seed
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.horizons = list(horizons)
        self.shuffle_seed = shuffle_seed
        self.state = _SearchState(suggested=dict.fromkeys(self.order, 0))
        self._grids: dict[str, list[dict[str, Any]]] = {}
        self._tpe: dict[str, Any] = {}
        if algorithm == "tpe":
            self._tpe = {space.policy: self._optuna(space) for space in spaces if space.domains}

    def _optuna(self, space: PolicySpace) -> Any:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(
            space=tune_space(space),  # type: ignore[arg-type]  # Tune domains are converted
            metric=self._metric,
            mode=self._mode,
            seed=(self.seed * 1_000_003 + zlib.crc32(space.policy.encode())) % _SEED_LIMIT,
        )

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        # The metric and mode come from the job spec; the space from the policies.
        return True

    def suggest(self, trial_id: str) -> TuneTrialConfig | None:
        """The next trial; FINISHED once every policy has its trials (or `wave_limit` of
        them, until the limit is lifted)."""
        limit = min(self.trials_per_policy, self.state.wave_limit or self.trials_per_policy)
        remaining = [p for p in self.order if self.state.suggested[p] < limit]
        if not remaining or sink_for(self.job_key).should_stop():
            return Searcher.FINISHED  # Tune's sentinel string
        # Round robin: the policy with the fewest trials so far, in the job's order.
        policy = min(remaining, key=lambda p: self.state.suggested[p])
        index = self.state.suggested[policy]
        self.state.suggested[policy] = index + 1
        self.state.owner[trial_id] = policy
        point = self._point(self.space(policy), index=index, trial_id=trial_id)
        config: TuneTrialConfig = {
            "trial_key": f"{policy}-{index}",
            "policy": policy,
            "index": index,
            "seed": trial_seed(self.seed, index),
            "steps_per_epoch": self.steps_per_epoch,
            "optimizer": self.optimizers[policy].model_dump(mode="json"),
            "point": point,
            "schedule": None,
            "schedule_error": None,
        }
        if self.shuffle_seed is not None:
            config["shuffle_seed"] = self.shuffle_seed
        try:
            schedule = resolve_schedule(
                policy,
                point,
                steps_per_epoch=self.steps_per_epoch,
                total_steps=self.steps_per_epoch * self.epochs,
                metric_mode=self._mode,
            )
            config["schedule"] = schedule.model_dump(mode="json")
        except (ValidationError, ValueError) as error:
            config["schedule_error"] = _first_problem(error)
        if self.horizons and policy == "wsd" and config["schedule"] is not None:
            config = sweep_trial_config(config, self.horizons, steps_per_epoch=self.steps_per_epoch)
        return config

    @property
    def suggested_trials(self) -> int:
        return sum(self.state.suggested.values())

    def space(self, policy: str) -> PolicySpace:
        """The policy's space as searched now (extended or not)."""
        return self.state.extended.get(policy, self.spaces[policy])

    def extend(self, space: PolicySpace) -> None:
        """Draw the policy's further points from `space`, on a fresh quasi-random sequence."""
        self.state.extended[space.policy] = space

    def _point(self, space: PolicySpace, *, index: int, trial_id: str) -> dict[str, Any]:
        if not space.domains:
            return dict(space.fixed)
        if self.algorithm == "grid":
            if space.policy not in self._grids:
                self._grids[space.policy] = grid_points(space, budget=self.trials_per_policy)
            return self._grids[space.policy][index]
        if self.algorithm == "tpe":
            return decode_point(space, self._tpe[space.policy].suggest(trial_id))
        stream = 1 if space.policy in self.state.extended else 0
        return quasi_random_point(space, base_seed=self.seed, index=index, stream=stream)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        searcher = self._tpe.get(self.state.owner.get(trial_id, ""))
        if searcher is not None and self._metric in result:
            searcher.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        searcher = self._tpe.get(self.state.owner.get(trial_id, ""))
        if searcher is not None and trial_id in searcher._ot_trials:
            value = (result or {}).get(str(self._metric))
            # Optuna refuses NaN/inf; a diverged trial is a failure to TPE, not a number.
            if value is not None and not math.isfinite(float(value)):
                result, error = None, True
            searcher.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {"state": self.state, "tpe": self._tpe}

    def set_state(self, state: dict[str, Any]) -> None:
        self.state = state["state"]
        self._tpe = state["tpe"]


def _first_problem(error: Exception) -> str:
    if isinstance(error, ValidationError):
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"][1:]) or "schedule"
        return f"{where}: {problem['msg']}"
    return str(error)


@dataclass(frozen=True)
class ExperimentPlan:
    """Everything a job's Tuner is built from; made in the driver, cheap to rebuild.

    `search_spaces` is each policy's space as JSON (what the job records), `spaces` the same
    parsed. `storage` is the run's storage (a local folder, a shared one or a pyarrow
    filesystem URI): the experiment state and the trials' checkpoints live under it.
    `orders_data`: lrtune orders the training batches (`TrainingPlan.orders_data`), so each
    trial takes its phase's data order.
    """

    job_key: str
    spec: JobSpec
    spaces: list[PolicySpace]
    search_spaces: dict[str, dict[str, Any]]
    steps_per_epoch: int
    storage: str
    checkpoint_every_epochs: int = 0
    code: CodeSnapshot | None = None
    orders_data: bool = True

    @property
    def total_trials(self) -> int:
        return len(self.spaces) * self.spec.budget.trials_per_policy

    @property
    def location(self) -> str:
        """Where the job's one Tune experiment (search and confirmation) lives."""
        return f"{self.storage.rstrip('/')}/{experiment_name(self.job_key)}"


def plan_experiment(
    spec: JobSpec,
    *,
    job_key: str,
    storage_path: str | Path,
    steps_per_epoch: int | None = None,
    orders_data: bool = True,
    bounds: BoundSuggestion | None = None,
    checkpoint_every_epochs: int = 0,
    code: CodeSnapshot | None = None,
) -> ExperimentPlan:
    """The job's search spaces and where its Tune state lives (`storage_path`/job-<key>).

    `bounds` are the range test's suggestion, required for lr_bounds "auto"; explicit lr_bounds
    are used as min/max bounds of the same derivation. `steps_per_epoch` and `orders_data`
    default to the workload's own (built once here, in this process: the worker daemon passes
    what its planning task found instead). `code` is the job's snapshot of the users' code
    folders.
    """
    if spec.kind != "search":
        raise ValueError(f"a {spec.kind} job is not a Ray Tune search")
    if isinstance(spec.lr_bounds, LrBounds):
        bounds = explicit_bounds(spec.lr_bounds)
    elif spec.lr_bounds == "auto" and bounds is None:
        raise ValueError('lr_bounds "auto" needs the range test\'s bounds; run it first')
    elif spec.lr_bounds is None:
        bounds = None
    raw = {entry.policy: raw_space(entry, bounds=bounds) for entry in spec.policies}
    spaces = [parse_space(policy, space) for policy, space in raw.items()]
    if steps_per_epoch is None:
        training = inspect_training(spec, code)
        steps_per_epoch, orders_data = training.steps_per_epoch, training.orders_data
    return ExperimentPlan(
        job_key=job_key,
        spec=spec,
        spaces=spaces,
        search_spaces=raw,
        steps_per_epoch=steps_per_epoch,
        storage=storage_uri(storage_path),
        checkpoint_every_epochs=checkpoint_every_epochs,
        code=code,
        orders_data=orders_data,
    )


@dataclass(frozen=True)
class TrainingPlan:
    """What planning found out about the job's training."""

    steps_per_epoch: int
    train_function: bool  # the user's own loop (a TrainFunction), not a Workload
    # Why its trials cannot train as populations (execution "population" or "auto"); None when
    # they can.
    not_fusible: str | None = None
    # lrtune orders the training batches (a TensorBatches train loader), so the job sets each
    # trial's data order; a train function or a loader of the user's own orders its own.
    orders_data: bool = True


def inspect_training(spec: JobSpec, code: CodeSnapshot | None = None) -> TrainingPlan:
    """What the job trains: a workload built once (data and model), or a train function's
    declared count. Raises WorkloadError for user code that cannot train: it does not import,
    returns the wrong type, has no steps per epoch, does not report the job's metric, is a
    train function in a job with snapshots (its loop is its own: lrtune cannot take them), or
    cannot be batched in a job with execution "population"."""
    from lrtune.workers.population import NotFusible, check_workload_fusible
    from lrtune.workers.train_function import TrainFunction
    from lrtune.workers.trial import TRAIN_FUNCTION_SNAPSHOTS
    from lrtune.workers.workloads import (
        TensorBatches,
        Workload,
        WorkloadError,
        build_training,
        check_reports_metric,
    )

    if code is not None:
        code.activate()
    target = spec.workload.name if spec.workload.name is not None else spec.workload.entrypoint
    assert target is not None  # WorkloadSpec guarantees one of the two
    built = build_training(target, spec.workload.params, seed=spec.search.seed)
    not_fusible: str | None = None
    if isinstance(built, TrainFunction):
        if spec.snapshots is not None:
            raise WorkloadError(f"{target!r} is a train function: {TRAIN_FUNCTION_SNAPSHOTS}")
        not_fusible = f"{target!r} is a train function, which runs its own loop"
    else:
        check_reports_metric(built, spec.metric_name, label=target)
        try:
            check_workload_fusible(built)
        except NotFusible as error:
            not_fusible = f"{target!r} cannot train as a population: {error}"
    if spec.execution == "population" and not_fusible is not None:
        raise WorkloadError(f'{not_fusible}; use execution "trials"')
    return TrainingPlan(
        steps_per_epoch=built.steps_per_epoch,
        train_function=isinstance(built, TrainFunction),
        not_fusible=not_fusible,
        orders_data=isinstance(built, Workload) and isinstance(built.train_loader, TensorBatches),
    )


def build_tuner(plan: ExperimentPlan, *, skip_keys: set[str] | None = None) -> tune.Tuner:
    """A new Tuner for the plan, or the restored one when its experiment state exists.

    Restored: finished trials stay finished, unfinished ones go on from their latest checkpoint
    (or their start, before their first), errored ones stay failed. `skip_keys` are trials the
    database has as finished although Tune's last snapshot had them running; they return at
    once instead of training again.

    One experiment per job: the search's trials, then (when the job confirms) the
    confirmation's, as further trials of the same run (`job_searcher`).
    """
    trainable = make_trainable(
        plan.spec,
        skip_keys=skip_keys or set(),
        checkpoint_every_epochs=plan.checkpoint_every_epochs,
        code=plan.code,
    )
    location = plan.location
    if tune.Tuner.can_restore(location):
        log.info("resuming job %s from %s", plan.job_key, location)
        return tune.Tuner.restore(
            location,
            trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    spec = plan.spec
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=spec.metric_name,
            mode=spec.metric_mode,
            search_alg=job_searcher(plan),
            scheduler=make_scheduler(spec),
            # The searcher ends the experiment after its last trial; Tune must not stop asking
            # earlier.
            num_samples=-1,
            max_concurrent_trials=spec.budget.max_concurrent_trials,
            # One actor per concurrent slot for the whole job: no process start per trial.
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name=experiment_name(plan.job_key),
            storage_path=plan.storage,
            callbacks=[
                RecordResults(job_key=plan.job_key, epochs=spec.budget.epochs),
                PruneCheckpoints(),
                EndRunOnHandBack(job_key=plan.job_key),
            ],
            stop=CancelStopper(job_key=plan.job_key),
            failure_config=tune.FailureConfig(max_failures=MAX_TRIAL_FAILURES),
            # Tune keeps every checkpoint; PruneCheckpoints deletes the obsolete ones once no
            # experiment state can name them (see lrtune.workers.run_storage).
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            verbose=0,
        ),
    )


def job_searcher(plan: ExperimentPlan) -> Searcher:
    """The job's search algorithm: its search (`plan_searcher`, over a ladder of horizons with
    early stopping "horizon_halving"), then its confirmation when the job asks for one; their
    trials grouped into populations for execution "population"."""
    points = plan_searcher(plan)
    ladder = plan.spec.horizon_ladder
    search: EqualBudgetSearcher | HorizonHalvingSearcher = (
        points
        if ladder is None
        else HorizonHalvingSearcher(
            job_key=plan.job_key,
            search=points,
            ladder=ladder,
            search_spaces=plan.search_spaces,
            kept_ranges=kept_ranges(plan.spec),
        )
    )
    trials: _StatefulSearcher = (
        search if plan.spec.confirm is None else SearchThenConfirm(plan, search)
    )
    if plan.spec.execution == "population":
        return PopulationSearcher(
            trials,
            size=plan.spec.population_size,
            slots=plan.spec.budget.max_concurrent_trials or 1,
            search_trials=plan.total_trials,
            metric=plan.spec.metric_name,
        )
    return trials


def plan_searcher(plan: ExperimentPlan) -> EqualBudgetSearcher:
    """The searcher that hands out the plan's trials: the job's budget, algorithm and seed, each
    policy's trials with its arm's optimizer."""
    spec = plan.spec
    return EqualBudgetSearcher(
        job_key=plan.job_key,
        spaces=plan.spaces,
        optimizers={space.policy: spec.optimizer_for(space.policy) for space in plan.spaces},
        trials_per_policy=spec.budget.trials_per_policy,
        algorithm=spec.search.algorithm,
        seed=spec.search.seed,
        metric=spec.metric_name,
        mode=spec.metric_mode,
        steps_per_epoch=plan.steps_per_epoch,
        epochs=spec.budget.epochs,
        horizons=spec.horizons or (),
        shuffle_seed=search_shuffle_seed(spec.search.seed) if plan.orders_data else None,
    )


def kept_ranges(spec: JobSpec) -> dict[str, str]:
    """The policies whose peak-rate range a search must not move, and why: the user set it."""
    kept = {}
    for entry in spec.policies:
        if any(field_of(entry.policy, key)[0] in PEAK_RATE_FIELDS for key in entry.search or {}):
            kept[entry.policy] = "you set it in the policy's search space"
        elif isinstance(spec.lr_bounds, LrBounds):
            kept[entry.policy] = "it comes from your lr_bounds"
    return kept


def peak_field(space: PolicySpace) -> str | None:
    """The field of a policy's searched peak rate (`lr`, `max_lr`, `eta_max`), if log-uniform."""
    return next((f for f in PEAK_RATE_FIELDS if isinstance(space.domains.get(f), LogUniform)), None)


def trial_name(trial: Any) -> str:
    """Short trial names and folders (Tune's default spells the whole config out)."""
    return str(trial.config["trial_key"])


def run_experiment(plan: ExperimentPlan) -> tune.ResultGrid:
    """Run (or resume) the job's experiment to its end; the sink of `plan.job_key` must be
    registered (`lrtune.workers.results.sink_registered`)."""
    skip = sink_for(plan.job_key).finished_trial_keys()
    tuner = build_tuner(plan, skip_keys=skip)
    return tuner.fit()


# --- horizon halving: the search's points trained at ever longer horizons -------------------


def rung_trial_key(point_id: str, horizon: int) -> str:
    """The key of a point's trial at a horizon_halving rung of `horizon` epochs."""
    return f"{point_id}-h{horizon}"


class HorizonHalvingSearcher(_StatefulSearcher):
    """Successive halving over training length (early stopping "horizon_halving"), as the
    trials of one Tune run.

    The first rung's points come from `search` (`trials_per_policy` per policy, random, grid or
    TPE; TPE learns from the first rung's results). At each rung every candidate trains, from
    scratch, the schedule its point resolves to at the budget compressed to the rung's horizon
    (`compress_schedule`): a trial of its own keyed `<point>-h<epochs>`, whose search config
    records `horizon_epochs`, `rung` and `point_id` (the first rung's trial key). Once every
    trial of a rung has ended, `HorizonLadder.promote` decides the rung on the trials' final
    values as SQL has them (a restored run's skipped trials report none to Tune); the sink
    records the decisions (a stopped trial ends `pruned`) and the promoted points train the
    next horizon. Meanwhile it suggests nothing (None). The last rung trains the budget.
    Suggests nothing once the job must stop (cancellation).
    """

    def __init__(
        self,
        *,
        job_key: str,
        search: EqualBudgetSearcher,
        ladder: HorizonLadder,
        search_spaces: Mapping[str, dict[str, Any]] | None = None,
        kept_ranges: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(metric=search.metric, mode=search.mode)
        self.job_key = job_key
        self.search = search
        self.ladder = ladder
        self.rung = 0
        # The current rung's points, as the search drew them (trial configs at the budget).
        self.candidates: list[TuneTrialConfig] = []
        self.drawn_all = False  # every point of the first rung is drawn
        self.suggested = 0  # of the current rung's candidates
        self.running: set[str] = set()  # Tune ids of the current rung's trials, not ended yet
        self.suggested_trials = 0  # of every rung
        # Each policy's space as the job records it (JSON), and why a policy's peak-rate range
        # must stay as it is (the user set it).
        self.search_spaces = dict(search_spaces or {})
        self.kept_ranges = dict(kept_ranges or {})
        self.edges_judged = False
        if self._can_extend():
            # The first half of the first rung is drawn, trained and judged before the rest.
            self.search.state.wave_limit = math.ceil(search.trials_per_policy / 2)

    def _can_extend(self) -> bool:
        """Whether any policy's peak-rate range may move: quasi-random points, more than one
        rung and one point per policy, and a range the user did not set."""
        search = self.search
        return (
            search.algorithm == "random"
            and len(self.ladder.horizons) > 1
            and search.trials_per_policy > 1
            and any(
                peak_field(search.spaces[p]) is not None and p not in self.kept_ranges
                for p in search.order
            )
        )

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True

    def suggest(self, trial_id: str) -> TuneTrialConfig | None:
        while True:
            if not self.drawn_all:
                drawn = self.search.suggest(trial_id)
                if drawn is None:
                    return None
                if drawn == Searcher.FINISHED and self.search.state.wave_limit is not None:
                    if self.running:
                        return None  # the first wave is judged once all of it has ended
                    sink = cast(HalvingSink, sink_for(self.job_key))
                    if not sink.should_stop():
                        self._judge_edges(sink, self._rung_values(sink), extend=True)
                    self.search.state.wave_limit = None
                    continue
                if drawn == Searcher.FINISHED:
                    self.drawn_all = True
                else:
                    self.candidates.append(drawn)
            if self.suggested < len(self.candidates):
                config = self._rung_config(self.candidates[self.suggested])
                self.suggested += 1
                self.suggested_trials += 1
                self.running.add(trial_id)
                return config
            if self.running:
                return None  # a rung is decided once all of its trials have ended
            sink = cast(HalvingSink, sink_for(self.job_key))
            if sink.should_stop():
                return Searcher.FINISHED  # Tune's sentinel string
            if self.rung + 1 >= len(self.ladder.horizons):
                # Fewer than planned ran where a rung had fewer candidates with a value to
                # promote (failed or diverged ones): plan what ran.
                sink.set_planned_trials(self.suggested_trials)
                return Searcher.FINISHED
            self._close_rung(sink)

    def _rung_config(self, candidate: TuneTrialConfig) -> TuneTrialConfig:
        """The candidate's trial at the current rung: its schedule compressed to the horizon."""
        horizon = self.ladder.horizons[self.rung]
        budget = self.ladder.budget_epochs
        point_id = candidate["trial_key"]
        config = cast(
            TuneTrialConfig,
            {
                **candidate,
                "trial_key": rung_trial_key(point_id, horizon),
                "epochs": horizon,
                "point": {
                    **candidate["point"],
                    "horizon_epochs": horizon,
                    "rung": self.rung,
                    "point_id": point_id,
                },
            },
        )
        if candidate["schedule"] is not None and horizon < budget:
            try:
                schedule = parse_schedule(candidate["schedule"])
                compressed = compress_schedule(schedule, epochs=horizon, budget_epochs=budget)
                config["schedule"] = compressed.model_dump(mode="json")
            except ValidationError as error:
                config["schedule"] = None
                problem = _first_problem(error)
                config["schedule_error"] = f"compressed to {horizon} epochs, {problem}"
        return config

    def _close_rung(self, sink: HalvingSink) -> None:
        """Decide the current rung on its trials' final values, record it, go to the next."""
        keys = self._rung_keys()
        values = self._rung_values(sink)
        candidates = [
            RungCandidate(
                point_id=c["trial_key"], policy=c["policy"], value=values.get(keys[c["trial_key"]])
            )
            for c in self.candidates
        ]
        promoted = self.ladder.promote(candidates, mode=self._mode_literal)
        if not self.edges_judged:
            self._judge_edges(sink, values, extend=False)
        if keys:
            sink.record_rung_decisions(
                {key: "continue" if point in promoted else "stop" for point, key in keys.items()}
            )
        self.candidates = [c for c in self.candidates if c["trial_key"] in promoted]
        self.rung += 1
        self.suggested = 0

    @property
    def _mode_literal(self) -> Literal["min", "max"]:
        return "max" if self._mode == "max" else "min"

    def _rung_keys(self) -> dict[str, str]:
        """Each current candidate's trial key at the current rung, by point id."""
        horizon = self.ladder.horizons[self.rung]
        return {c["trial_key"]: rung_trial_key(c["trial_key"], horizon) for c in self.candidates}

    def _rung_values(self, sink: HalvingSink) -> dict[str, float | None]:
        """Each current candidate's final value at the current rung, by its rung trial key."""
        return sink.rung_values(list(self._rung_keys().values()))

    def _judge_edges(
        self, sink: HalvingSink, values: Mapping[str, float | None], *, extend: bool
    ) -> None:
        """Note each policy whose best first-rung candidate so far sits at an edge of its
        peak-rate range (`range_edge`). With `extend` (the first wave has ended), move that edge
        out for the policy's other points, unless the user set the range or a candidate beyond
        the best failed or diverged; the job's search spaces record the change."""
        self.edges_judged = True
        horizon = self.ladder.horizons[0]
        keys = self._rung_keys()
        extended = False
        for policy in self.search.order:
            space = self.search.space(policy)
            field = peak_field(space)
            if field is None:
                continue
            domain = cast(LogUniform, space.domains[field])
            mine = [c for c in self.candidates if c["policy"] == policy]
            rated = [(float(c["point"][field]), values.get(keys[c["trial_key"]])) for c in mine]
            edge = range_edge(policy, field, domain.loguniform, rated, mode=self._mode_literal)
            if edge is None:
                continue
            found = (
                f"{policy}: the best of its {len(mine)} candidates at {horizon} epochs "
                f"({field} {edge.best:.3g}) lies at the {edge.side} end of its range "
                f"{edge.low:.3g}..{edge.high:.3g}"
            )
            if policy in self.kept_ranges:
                sink.add_note(f"{found}; the range stays, as {self.kept_ranges[policy]}")
            elif edge.blocked:
                sink.add_note(f"{found}; not extended, as a candidate beyond it diverged")
            elif not extend:
                sink.add_note(f"{found}; ranges move under random search only")
            else:
                low, high = edge.extended
                self.search.extend(
                    replace(
                        space, domains={**space.domains, field: LogUniform(loguniform=(low, high))}
                    )
                )
                self.search_spaces[policy] = {
                    **self.search_spaces[policy],
                    field: {"loguniform": [low, high]},
                }
                others = self.search.trials_per_policy - len(mine)
                sink.add_note(f"{found}; its other {others} are drawn over {low:.3g}..{high:.3g}")
                extended = True
        if extended:
            sink.save_search_spaces(self.search_spaces)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.rung == 0:  # TPE learns from the first rung
            self.search.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self.running:
            self.running.discard(trial_id)
            if self.rung == 0:
                self.search.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {
            "search": self.search.get_state(),
            "rung": self.rung,
            "candidates": self.candidates,
            "drawn_all": self.drawn_all,
            "suggested": self.suggested,
            "running": self.running,
            "suggested_trials": self.suggested_trials,
            "search_spaces": self.search_spaces,
            "edges_judged": self.edges_judged,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.search.set_state(state["search"])
        self.rung = state["rung"]
        self.candidates = state["candidates"]
        self.drawn_all = state["drawn_all"]
        self.suggested = state["suggested"]
        self.running = state["running"]
        self.suggested_trials = state["suggested_trials"]
        self.search_spaces = state["search_spaces"]
        self.edges_judged = state["edges_judged"]


# --- confirmation: the top configurations again, with fresh seeds ---------------------------


@dataclass(frozen=True)
class ConfirmationPick:
    """One configuration to confirm: the policy, its rank in the policy (0 = best), the
    resolved schedule and the search point it came from."""

    policy: str
    rank: int
    schedule: dict[str, Any]
    point: dict[str, Any]


def confirmation_configs(
    plan: ExperimentPlan, picks: list[ConfirmationPick], *, seeds: int
) -> list[TuneTrialConfig]:
    """The trial configs of the confirmation: every pick with `seeds` confirmation seeds and
    its policy's optimizer, keyed `confirm-<policy>-<rank>-<seed index>` (stable across
    restores). The trials of one seed share its data order (`shuffle_seed`, the seed itself)."""
    configs: list[TuneTrialConfig] = []
    for index in range(seeds):
        seed = confirmation_seed(plan.spec.search.seed, index)
        for pick in picks:
            config: TuneTrialConfig = {
                "trial_key": f"confirm-{pick.policy}-{pick.rank}-{index}",
                "phase": "confirm",
                "policy": pick.policy,
                "index": index,
                "seed": seed,
                "steps_per_epoch": plan.steps_per_epoch,
                "optimizer": plan.spec.optimizer_for(pick.policy).model_dump(mode="json"),
                "point": pick.point,
                "schedule": pick.schedule,
                "schedule_error": None,
            }
            if plan.orders_data:
                config["shuffle_seed"] = seed
            configs.append(config)
    return configs


class SearchThenConfirm(_StatefulSearcher):
    """A job's search, then its confirmation, as the trials of one Tune run.

    First the search's trials (`search`, an EqualBudgetSearcher, or a HorizonHalvingSearcher
    over one); once every one of them has ended (completed, pruned, diverged or failed), the
    confirmation's: each policy's `top_k` configurations by the finished full-length search
    trials in SQL, each on `seeds` fresh seeds (`confirmation_configs`). They reuse the
    search's trial actors: no second experiment to start. The scheduler lets them run to their
    end (`lrtune.workers.early_stopping`).
    Suggests nothing once the job must stop (cancellation).
    """

    def __init__(
        self, plan: ExperimentPlan, search: EqualBudgetSearcher | HorizonHalvingSearcher
    ) -> None:
        super().__init__(metric=search.metric, mode=search.mode)
        assert plan.spec.confirm is not None
        # Pickled with the experiment: the confirmation configs need the plan, not the code.
        self.plan = replace(plan, code=None)
        self.search = search
        self.search_running: set[str] = set()  # Tune ids of search trials not ended yet
        self.search_suggested_all = False
        self.confirm: list[TuneTrialConfig] | None = None  # picked when the search has ended
        self.confirm_suggested = 0
        # Whether this process recorded the confirmation phase (a restored run records it again).
        self._phase_begun = False

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.search_suggested_all:
            config = self.search.suggest(trial_id)
            if config != Searcher.FINISHED:
                if config is not None:
                    self.search_running.add(trial_id)
                return config
            self.search_suggested_all = True
        if self.search_running:
            # The confirmation picks from the finished search: Tune asks again at its next
            # step (no database read here, it asks often).
            return None
        sink = cast(ConfirmationSink, sink_for(self.plan.job_key))
        if sink.should_stop():
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's sentinel string
        if self.confirm is None:
            self.confirm = self._pick_confirmation(sink)
        self._begin_confirmation(sink)
        if self.confirm_suggested >= len(self.confirm):
            return Searcher.FINISHED  # type: ignore[return-value]
        config = self.confirm[self.confirm_suggested]
        self.confirm_suggested += 1
        return dict(config)

    def _pick_confirmation(self, sink: ConfirmationSink) -> list[TuneTrialConfig]:
        spec = self.plan.spec
        assert spec.confirm is not None
        chosen = select_for_confirmation(
            sink.search_summaries(), top_k=spec.confirm.top_k, mode=spec.metric_mode
        )
        picks = [
            ConfirmationPick(
                policy=policy,
                rank=rank,
                schedule=schedule.model_dump(mode="json"),
                point=schedule.model_dump(mode="json"),
            )
            for policy in self.plan.search_spaces
            for rank, schedule in enumerate(chosen.get(policy, []))
        ]
        configs = confirmation_configs(self.plan, picks, seeds=spec.confirm.seeds)
        # Pruned, failed and repeated configurations are not confirmed: plan what runs.
        sink.set_planned_trials(self.search.suggested_trials + len(configs))
        return configs

    def confirmation_trials(self) -> int:
        """How many trials the confirmation runs (0 before the search has ended)."""
        return len(self.confirm or [])

    def _begin_confirmation(self, sink: ConfirmationSink) -> None:
        if not self._phase_begun:
            self._phase_begun = True
            sink.begin_phase("confirmation")

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.search_running:
            self.search.on_trial_result(trial_id, result)
        elif self.confirm is not None and not self._phase_begun:
            # A restored run that resumes confirmation trials is in that phase again.
            self._begin_confirmation(cast(ConfirmationSink, sink_for(self.plan.job_key)))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self.search_running:
            self.search_running.discard(trial_id)
            self.search.on_trial_complete(trial_id, result=result, error=error)

    def get_state(self) -> dict[str, Any]:
        return {
            "search": self.search.get_state(),
            "search_running": self.search_running,
            "search_suggested_all": self.search_suggested_all,
            "confirm": self.confirm,
            "confirm_suggested": self.confirm_suggested,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.search.set_state(state["search"])
        self.search_running = state["search_running"]
        self.search_suggested_all = state["search_suggested_all"]
        self.confirm = state["confirm"]
        self.confirm_suggested = state["confirm_suggested"]


# --- populations: the trials above, trained as batched models ------------------------------


class PopulationSearcher(_StatefulSearcher):
    """The trials of `trials` (the job's search, then its confirmation) grouped into
    populations, each one Tune trial: up to `size` consecutive suggestions of one optimizer, one
    phase and one data order, taken as they come (a confirmation waits for the whole search, as
    without populations). Without a `size`, each phase's trials are spread evenly over the
    `slots` (the trials running at once), so every slot trains a population of each phase. The
    members keep their own keys, seeds, points and data order (`shuffle_seed`, which they
    share), and a population is keyed `population-<n>` (stable across restores).

    The wrapped searcher sees each member as a trial of its own (ids `<tune id>:<member>`): its
    results as they come, its completion when it leaves the population, so TPE learns from
    members and the confirmation starts when the last search member has ended.
    """

    def __init__(
        self,
        trials: _StatefulSearcher,
        *,
        size: int | None,
        slots: int,
        search_trials: int,
        metric: str,
    ) -> None:
        super().__init__(metric=trials.metric, mode=trials.mode)
        self.trials = trials
        self.size = size
        self.slots = slots
        self.search_trials = search_trials
        self.job_metric = metric
        self.populations = 0
        self.held: tuple[str, TuneTrialConfig] | None = None  # taken, not fitting the last one
        # A population's Tune id -> its members' trial keys -> their ids in `trials`.
        self.member_ids: dict[str, dict[str, str]] = {}
        self.running: set[str] = set()  # member ids not ended yet
        self.finished = False

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        members: list[tuple[str, TuneTrialConfig]] = []
        if self.held is not None:
            members.append(self.held)
            self.held = None
        while not members or len(members) < self._size(members[0][1]):
            if self.finished:
                break
            member_id = f"{trial_id}:{len(members)}"
            config = self.trials.suggest(member_id)
            if config == Searcher.FINISHED:
                self.finished = True
                break
            if config is None:
                break
            member = cast(TuneTrialConfig, config)
            if members and not _same_population(members[0][1], member):
                self.held = (member_id, member)
                break
            members.append((member_id, member))
        if not members:
            return Searcher.FINISHED if self.finished else None  # type: ignore[return-value]
        first = members[0][1]
        key = f"population-{self.populations}"
        self.populations += 1
        self.member_ids[trial_id] = {
            member["trial_key"]: member_id for member_id, member in members
        }
        self.running.update(self.member_ids[trial_id].values())
        return {
            "trial_key": key,
            "phase": first.get("phase", "search"),
            "policy": "population",
            "index": self.populations - 1,
            "seed": first["seed"],
            "shuffle_seed": first["shuffle_seed"],
            "steps_per_epoch": first["steps_per_epoch"],
            "optimizer": first.get("optimizer"),
            "point": {},
            "schedule": None,
            "schedule_error": None,
            "members": [member for _, member in members],
        }

    def _size(self, first: TuneTrialConfig) -> int:
        """Members of the population that `first` begins."""
        if self.size is not None:
            return self.size
        trials = self.search_trials
        if first.get("phase") == "confirm":
            trials = cast(SearchThenConfirm, self.trials).confirmation_trials()
        return max(1, math.ceil(trials / self.slots))

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        member_ids = self.member_ids.get(trial_id, {})
        for news in result.get(MEMBERS_KEY) or ():
            member_id = member_ids.get(news["trial_key"])
            if member_id is None or member_id not in self.running:
                continue
            value = None
            if news["epoch"] is not None:
                value = EpochResult.model_validate(news["epoch"]).value(self.job_metric)
            member_result = {self.job_metric: value, "training_iteration": result.get("epoch")}
            if news["status"] is None:
                if value is not None:
                    self.trials.on_trial_result(member_id, member_result)
                continue
            self.running.discard(member_id)
            failed = news["status"] == "failed" or value is None
            self.trials.on_trial_complete(
                member_id, result=None if failed else member_result, error=failed
            )

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        # Members the population did not report as ended ended with it (an error, a cancel).
        for member_id in self.member_ids.get(trial_id, {}).values():
            if member_id in self.running:
                self.running.discard(member_id)
                self.trials.on_trial_complete(member_id, result=None, error=True)

    def get_state(self) -> dict[str, Any]:
        return {
            "trials": self.trials.get_state(),
            "populations": self.populations,
            "held": self.held,
            "member_ids": self.member_ids,
            "running": self.running,
            "finished": self.finished,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.trials.set_state(state["trials"])
        self.populations = state["populations"]
        self.held = state["held"]
        self.member_ids = state["member_ids"]
        self.running = state["running"]
        self.finished = state["finished"]


def _same_population(first: TuneTrialConfig, other: TuneTrialConfig) -> bool:
    """Whether two trials can train in one population: one optimizer, one phase, one data
    order (a confirmation's seeds each have their own)."""
    return (
        first.get("optimizer") == other.get("optimizer")
        and first.get("phase", "search") == other.get("phase", "search")
        and first.get("shuffle_seed") == other.get("shuffle_seed")
    )
