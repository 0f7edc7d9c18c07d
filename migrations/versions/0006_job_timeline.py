"""Job timeline: the phases a job went through, one row per phase as it happened.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

`job_phases` holds one row per phase of a job, in the order they ran: 'queued' (from its
submission, and again after an expired lease requeued it), then as the worker runs it
'planning', 'range_test', 'search', 'confirmation' and, once it succeeded, 'recommendation'.
A phase starts where the one before it ended, so the rows tile the job's wall-clock;
`ended_at` is NULL while the phase runs, `worker_id` the worker that ran it (NULL for
'queued'). A worker that resumes a reclaimed job adds its own rows after the dead worker's.
Jobs stored before this revision have no rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_phases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(length=200), nullable=True),
        sa.CheckConstraint(
            "phase IN ('queued', 'range_test', 'planning', 'search', 'confirmation', "
            "'recommendation')",
            name=op.f("ck_job_phases_phase"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_phases_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_phases")),
    )
    # A job's phases in order, and its open one.
    op.create_index(op.f("ix_job_phases_job_id_id"), "job_phases", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_phases_job_id_id"), table_name="job_phases")
    op.drop_table("job_phases")
