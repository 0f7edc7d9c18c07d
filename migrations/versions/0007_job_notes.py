"""Job notes: what the worker decided about a job that its spec does not say.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

`jobs.notes` is a JSON list of sentences, e.g. that a job asking for cooldown-judged early
stopping is judged on the raw metric because it trains a user's train function (which cannot
be probed). NULL for jobs with none, and for every job stored before this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("notes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("notes")
