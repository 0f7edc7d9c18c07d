"""A job's recommendation from the store's inputs: computed live while the job runs, stored by
the worker once the job has succeeded (`publish_recommendation`), read back from then on.

The statistics live in `lrtune.workers.recommendation` (pure Python and scipy, no torch or Ray).
"""

from __future__ import annotations

import math

from lrtune.schemas.jobs import COUNTED_TRIAL_STATUSES, Trial
from lrtune.schemas.recommendations import Recommendation
from lrtune.schemas.schedules import parse_schedule
from lrtune.service.errors import NotFoundError
from lrtune.service.store import RecommendationInputs, Store
from lrtune.workers.recommendation import TrialSummary, build_recommendation

# Trials whose final metric is evidence (see lrtune.workers.recommendation).


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


def _horizon(trial: Trial, *, budget: int) -> int:
    """The epochs a trial trains: a horizon_halving rung's horizon, else the budget."""
    if "rung" in trial.search_config:
        return int(trial.search_config["horizon_epochs"])
    return budget


def _summary(trial: Trial, inputs: RecommendationInputs) -> TrialSummary:
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


def _rung_leaders(inputs: RecommendationInputs) -> tuple[int, list[TrialSummary]] | None:
    """A horizon_halving job before any trial has trained its budget: the longest horizon
    reached and the counted trials that trained it (None when no rung trial has ended)."""
    budget = inputs.job.spec.budget.epochs
    by_horizon: dict[int, list[Trial]] = {}
    for trial in inputs.trials:
        if trial.status in COUNTED_TRIAL_STATUSES and "rung" in trial.search_config:
            by_horizon.setdefault(_horizon(trial, budget=budget), []).append(trial)
    if not by_horizon:
        return None
    longest = max(by_horizon)
    return longest, [_summary(trial, inputs) for trial in by_horizon[longest]]


def compute_recommendation(inputs: RecommendationInputs) -> Recommendation | None:
    """The recommendation from the trials so far (final once the job succeeded); None while
    no trial has finished its budget. With horizon_halving, until one has, the live leader
    is the best of the longest rung reached, labelled with its horizon."""
    spec = inputs.job.spec
    summaries = trial_summaries(inputs)
    epochs, horizon = spec.budget.epochs, None
    if not summaries and spec.horizon_ladder is not None:
        leaders = _rung_leaders(inputs)
        if leaders is not None:
            epochs, summaries = leaders
            horizon = epochs
    if not summaries:
        return None
    steps = inputs.steps_per_epoch
    found = build_recommendation(
        job_id=str(inputs.job.id),
        trials=summaries,
        metric=spec.metric_name,
        mode=spec.metric_mode,
        final=inputs.job.status == "succeeded",
        param_groups=spec.param_groups,
        training_steps=epochs * steps if steps is not None else None,
        optimizer=spec.optimizer,
        snapshots=spec.snapshots,
    )
    if horizon is None:
        return found
    return found.model_copy(
        update={
            "horizon_epochs": horizon,
            "rationale": f"Best so far at the {horizon}-epoch rung of the horizon ladder (no "
            f"trial has trained all {spec.budget.epochs} epochs yet): {found.rationale}",
        }
    )


def job_recommendation(store: Store, *, job_id: int, tenant_id: int | None) -> Recommendation:
    """The stored final recommendation, else one computed now; NotFoundError without a
    finished trial."""
    saved = store.get_saved_recommendation(job_id, tenant_id=tenant_id)
    if saved is not None and saved.final:
        return saved
    inputs = store.recommendation_inputs(job_id, tenant_id=tenant_id)
    found = compute_recommendation(inputs)
    if found is None:
        job = inputs.job
        if job.spec.kind != "search":
            raise NotFoundError(
                f"job {job_id} is a {job.spec.kind} job: it has a range test, not a "
                "recommendation (GET /v1/jobs/{id}/range-test)"
            )
        raise NotFoundError(
            f"job {job_id} has no recommendation yet: no trial has finished its budget "
            f"(job status {job.status}); it appears once one has"
        )
    return found


def publish_recommendation(store: Store, *, job_id: int) -> Recommendation | None:
    """Compute the job's recommendation and store it (the worker calls this on success)."""
    found = compute_recommendation(store.recommendation_inputs(job_id))
    if found is not None:
        store.save_recommendation(job_id=job_id, recommendation=found)
    return found
