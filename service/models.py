"""ORM models of lrtune's tables; only the store uses them, and rows never leave it.

Floats that may be NaN or +-inf (losses and metrics of a diverging trial) are stored as a nullable
float plus a `*_kind` column (see `FloatKind`), because SQLite turns NaN into NULL and JSON has no
literal for any of them; the store converts both ways. JSON columns hold non-finite floats as the
strings "NaN", "Infinity" and "-Infinity".
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Every constraint and index gets a predictable name, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class FloatKind(enum.IntEnum):
    """What a float column's `*_kind` companion says: the value, or which non-finite it was."""

    FINITE = 0  # the value column holds the number (or NULL: no value)
    NAN = 1
    POS_INF = 2
    NEG_INF = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


# The tenant migration 0003 creates first: jobs stored before tenants existed, and every request
# when authentication is off (the embedded single-user mode), belong to it.
DEFAULT_TENANT_ID = 1


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _kind_column() -> Mapped[int]:
    return mapped_column(SmallInteger, nullable=False, default=0, server_default="0")


class TenantRow(Base):
    """Who owns jobs: every token acts for one tenant. A NULL limit means the server's default."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, unique=True)
    max_concurrent_jobs: Mapped[int | None] = mapped_column(Integer)
    max_trials_per_job: Mapped[int | None] = mapped_column(Integer)
    max_epochs: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class ApiTokenRow(Base):
    """A bearer token: only its SHA-256 is stored, so the table cannot be used to log in."""

    __tablename__ = "api_tokens"
    __table_args__ = (CheckConstraint("scope IN ('read', 'submit', 'code')", name="scope"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    label: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    # What the token may do (schemas.tenants.TOKEN_SCOPES); no server default: a row that says
    # nothing must not get every right.
    scope: Mapped[str] = mapped_column(String(8), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def _tenant_column() -> Mapped[int]:
    return mapped_column(
        ForeignKey("tenants.id"), nullable=False, default=DEFAULT_TENANT_ID, server_default="1"
    )


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled')",
            name="status",
        ),
        CheckConstraint("kind IN ('search', 'range_test')", name="kind"),
        CheckConstraint("metric_mode IN ('min', 'max')", name="metric_mode"),
        # GET /v1/jobs?status= pages newest first.
        Index(None, "status", "id"),
        # claim_next_job and reclaim_expired_jobs look for expired leases.
        Index(None, "status", "lease_expires_at"),
        # GET /v1/best filters finished jobs by workload and metric.
        Index(None, "workload", "metric_name", "status"),
        # A tenant's jobs, newest first, and its queued or running ones (the concurrency limit).
        Index(None, "tenant_id", "id"),
        Index(None, "tenant_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = _tenant_column()
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    # Copied out of `spec` so SQL can filter and rank without parsing JSON.
    workload: Mapped[str] = mapped_column(String(200), nullable=False)
    metric_name: Mapped[str] = mapped_column(String(100), nullable=False)
    metric_mode: Mapped[str] = mapped_column(String(3), nullable=False)
    planned_trials: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Per policy, the space the trials sampled (derived from the range test for "auto").
    search_spaces: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # What the worker decided that the spec does not say (a list of sentences).
    notes: Mapped[list[str] | None] = mapped_column(JSON)
    # The tokens whose requests submitted and cancelled the job; NULL with auth off.
    submitted_by_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    cancelled_by_token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    worker_id: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobPhaseRow(Base):
    """One phase of a job as it ran: queued, planning, range_test, search, confirmation or
    recommendation. A phase starts where the job's previous one ended (the rows tile its
    wall-clock); `ended_at` is NULL while it runs; `worker_id` is NULL for queued."""

    __tablename__ = "job_phases"
    __table_args__ = (
        CheckConstraint(
            "phase IN ('queued', 'range_test', 'planning', 'search', 'confirmation', "
            "'recommendation')",
            name="phase",
        ),
        # A job's phases in order, and its open one.
        Index(None, "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    phase: Mapped[str] = mapped_column(String(16), nullable=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    worker_id: Mapped[str | None] = mapped_column(String(200))


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'pruned', 'diverged', 'failed')",
            name="status",
        ),
        CheckConstraint("phase IN ('search', 'confirm')", name="phase"),
        # A trial the Ray callback reports twice is created once.
        UniqueConstraint("job_id", "ray_trial_id"),
        # Pages of a job's trials, newest first, and the progress counts.
        Index(None, "job_id", "id"),
        Index(None, "job_id", "status"),
        # The best trial of a job reads this index, never the metric rows.
        Index(None, "job_id", "best_metric"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False)
    policy: Mapped[str] = mapped_column(String(32), nullable=False)
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    search_config: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    seed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    phase: Mapped[str] = mapped_column(
        String(8), nullable=False, default="search", server_default="search"
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    epochs_done: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_metric: Mapped[float | None] = mapped_column(Float)
    last_metric_kind: Mapped[int] = _kind_column()
    # Denormalised: the best finite value of the job's metric, kept by record_trial_result, so
    # "best trial" never scans metric rows.
    best_metric: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
    ray_trial_id: Mapped[str | None] = mapped_column(String(200))
    node_id: Mapped[str | None] = mapped_column(String(200))
    # The epoch of the checkpoint the trial last resumed from; NULL when it never resumed.
    restored_from_epoch: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrialMetricRow(Base):
    """One row per trial and epoch; the primary key makes a result reported twice land once."""

    __tablename__ = "trial_metrics"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    lr: Mapped[float | None] = mapped_column(Float)
    lr_kind: Mapped[int] = _kind_column()
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_loss_kind: Mapped[int] = _kind_column()
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_loss_kind: Mapped[int] = _kind_column()
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    elapsed_s: Mapped[float] = mapped_column(Float, nullable=False)


class TrialProbeRow(Base):
    """A trial's cooldown probe at the end of an epoch and early stopping's decision there; the
    primary key makes a probe reported twice land once."""

    __tablename__ = "trial_probes"
    __table_args__ = (CheckConstraint("decision IN ('continue', 'stop')", name="decision"),)

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    cooldown_steps: Mapped[int] = mapped_column(Integer, nullable=False)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_loss_kind: Mapped[int] = _kind_column()
    val_loss: Mapped[float | None] = mapped_column(Float)
    val_loss_kind: Mapped[int] = _kind_column()
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    elapsed_s: Mapped[float] = mapped_column(Float, nullable=False)
    # NULL: not decided (yet), or a probe outside a rung.
    decision: Mapped[str | None] = mapped_column(String(8))


class RangeTestRow(Base):
    """An LR range test's curve and suggestion (one per job); arrays in JSON may hold "NaN"."""

    __tablename__ = "range_tests"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'completed', 'failed')", name="status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="running")
    lr: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    loss: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    smoothed_loss: Mapped[list[Any]] = mapped_column(JSON, nullable=False, default=list)
    suggestion: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class RecommendationRow(Base):
    """A job's recommendation (one per job), rewritten as trials finish; `final` once done."""

    __tablename__ = "recommendations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, unique=True
    )
    final: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    body: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class IdempotencyKeyRow(Base):
    """An Idempotency-Key seen on POST /v1/jobs, the SHA-256 of its body and the job it made."""

    __tablename__ = "idempotency_keys"

    # Keys are per tenant: two tenants may pick the same key without seeing each other's job.
    tenant_id: Mapped[int] = mapped_column(
        ForeignKey("tenants.id"), primary_key=True, default=DEFAULT_TENANT_ID, server_default="1"
    )
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    body_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class BestSettingRow(Base):
    """Per tenant, the best completed trial per (workload, policy, metric, mode) of its jobs.

    Denormalised when a job succeeds, so GET /v1/best reads a handful of rows instead of ranking
    every trial ever run.
    """

    __tablename__ = "best_settings"
    __table_args__ = (
        UniqueConstraint(
            "tenant_id",
            "workload",
            "policy",
            "metric_name",
            "metric_mode",
            # The conventional name is longer than PostgreSQL's 63 characters.
            name="uq_best_settings_tenant_setting",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[int] = _tenant_column()
    workload: Mapped[str] = mapped_column(String(200), nullable=False)
    policy: Mapped[str] = mapped_column(String(32), nullable=False)
    metric_name: Mapped[str] = mapped_column(String(100), nullable=False)
    metric_mode: Mapped[str] = mapped_column(String(3), nullable=False)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
    )
    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), nullable=False, index=True
    )
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    epochs: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
