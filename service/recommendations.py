"""A job's recommendation from the store's inputs: computed live while the job runs, stored by
the worker once the job has succeeded (`publish_recommendation`), read back from then on.

The statistics live in `lrtune.workers.recommendation` (pure Python and scipy, no torch or Ray).
"""

from __future__ import annotations

import math

from lrtune.schemas.jobs import COUNTED_TRIAL_STATUSES
from lrtune.schemas.recommendations import Recommendation
from lrtune.schemas.schedules import parse_schedule
from lrtune.service.errors import NotFoundError
from lrtune.service.store import RecommendationInputs, Store
from lrtune.workers.recommendation import TrialSummary, build_recommendation

# Trials whose final metric is evidence (see lrtune.workers.recommendation).


def trial_summaries(inputs: RecommendationInputs) -> list[TrialSummary]:
    """The counted trials as the recommendation sees them.

    A policy whose top configurations have been confirmed is judged on its confirmation trials
    only: the search trial that put a configuration on top was selected for being lucky as much
    as good, and fresh seeds are not. A diverged trial counts as the worst possible value.
    Each trial trained with its policy's arm's optimizer (else the job's).
    """
    spec = inputs.job.spec
    counted = [t for t in inputs.trials if t.status in COUNTED_TRIAL_STATUSES]
    confirmed = {t.policy for t in counted if t.phase == "confirm"}
    summaries = []
    for trial in counted:
        if trial.policy in confirmed and trial.phase != "confirm":
            continue
        summaries.append(
            TrialSummary(
                trial_id=str(trial.id),
                policy=trial.policy,
                schedule=parse_schedule(trial.schedule),
                seed=trial.seed,
                metric_values=inputs.metric_values.get(trial.id, []),
                final_metric=math.nan if trial.status == "diverged" else None,
                is_confirmation=trial.phase == "confirm",
                status=trial.status,
                optimizer=spec.optimizer_for(trial.policy),
                final_values=inputs.final_values.get(trial.id, {}),
            )
        )
    return summaries


def compute_recommendation(inputs: RecommendationInputs) -> Recommendation | None:
    """The recommendation from the trials so far (final once the job succeeded); None while
    no trial has finished its budget."""
    summaries = trial_summaries(inputs)
    if not summaries:
        return None
    spec = inputs.job.spec
    steps = inputs.steps_per_epoch
    return build_recommendation(
        job_id=str(inputs.job.id),
        trials=summaries,
        metric=spec.metric_name,
        mode=spec.metric_mode,
        final=inputs.job.status == "succeeded",
        param_groups=spec.param_groups,
        training_steps=spec.budget.epochs * steps if steps is not None else None,
        optimizer=spec.optimizer,
        snapshots=spec.snapshots,
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
