"""Token scopes, and who submitted and cancelled each job.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

`api_tokens.scope` is what a token may do: read, submit or code (each includes the ones before
it). Tokens made before this revision could do everything, so they get `code` and keep every
right; the column then loses its default, so that a row written without a scope gets none.

`jobs.submitted_by_token_id` and `jobs.cancelled_by_token_id` name the tokens whose requests
submitted and cancelled a job: NULL with authentication off, and for every job stored before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TOKEN_COLUMNS = ("submitted_by_token_id", "cancelled_by_token_id")


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(
            sa.Column("scope", sa.String(length=8), nullable=False, server_default="code")
        )
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("scope", existing_type=sa.String(length=8), server_default=None)
        batch.create_check_constraint(
            op.f("ck_api_tokens_scope"), "scope IN ('read', 'submit', 'code')"
        )

    with op.batch_alter_table("jobs") as batch:
        for column in _TOKEN_COLUMNS:
            batch.add_column(sa.Column(column, sa.Integer(), nullable=True))
            batch.create_foreign_key(
                op.f(f"fk_jobs_{column}_api_tokens"), "api_tokens", [column], ["id"]
            )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in _TOKEN_COLUMNS:
            batch.drop_constraint(op.f(f"fk_jobs_{column}_api_tokens"), type_="foreignkey")
            batch.drop_column(column)

    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint(op.f("ck_api_tokens_scope"), type_="check")
        batch.drop_column("scope")
