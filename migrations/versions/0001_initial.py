"""Initial schema: jobs, trials, trial metrics, range tests, recommendations, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Constraint and index names follow the naming convention in lrtune.service.models. Floats that may
be NaN or +-inf are a nullable value plus a `*_kind` column (0 finite, 1 NaN, 2 +inf, 3 -inf).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _kind(name: str) -> sa.Column:
    return sa.Column(name, sa.SmallInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("workload", sa.String(length=200), nullable=False),
        sa.Column("metric_name", sa.String(length=100), nullable=False),
        sa.Column("metric_mode", sa.String(length=3), nullable=False),
        sa.Column("planned_trials", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        _timestamp("lease_expires_at"),
        _timestamp("created_at", nullable=False),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        sa.CheckConstraint("kind IN ('search', 'range_test')", name=op.f("ck_jobs_kind")),
        sa.CheckConstraint("metric_mode IN ('min', 'max')", name=op.f("ck_jobs_metric_mode")),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelling', 'cancelled')",
            name=op.f("ck_jobs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_status_id"), "jobs", ["status", "id"])
    op.create_index(op.f("ix_jobs_status_lease_expires_at"), "jobs", ["status", "lease_expires_at"])
    op.create_index(
        op.f("ix_jobs_workload_metric_name_status"), "jobs", ["workload", "metric_name", "status"]
    )

    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        _timestamp("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_idempotency_keys_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_keys")),
    )
    op.create_index(op.f("ix_idempotency_keys_job_id"), "idempotency_keys", ["job_id"])

    op.create_table(
        "range_tests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("lr", sa.JSON(), nullable=False),
        sa.Column("loss", sa.JSON(), nullable=False),
        sa.Column("smoothed_loss", sa.JSON(), nullable=False),
        sa.Column("suggestion", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'failed')", name=op.f("ck_range_tests_status")
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_range_tests_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_range_tests")),
        sa.UniqueConstraint("job_id", name=op.f("uq_range_tests_job_id")),
    )

    op.create_table(
        "recommendations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_recommendations_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recommendations")),
        sa.UniqueConstraint("job_id", name=op.f("uq_recommendations_job_id")),
    )

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("search_config", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("epochs_done", sa.Integer(), nullable=False),
        sa.Column("last_metric", sa.Float(), nullable=True),
        _kind("last_metric_kind"),
        sa.Column("best_metric", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ray_trial_id", sa.String(length=200), nullable=True),
        sa.Column("node_id", sa.String(length=200), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'completed', 'pruned', 'diverged', 'failed')",
            name=op.f("ck_trials_status"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_trials_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("job_id", "ray_trial_id", name=op.f("uq_trials_job_id_ray_trial_id")),
    )
    op.create_index(op.f("ix_trials_job_id_id"), "trials", ["job_id", "id"])
    op.create_index(op.f("ix_trials_job_id_status"), "trials", ["job_id", "status"])
    op.create_index(op.f("ix_trials_job_id_best_metric"), "trials", ["job_id", "best_metric"])

    op.create_table(
        "trial_metrics",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("lr", sa.Float(), nullable=True),
        _kind("lr_kind"),
        sa.Column("train_loss", sa.Float(), nullable=True),
        _kind("train_loss_kind"),
        sa.Column("val_loss", sa.Float(), nullable=True),
        _kind("val_loss_kind"),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("elapsed_s", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_trial_metrics_trial_id_trials"),
            ondelete="CASCADE",
        ),
        # One row per trial and epoch: a result reported twice is stored once.
        sa.PrimaryKeyConstraint("trial_id", "epoch", name=op.f("pk_trial_metrics")),
    )


def downgrade() -> None:
    op.drop_table("trial_metrics")
    op.drop_index(op.f("ix_trials_job_id_best_metric"), table_name="trials")
    op.drop_index(op.f("ix_trials_job_id_status"), table_name="trials")
    op.drop_index(op.f("ix_trials_job_id_id"), table_name="trials")
    op.drop_table("trials")
    op.drop_table("recommendations")
    op.drop_table("range_tests")
    op.drop_index(op.f("ix_idempotency_keys_job_id"), table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index(op.f("ix_jobs_workload_metric_name_status"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_lease_expires_at"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_status_id"), table_name="jobs")
    op.drop_table("jobs")
