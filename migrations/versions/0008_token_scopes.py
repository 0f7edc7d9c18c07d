"""Token scopes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08

`api_tokens.scope` is what a token may do: read, submit or code (each includes the ones before
it). Tokens made before this revision could do everything, so they get `code` and keep every
right; the column then loses its default, so that a row written without a scope gets none.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint(op.f("ck_api_tokens_scope"), type_="check")
        batch.drop_column("scope")
