"""Conversions between the ORM rows of `service/models.py` and the schema objects of `schemas/`,
both ways: the store returns these, never rows."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, TypeVar

from lrtune.schemas.dashboard import TrialCurve
from lrtune.schemas.jobs import (
    Job,
    JobPhase,
    JobProgress,
    JobSpec,
    Trial,
    TrialErrorCount,
    TrialMetric,
    TrialProbe,
    TrialTiming,
)
from lrtune.schemas.tenants import ApiToken, Tenant, TenantLimits, TokenRef
from lrtune.service.codecs import decode_floats, encode_floats, join_float, split_float, utc
from lrtune.service.models import (
    ApiTokenRow,
    JobPhaseRow,
    JobRow,
    TenantRow,
    TrialMetricRow,
    TrialProbeRow,
    TrialRow,
)
from sqlalchemy import Row

E = TypeVar("E")


def tenant_from_row(row: TenantRow) -> Tenant:
    return Tenant(
        id=row.id,
        name=row.name,
        limits=TenantLimits(
            max_concurrent_jobs=row.max_concurrent_jobs,
            max_trials_per_job=row.max_trials_per_job,
            max_epochs=row.max_epochs,
        ),
    )


def api_token_from_row(row: ApiTokenRow, tenant: str) -> ApiToken:
    created = utc(row.created_at)
    assert created is not None
    return ApiToken(
        id=row.id,
        tenant=tenant,
        label=row.label,
        scope=row.scope,
        created_at=created,
        revoked_at=utc(row.revoked_at),
        last_used_at=utc(row.last_used_at),
    )


def job_from_row(
    row: JobRow,
    counts: dict[str, int],
    trial_errors: list[TrialErrorCount],
    tokens: dict[int, TokenRef],
) -> Job:
    """The job as its row and counts say; `tokens`: the submitting and cancelling tokens of
    the job, by id. Its best so far comes from its trials (`Store._with_leaders`)."""
    created = utc(row.created_at)
    assert created is not None
    return Job(
        id=row.id,
        name=row.name,
        kind=row.kind,
        status=row.status,
        created_at=created,
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
        spec=JobSpec.model_validate(row.spec),
        progress=JobProgress(planned=row.planned_trials, **counts),
        error=row.error,
        trial_errors=trial_errors,
        notes=list(row.notes or []),
        search_spaces=row.search_spaces,
        submitted_by=_token_ref(row.submitted_by_token_id, tokens),
        cancelled_by=_token_ref(row.cancelled_by_token_id, tokens),
    )


def _token_ref(token_id: int | None, tokens: dict[int, TokenRef]) -> TokenRef | None:
    return None if token_id is None else tokens[token_id]


def trial_from_row(row: TrialRow | Row[Any]) -> Trial:
    """A trial from its ORM row or from a plain row of the trials table."""
    created = utc(row.created_at)
    assert created is not None
    return Trial(
        id=row.id,
        job_id=row.job_id,
        policy=row.policy,
        schedule=row.schedule,
        search_config=decode_floats(row.search_config),
        seed=row.seed,
        phase=row.phase,
        status=row.status,
        epochs_done=row.epochs_done,
        last_metric=join_float(row.last_metric, row.last_metric_kind),
        best_metric=row.best_metric,
        error=row.error,
        ray_trial_id=row.ray_trial_id,
        node_id=row.node_id,
        restored_from_epoch=row.restored_from_epoch,
        created_at=created,
        started_at=utc(row.started_at),
        finished_at=utc(row.finished_at),
    )


def metric_row_values(trial_id: int, result: TrialMetric) -> dict[str, Any]:
    lr, lr_kind = split_float(result.lr)
    train_loss, train_loss_kind = split_float(result.train_loss)
    val_loss, val_loss_kind = split_float(result.val_loss)
    return {
        "trial_id": trial_id,
        "epoch": result.epoch,
        "step": result.step,
        "lr": lr,
        "lr_kind": lr_kind,
        "train_loss": train_loss,
        "train_loss_kind": train_loss_kind,
        "val_loss": val_loss,
        "val_loss_kind": val_loss_kind,
        "metrics": encode_floats(result.metrics),
        "elapsed_s": result.elapsed_s,
    }


def trial_metric_from_row(row: TrialMetricRow) -> TrialMetric:
    lr = join_float(row.lr, row.lr_kind)
    return TrialMetric(
        epoch=row.epoch,
        step=row.step,
        lr=lr if lr is not None else math.nan,
        train_loss=join_float(row.train_loss, row.train_loss_kind),
        val_loss=join_float(row.val_loss, row.val_loss_kind),
        metrics=decode_floats(row.metrics),
        elapsed_s=row.elapsed_s,
    )


def probe_row_values(trial_id: int, probe: TrialProbe) -> dict[str, Any]:
    train_loss, train_loss_kind = split_float(probe.train_loss)
    val_loss, val_loss_kind = split_float(probe.val_loss)
    return {
        "trial_id": trial_id,
        "epoch": probe.epoch,
        "step": probe.step,
        "cooldown_steps": probe.cooldown_steps,
        "train_loss": train_loss,
        "train_loss_kind": train_loss_kind,
        "val_loss": val_loss,
        "val_loss_kind": val_loss_kind,
        "metrics": encode_floats(probe.metrics),
        "elapsed_s": probe.elapsed_s,
        "decision": probe.decision,
    }


def trial_probe_from_row(row: TrialProbeRow) -> TrialProbe:
    return TrialProbe.model_validate(
        {
            "epoch": row.epoch,
            "step": row.step,
            "cooldown_steps": row.cooldown_steps,
            "train_loss": join_float(row.train_loss, row.train_loss_kind),
            "val_loss": join_float(row.val_loss, row.val_loss_kind),
            "metrics": decode_floats(row.metrics),
            "elapsed_s": row.elapsed_s,
            "decision": row.decision,
        }
    )


def seconds_between(start: datetime, end: datetime) -> float:
    """Seconds from `start` to `end`; never negative (two processes' clocks may disagree by
    a hair)."""
    return max(0.0, (end - start).total_seconds())


def job_phase_from_row(row: JobPhaseRow, now: datetime) -> JobPhase:
    started = utc(row.started_at)
    ended = utc(row.ended_at)
    assert started is not None
    return JobPhase(
        phase=row.phase,
        started_at=started,
        ended_at=ended,
        seconds=seconds_between(started, ended or now),
        worker_id=row.worker_id,
    )


def trial_timing_from_row(row: TrialRow, first_epoch_s: float, busy_s: float) -> TrialTiming:
    started = utc(row.started_at) or utc(row.created_at)
    finished = utc(row.finished_at)
    wall = seconds_between(started, finished) if started and finished else None
    return TrialTiming(
        trial_id=row.id,
        policy=row.policy,
        phase=row.phase,
        status=row.status,
        epochs_done=row.epochs_done,
        started_at=started,
        wall_s=wall,
        busy_s=busy_s,
        first_epoch_s=first_epoch_s,
        start_up_s=max(0.0, wall - busy_s) if wall is not None else None,
    )


def trial_curve(
    row: TrialRow, epochs: list[TrialMetricRow], *, metric: str, max_points: int
) -> TrialCurve:
    """A trial's learning curve from its epochs in order, thinned to `max_points` of them."""
    kept = [trial_metric_from_row(e) for e in thin(epochs, max_points)]
    return TrialCurve(
        trial_id=row.id,
        policy=row.policy,
        status=row.status,
        best_metric=row.best_metric,
        schedule=row.schedule,
        steps=epochs[-1].step if epochs else 0,
        epoch=[e.epoch for e in kept],
        metric=[e.value(metric) for e in kept],
        train_loss=[e.train_loss for e in kept],
        val_loss=[e.val_loss for e in kept],
        lr=[e.lr for e in kept],
    )


def thin(epochs: list[E], max_points: int) -> list[E]:
    """At most `max_points` epochs, evenly spaced, always keeping the first and the last."""
    if len(epochs) <= max_points:
        return epochs
    last = len(epochs) - 1
    indices = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
    return [epochs[i] for i in indices]
