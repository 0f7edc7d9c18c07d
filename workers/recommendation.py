"""A job's recommendation from its trials: confirmation picks and statistics.

Pure functions over plain trial summaries (the store feeds them in): `select_evidence` says
which trials are evidence, `select_for_confirmation` picks each policy's top configurations to
rerun with fresh seeds, `build_recommendation` ranks configurations on their mean over seeds, and
`leader` is its winner alone (the job's "best so far"), cheap enough for every job read. The code
it attaches comes from `code_export`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from lrtune.schemas.jobs import COUNTED_TRIAL_STATUSES, BestSoFar, Job
from lrtune.schemas.recommendations import (
    Comparison,
    PolicyEvidence,
    Recommendation,
    SnapshotEnsemble,
)
from lrtune.schemas.schedules import ParamGroupRule, ScheduleSpec, parse_schedule
from lrtune.schemas.trials import ENSEMBLE_PREFIX, OptimizerSpec, single_model_metric
from lrtune.workers.code_export import Snippet, export_snippets
from scipy import stats

__all__ = [
    "Evidence",
    "RecommendationInputs",
    "TrialFacts",
    "TrialSummary",
    "build_recommendation",
    "leader",
    "select_evidence",
    "select_for_confirmation",
    "trial_summaries",
]

Mode = Literal["min", "max"]
CONFIDENCE = 0.95


@dataclass(frozen=True)
class TrialSummary:
    """What the recommendation needs of one trial.

    `metric_values` holds the job metric after each epoch; `final_metric` is the value the trial
    is judged on (default: the last epoch's). NaN or inf (a diverged trial) counts as the worst
    possible value. `optimizer` is the one it trained with (None: the job's, as
    `build_recommendation` is told). `final_values` holds every value of its last epoch by
    name (a job with snapshots compares ensemble_<metric> with <metric> there).
    """

    trial_id: str
    policy: str
    schedule: ScheduleSpec
    seed: int
    metric_values: Sequence[float]
    final_metric: float | None = None
    is_confirmation: bool = False
    status: str = "completed"
    optimizer: OptimizerSpec | None = None
    final_values: Mapping[str, float] = field(default_factory=dict)

    @property
    def final(self) -> float:
        if self.final_metric is not None:
            return self.final_metric
        return self.metric_values[-1] if self.metric_values else math.nan


class TrialFacts(Protocol):
    """What the evidence is selected from of a trial: a `Trial`, or a row of the trials table
    with these columns (a job read ranks its trials without building whole `Trial`s)."""

    @property
    def id(self) -> int: ...
    @property
    def policy(self) -> str: ...
    @property
    def schedule(self) -> dict[str, Any]: ...
    @property
    def search_config(self) -> dict[str, Any]: ...
    @property
    def seed(self) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def status(self) -> str: ...


@dataclass(frozen=True)
class RecommendationInputs:
    """What a job's recommendation is computed from: the job, its trials, and per trial the
    job's metric after each epoch (NaN where an epoch lacks it) and every value of its last
    epoch by name (`final_values`). The store reads them; only the last value of
    `metric_values` matters to the ranking (and so to `leader`)."""

    job: Job
    trials: Sequence[TrialFacts]
    metric_values: Mapping[int, Sequence[float]]
    steps_per_epoch: int | None
    final_values: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class Evidence:
    """The trials a recommendation ranks, and the horizon they trained: None for the budget,
    else (horizon_halving, before any trial has trained the budget) the longest rung reached."""

    trials: list[TrialSummary]
    horizon_epochs: int | None = None


def trial_summaries(inputs: RecommendationInputs) -> list[TrialSummary]:
    """The counted full-length trials as the recommendation sees them (a horizon_halving
    rung shorter than the budget is no evidence of how a schedule ends).

    A policy whose top configurations have been confirmed is judged on its confirmation trials
    only: the search trial that put a configuration on top was selected for being lucky as much
    as good, and fresh seeds are not. A diverged trial counts as the worst possible value.
    Each trial trained with its policy's arm's optimizer (else the job's).
    """
    budget = inputs.job.spec.budget.epochs
    counted = [
        t
        for t in inputs.trials
        if t.status in COUNTED_TRIAL_STATUSES and _horizon(t, budget=budget) == budget
    ]
    confirmed = {t.policy for t in counted if t.phase == "confirm"}
    return [
        _summary(trial, inputs)
        for trial in counted
        if trial.policy not in confirmed or trial.phase == "confirm"
    ]


def select_evidence(inputs: RecommendationInputs) -> Evidence:
    """The full-length trials (`trial_summaries`); with horizon_halving, until one has ended,
    the trials of the longest rung reached, so that the live leader is the best of those."""
    summaries = trial_summaries(inputs)
    if summaries or inputs.job.spec.horizon_ladder is None:
        return Evidence(summaries)
    budget = inputs.job.spec.budget.epochs
    by_horizon: dict[int, list[TrialFacts]] = {}
    for trial in inputs.trials:
        if trial.status in COUNTED_TRIAL_STATUSES and "rung" in trial.search_config:
            by_horizon.setdefault(_horizon(trial, budget=budget), []).append(trial)
    if not by_horizon:
        return Evidence([])
    longest = max(by_horizon)
    return Evidence([_summary(trial, inputs) for trial in by_horizon[longest]], longest)


def _horizon(trial: TrialFacts, *, budget: int) -> int:
    """The epochs a trial trains: a horizon_halving rung's horizon, else the budget."""
    if "rung" in trial.search_config:
        return int(trial.search_config["horizon_epochs"])
    return budget


def _summary(trial: TrialFacts, inputs: RecommendationInputs) -> TrialSummary:
    return TrialSummary(
        trial_id=str(trial.id),
        policy=trial.policy,
        schedule=parse_schedule(trial.schedule),
        seed=trial.seed,
        metric_values=inputs.metric_values.get(trial.id, []),
        final_metric=math.nan if trial.status == "diverged" else None,
        is_confirmation=trial.phase == "confirm",
        status=trial.status,
        optimizer=inputs.job.spec.optimizer_for(trial.policy),
        final_values=inputs.final_values.get(trial.id, {}),
    )


def leader(inputs: RecommendationInputs) -> BestSoFar | None:
    """The recommendation's winner alone, by the value it ranks on (the mean final metric of
    the configuration's seeds), without its statistics or code: the job's "best so far".
    None while there is no evidence, or when the leader's mean is not finite (every
    configuration has a diverged seed, which counts as the worst value: none is worth calling
    best)."""
    evidence = select_evidence(inputs)
    spec = inputs.job.spec
    mode = spec.metric_mode
    # The same ranking build_recommendation's winner comes from.
    configs = _ranked(_configs(evidence.trials, optimizer=spec.optimizer), mode)
    if not configs:
        return None
    top = configs[0]
    mean = _mean(top, mode)
    if not math.isfinite(mean):
        return None
    values = _values(top, mode)
    # The seed to link to: the configuration's best final value (the first on a tie).
    pick = max(range(len(values)), key=lambda i: values[i] if mode == "max" else -values[i])
    return BestSoFar(
        trial_id=int(top.trials[pick].trial_id),
        policy=top.policy,
        value=mean,
        std=_std(values),
        n_seeds=len(values),
        horizon_epochs=evidence.horizon_epochs,
    )


@dataclass(frozen=True)
class _Config:
    """One configuration (a schedule with an optimizer) and the trials (seeds) that ran it."""

    policy: str
    schedule: ScheduleSpec
    optimizer: OptimizerSpec | None
    trials: tuple[TrialSummary, ...]


def select_for_confirmation(
    trials: Sequence[TrialSummary], *, top_k: int, mode: Mode
) -> dict[str, list[ScheduleSpec]]:
    """Each policy's `top_k` configurations by mean final metric, best first.

    These are the configurations to rerun with `confirm.seeds` fresh seeds. Failed, pruned and
    unfinished trials are left out; a diverged one ranks last.
    """
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    chosen: dict[str, list[ScheduleSpec]] = {}
    for config in _ranked(_configs(trials), mode):
        picks = chosen.setdefault(config.policy, [])
        if len(picks) < top_k:
            picks.append(config.schedule)
    return chosen


def build_recommendation(
    *,
    job_id: str,
    trials: Sequence[TrialSummary],
    metric: str,
    mode: Mode,
    final: bool,
    param_groups: Sequence[ParamGroupRule] | None = None,
    training_steps: int | None = None,
    optimizer: OptimizerSpec | None = None,
    snapshots: int | None = None,
) -> Recommendation:
    """The winner, the best configuration of each policy, how sure we are, and the export.

    Configurations (identical schedule specs and optimizers: a trial's own, else `optimizer`,
    the job's) are scored on the mean of their counted trials' final metric; the winner has the
    best mean (mode decides the sense; ties go to the smaller spread, then more seeds). The
    comparison is a Welch t-interval on the winner's mean minus the best other policy's.
    `param_groups`, `training_steps` (the job's optimizer steps) and each configuration's
    optimizer (a schedule-free one is built in the PyTorch code) shape the exported code
    (PyTorch, Keras, Hugging Face), each with whether it is exact: each policy's best
    configuration carries its code, and the recommendation's is the winner's.
    With `snapshots` (the job's), the winner's snapshot ensemble is compared with its single
    model, and the PyTorch code shows how to collect the snapshots.
    With `final` false this is the best so far.
    """
    configs = _ranked(_configs(trials, optimizer=optimizer), mode)
    best_by_policy: dict[str, _Config] = {}
    for config in configs:
        best_by_policy.setdefault(config.policy, config)
    ranked_best = list(best_by_policy.values())

    baseline = _mean(best_by_policy["fixed"], mode) if "fixed" in best_by_policy else None
    evidence = [
        _evidence(
            config,
            mode=mode,
            baseline=baseline,
            snippets=_exports(
                config,
                param_groups=param_groups,
                training_steps=training_steps,
                metric=metric,
                snapshots=snapshots,
            ),
        )
        for config in ranked_best
    ]
    winner = evidence[0] if evidence else None
    comparison = (
        _compare(ranked_best[0], ranked_best[1], mode=mode) if len(ranked_best) > 1 else None
    )
    ensemble = (
        _ensemble_against_single(ranked_best[0], metric=metric, mode=mode, snapshots=snapshots)
        if snapshots is not None and ranked_best
        else None
    )
    rationale = _rationale(
        evidence=evidence,
        comparison=comparison,
        metric=metric,
        final=final,
        baseline=baseline,
        counted=sum(len(c.trials) for c in configs),
        labels=_labels(evidence),
    )
    if ensemble is not None:
        rationale += " " + _ensemble_text(ensemble)
    return Recommendation(
        job_id=job_id,
        final=final,
        metric=metric,
        mode=mode,
        winner=winner,
        by_policy=evidence,
        comparison=comparison,
        snapshot_ensemble=ensemble,
        rationale=rationale,
        code=dict(winner.code) if winner is not None else {},
        exact=dict(winner.exact) if winner is not None else {},
    )


def _exports(
    config: _Config,
    *,
    param_groups: Sequence[ParamGroupRule] | None,
    training_steps: int | None,
    metric: str,
    snapshots: int | None = None,
) -> dict[str, Snippet]:
    """The configuration as code in every format, with the optimizer it trained with."""
    return export_snippets(
        config.schedule,
        param_groups=param_groups,
        training_steps=training_steps,
        optimizer=config.optimizer,
        metric=metric,
        snapshots=snapshots,
    )


# --- statistics -------------------------------------------------------------------------------


def _configs(
    trials: Sequence[TrialSummary], *, optimizer: OptimizerSpec | None = None
) -> list[_Config]:
    grouped: dict[tuple[str, str], list[TrialSummary]] = {}
    trained_with: dict[tuple[str, str], OptimizerSpec | None] = {}
    for trial in trials:
        if trial.status not in COUNTED_TRIAL_STATUSES:
            continue
        # The spec's JSON (policy included) and the optimizer's are the configuration's
        # identity; seeds vary.
        used = trial.optimizer or optimizer
        key = (trial.schedule.model_dump_json(), used.model_dump_json() if used else "")
        grouped.setdefault(key, []).append(trial)
        trained_with[key] = used
    return [
        _Config(
            policy=group[0].policy,
            schedule=group[0].schedule,
            optimizer=trained_with[key],
            trials=tuple(group),
        )
        for key, group in grouped.items()
    ]


def _worst(mode: Mode) -> float:
    return -math.inf if mode == "max" else math.inf


def _score(value: float, mode: Mode) -> float:
    """The value with NaN and the wrong-signed infinity counted as the worst possible."""
    if math.isnan(value) or (math.isinf(value) and (value > 0) == (mode == "min")):
        return _worst(mode)
    return value


def _values(config: _Config, mode: Mode) -> list[float]:
    return [_score(trial.final, mode) for trial in config.trials]


def _mean(config: _Config, mode: Mode) -> float:
    values = _values(config, mode)
    if any(math.isinf(v) for v in values):
        return _worst(mode)
    return math.fsum(values) / len(values)


def _std(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n - 1); None for a single value, NaN when one is infinite."""
    if len(values) < 2:
        return None
    if not all(math.isfinite(v) for v in values):
        return math.nan
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _ranked(configs: list[_Config], mode: Mode) -> list[_Config]:
    def key(config: _Config) -> tuple[float, float, int]:
        mean = _mean(config, mode)
        spread = _std(_values(config, mode))
        better_first = -mean if mode == "max" else mean
        spread_key = spread if spread is not None and math.isfinite(spread) else math.inf
        return (better_first, spread_key, -len(config.trials))

    return sorted(configs, key=key)


def _mean_curve(config: _Config, mode: Mode) -> list[float]:
    # Epoch by epoch over the seeds that reached that epoch (a diverged seed stops early).
    curves = [[_score(v, mode) for v in trial.metric_values] for trial in config.trials]
    length = max((len(c) for c in curves), default=0)
    mean: list[float] = []
    for epoch in range(length):
        column = [c[epoch] for c in curves if len(c) > epoch]
        mean.append(
            _worst(mode) if any(math.isinf(v) for v in column) else math.fsum(column) / len(column)
        )
    return mean


def _evidence(
    config: _Config, *, mode: Mode, baseline: float | None, snippets: dict[str, Snippet]
) -> PolicyEvidence:
    values = _values(config, mode)
    curve = _mean_curve(config, mode)
    epochs_to_baseline: int | None = None
    if baseline is not None and math.isfinite(baseline):
        for epoch, value in enumerate(curve, start=1):
            if (value >= baseline) if mode == "max" else (value <= baseline):
                epochs_to_baseline = epoch
                break
    # Area under the mean learning curve with one unit per epoch, divided by the epochs: the
    # curve's average, comparable across budgets. It rewards reaching a good value early.
    auc = None
    if curve:
        auc = _worst(mode) if any(math.isinf(v) for v in curve) else math.fsum(curve) / len(curve)
    return PolicyEvidence(
        policy=config.policy,
        schedule=config.schedule,
        optimizer=config.optimizer,
        metric_mean=_mean(config, mode),
        metric_std=_std(values),
        n_seeds=len(values),
        trial_ids=[trial.trial_id for trial in config.trials],
        epochs_to_baseline=epochs_to_baseline,
        auc=auc,
        code={name: snippet.code for name, snippet in snippets.items()},
        exact={name: snippet.exact for name, snippet in snippets.items()},
    )


def _compare(best: _Config, other: _Config, *, mode: Mode) -> Comparison:
    first, second = _values(best, mode), _values(other, mode)
    mean_1, mean_2 = _mean(best, mode), _mean(other, mode)
    sign = 1.0 if mode == "max" else -1.0
    if not (math.isfinite(mean_1) and math.isfinite(mean_2)):
        difference = math.inf if math.isfinite(mean_1) else math.nan
        return Comparison(
            winner=best.policy,
            runner_up=other.policy,
            difference=difference,
            confidence=CONFIDENCE,
            method="no interval: a diverged trial counts as the worst value, so the difference "
            "is not a finite number",
        )
    difference = sign * (mean_1 - mean_2)
    n_1, n_2 = len(first), len(second)
    if n_1 < 2 or n_2 < 2:
        lonely = best.policy if n_1 < 2 else other.policy
        return Comparison(
            winner=best.policy,
            runner_up=other.policy,
            difference=difference,
            confidence=CONFIDENCE,
            method=f"no interval: {lonely} ran with one seed only, so there is no spread estimate",
        )
    var_1 = (_std(first) or 0.0) ** 2 / n_1
    var_2 = (_std(second) or 0.0) ** 2 / n_2
    if var_1 + var_2 == 0.0:
        return Comparison(
            winner=best.policy,
            runner_up=other.policy,
            difference=difference,
            ci_low=difference,
            ci_high=difference,
            confidence=CONFIDENCE,
            method="every seed gave the same value, so the interval is a single point",
        )
    half_width, dof = _welch_half_width(var_1, var_2, n_1, n_2)
    return Comparison(
        winner=best.policy,
        runner_up=other.policy,
        difference=difference,
        ci_low=difference - half_width,
        ci_high=difference + half_width,
        confidence=CONFIDENCE,
        method=f"Welch t-interval on the difference of means ({dof:.1f} degrees of freedom)",
    )


def _welch_half_width(var_1: float, var_2: float, n_1: int, n_2: int) -> tuple[float, float]:
    """Half the width of the CONFIDENCE Welch t-interval on a difference of two means, whose
    squared standard errors are `var_1` and `var_2` (not both 0), with its degrees of freedom."""
    standard_error = math.sqrt(var_1 + var_2)
    # Welch-Satterthwaite degrees of freedom: the two spreads need not be equal.
    dof = (var_1 + var_2) ** 2 / (var_1**2 / (n_1 - 1) + var_2**2 / (n_2 - 1))
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, dof)) * standard_error, dof


def _ensemble_against_single(
    config: _Config, *, metric: str, mode: Mode, snapshots: int
) -> SnapshotEnsemble:
    """The configuration's ensemble_<metric> against its <metric>, each a mean over its seeds'
    last epochs, with a Welch interval on the difference (the same seeds give both, so a
    paired interval would be narrower; Welch is the conservative one). A trial that diverged,
    or ended before its first cycle did (no ensemble), counts as the worst value."""
    single_metric = single_model_metric(metric)
    ensemble_metric = f"{ENSEMBLE_PREFIX}{single_metric}"

    def finals(name: str) -> list[float]:
        return [
            _score(
                math.nan if trial.status == "diverged" else trial.final_values.get(name, math.nan),
                mode,
            )
            for trial in config.trials
        ]

    single, ensemble = finals(single_metric), finals(ensemble_metric)
    n = len(single)
    single_mean, ensemble_mean = math.fsum(single) / n, math.fsum(ensemble) / n
    sign = 1.0 if mode == "max" else -1.0
    found = SnapshotEnsemble(
        snapshots=snapshots,
        single_metric=single_metric,
        ensemble_metric=ensemble_metric,
        single_mean=single_mean,
        ensemble_mean=ensemble_mean,
        n_seeds=n,
        difference=math.nan,
        confidence=CONFIDENCE,
        method="",
    )
    if not (math.isfinite(single_mean) and math.isfinite(ensemble_mean)):
        return found.model_copy(
            update={
                "method": "no interval: a trial diverged or ended before its first cycle did "
                "(no ensemble), which counts as the worst value"
            }
        )
    difference = sign * (ensemble_mean - single_mean)
    if n < 2:
        return found.model_copy(
            update={
                "difference": difference,
                "method": "no interval: the winner ran with one seed only, so there is no "
                "spread estimate",
            }
        )
    var_single = (_std(single) or 0.0) ** 2 / n
    var_ensemble = (_std(ensemble) or 0.0) ** 2 / n
    if var_single + var_ensemble == 0.0:
        return found.model_copy(
            update={
                "difference": difference,
                "ci_low": difference,
                "ci_high": difference,
                "method": "every seed gave the same values, so the interval is a single point",
            }
        )
    half_width, dof = _welch_half_width(var_ensemble, var_single, n, n)
    return found.model_copy(
        update={
            "difference": difference,
            "ci_low": difference - half_width,
            "ci_high": difference + half_width,
            "method": f"Welch t-interval on the difference of means ({dof:.1f} degrees of freedom)",
        }
    )


# --- rationale --------------------------------------------------------------------------------


def _labels(evidence: list[PolicyEvidence]) -> dict[str, str]:
    """Each policy as the rationale names it: with its optimizer when the policies' optimizers
    differ (a schedule-free fixed arm among scheduled ones), else the policy alone."""
    trained_with = {e.optimizer.model_dump_json() if e.optimizer else "" for e in evidence}
    if len(trained_with) < 2:
        return {e.policy: e.policy for e in evidence}
    return {
        e.policy: f"{e.policy} ({e.optimizer.name})" if e.optimizer else e.policy for e in evidence
    }


def _is_share(metric: str) -> bool:
    return metric.endswith("accuracy")


def _value_text(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "diverged"
    return f"{100 * value:.1f}%" if _is_share(metric) else f"{value:.4g}"


def _difference_text(value: float, metric: str) -> str:
    # Accuracy differences read best in percentage points ("0.8 points"), others as numbers.
    return f"{100 * value:.1f} points" if _is_share(metric) else f"{value:.3g}"


def _ensemble_text(ensemble: SnapshotEnsemble) -> str:
    """One or two sentences: whether the winner's snapshot ensemble beats its single model."""
    single, name = ensemble.single_metric, ensemble.ensemble_metric
    seeds = "1 seed" if ensemble.n_seeds == 1 else f"{ensemble.n_seeds} seeds"
    values = (
        f"{name} {_value_text(ensemble.ensemble_mean, single)} against {single} "
        f"{_value_text(ensemble.single_mean, single)} over {seeds}"
    )
    head = f"Its snapshot ensemble (the last {ensemble.snapshots} cycle ends' weights)"
    if not math.isfinite(ensemble.difference):
        return f"{head}: {values}; {ensemble.method}."
    by = _difference_text(abs(ensemble.difference), single)
    if ensemble.difference > 0:
        sentence = f"{head} beats the single final model ({values}) by {by}"
    else:
        sentence = f"{head} does not beat the single final model ({values}): it is {by} worse"
    if ensemble.ci_low is None or ensemble.ci_high is None:
        return f"{sentence}; {ensemble.method}."
    low = _difference_text(ensemble.ci_low, single).removesuffix(" points")
    high = _difference_text(ensemble.ci_high, single)
    interval = f"{100 * ensemble.confidence:.0f}% CI of ensemble minus single {low} to {high}"
    if ensemble.ci_low > 0:
        verdict = "the interval excludes 0: the ensemble is better."
    elif ensemble.ci_high < 0:
        verdict = "the interval excludes 0: the single model is better."
    else:
        verdict = "the interval includes 0: with these seeds the two cannot be told apart."
    return f"{sentence}, {interval}; {verdict}"


def _rationale(
    *,
    evidence: list[PolicyEvidence],
    comparison: Comparison | None,
    metric: str,
    final: bool,
    baseline: float | None,
    counted: int,
    labels: dict[str, str],
) -> str:
    if not evidence:
        return (
            "No trial has finished yet, so there is nothing to recommend."
            if not final
            else "No trial finished (all failed or were pruned), so there is nothing to recommend."
        )
    winner = evidence[0]
    spread = (
        f" ± {_difference_text(winner.metric_std, metric)}"
        if winner.metric_std is not None and math.isfinite(winner.metric_std)
        else ""
    )
    seeds = "1 seed" if winner.n_seeds == 1 else f"{winner.n_seeds} seeds"
    parts = [
        ("Best so far (the job is still running): " if not final else "")
        + f"{labels[winner.policy]} has the best mean {metric}, "
        + f"{_value_text(winner.metric_mean, metric)}{spread} over {seeds}."
    ]
    if comparison is None:
        parts.append(f"It is the only policy with finished trials ({counted} counted).")
    else:
        runner = next(e for e in evidence if e.policy == comparison.runner_up)
        beat = (
            f"{labels[comparison.winner]} beats {labels[comparison.runner_up]} "
            f"({_value_text(runner.metric_mean, metric)}) by "
            f"{_difference_text(comparison.difference, metric)}"
        )
        if comparison.ci_low is not None and comparison.ci_high is not None:
            counts = (
                f"{winner.n_seeds} seeds each"
                if winner.n_seeds == runner.n_seeds
                else f"{winner.n_seeds} and {runner.n_seeds} seeds"
            )
            low = _difference_text(comparison.ci_low, metric).removesuffix(" points")
            high = _difference_text(comparison.ci_high, metric)
            parts.append(
                f"{beat}, {100 * comparison.confidence:.0f}% CI {low} to {high}, over {counts}."
            )
            if comparison.ci_low > 0:
                parts.append("The interval excludes 0: the difference is unlikely to be noise.")
            else:
                parts.append(
                    "The interval includes 0: with these seeds the two cannot be told apart."
                )
        else:
            parts.append(f"{beat}; {comparison.method}.")
    if baseline is not None and math.isfinite(baseline):
        reached = winner.epochs_to_baseline
        fixed = next(e for e in evidence if e.policy == "fixed")
        baseline_text = _value_text(baseline, metric)
        fixed_rate = f"the best {labels['fixed']} rate"
        if winner.policy == "fixed":
            pass
        elif reached is None:
            parts.append(
                f"Its mean curve never reached {fixed_rate}'s final {metric} ({baseline_text})."
            )
        else:
            parts.append(
                f"It reached {fixed_rate}'s final {metric} ({baseline_text}) after "
                f"{reached} epoch{'s' if reached != 1 else ''}"
                + (
                    f"; the fixed rate needed {fixed.epochs_to_baseline}."
                    if fixed.epochs_to_baseline is not None
                    else "."
                )
            )
    return " ".join(parts)
