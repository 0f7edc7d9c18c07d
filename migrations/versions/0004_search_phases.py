"""Search phases: the spaces a job searched, and whether a trial searched or confirmed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21

`jobs.search_spaces` (JSON, NULL until the worker plans the search) records, per policy, the
search space the trials sampled: after the LR range test for `lr_bounds: "auto"`, the derived
one. `trials.phase` is 'search' (a point of the space) or 'confirm' (a top configuration rerun
with a fresh seed); the trials stored before this revision were all search trials.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("search_spaces", sa.JSON(), nullable=True))
    with op.batch_alter_table("trials") as batch:
        batch.add_column(
            sa.Column("phase", sa.String(length=8), server_default="search", nullable=False)
        )
        batch.create_check_constraint(op.f("ck_trials_phase"), "phase IN ('search', 'confirm')")


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_constraint(op.f("ck_trials_phase"), type_="check")
        batch.drop_column("phase")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("search_spaces")
