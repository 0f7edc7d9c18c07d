"""A job's recommendation from the store's inputs: computed live while the job runs, stored by
the worker once the job has succeeded (`publish_recommendation`), read back from then on.

The statistics live in `lrtune.workers.recommendation` (pure Python and scipy, no torch or Ray).
"""

from __future__ import annotations

from lrtune.schemas.recommendations import Recommendation
from lrtune.service.errors import NotFoundError
from lrtune.service.store import Store
from lrtune.workers.recommendation import (
    RecommendationInputs,
    build_recommendation,
    select_evidence,
)


def compute_recommendation(inputs: RecommendationInputs) -> Recommendation | None:
    """The recommendation from the trials so far (final once the job succeeded); None while
    no trial has finished its budget. With horizon_halving, until one has, the live leader
    is the best of the longest rung reached, labelled with its horizon."""
    spec = inputs.job.spec
    evidence = select_evidence(inputs)
    if not evidence.trials:
        return None
    horizon = evidence.horizon_epochs
    epochs = spec.budget.epochs if horizon is None else horizon
    steps = inputs.steps_per_epoch
    found = build_recommendation(
        job_id=str(inputs.job.id),
        trials=evidence.trials,
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
