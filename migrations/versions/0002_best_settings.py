"""Best settings: the best completed trial per (workload, policy, metric, mode), denormalised.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Filled from the succeeded jobs already stored, so GET /v1/best answers the same before and after.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO best_settings
    (workload, policy, metric_name, metric_mode, value, job_id, trial_id, schedule, epochs,
     updated_at)
SELECT workload, policy, metric_name, metric_mode, best_metric, job_id, trial_id, schedule,
       epochs_done, CURRENT_TIMESTAMP
FROM (
    SELECT j.workload, t.policy, j.metric_name, j.metric_mode, t.best_metric, t.job_id,
           t.id AS trial_id, t.schedule, t.epochs_done,
           ROW_NUMBER() OVER (
               PARTITION BY j.workload, t.policy, j.metric_name, j.metric_mode
               ORDER BY CASE WHEN j.metric_mode = 'max' THEN -t.best_metric
                             ELSE t.best_metric END, t.id
           ) AS place
    FROM trials t JOIN jobs j ON j.id = t.job_id
    WHERE j.status = 'succeeded' AND t.status = 'completed' AND t.best_metric IS NOT NULL
) ranked
WHERE place = 1
"""


def upgrade() -> None:
    op.create_table(
        "best_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("workload", sa.String(length=200), nullable=False),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("metric_name", sa.String(length=100), nullable=False),
        sa.Column("metric_mode", sa.String(length=3), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("schedule", sa.JSON(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_best_settings_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_best_settings_trial_id_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_best_settings")),
        sa.UniqueConstraint(
            "workload",
            "policy",
            "metric_name",
            "metric_mode",
            name=op.f("uq_best_settings_workload_policy_metric_name_metric_mode"),
        ),
    )
    op.create_index(op.f("ix_best_settings_job_id"), "best_settings", ["job_id"])
    op.create_index(op.f("ix_best_settings_trial_id"), "best_settings", ["trial_id"])
    op.execute(_BACKFILL)


def downgrade() -> None:
    op.drop_index(op.f("ix_best_settings_trial_id"), table_name="best_settings")
    op.drop_index(op.f("ix_best_settings_job_id"), table_name="best_settings")
    op.drop_table("best_settings")
