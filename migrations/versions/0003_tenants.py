"""Tenants and API tokens: every job, idempotency key and best setting belongs to a tenant.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21

The migration creates the built-in tenant "default" (id 1): the jobs already stored, and every
request while authentication is off, belong to it. Tokens are stored as their SHA-256 only.
Idempotency keys and best settings become per tenant (their keys gain `tenant_id`).

On SQLite, adding a foreign key rebuilds the table; `lrtune.service.migrate` runs migrations with
SQLite's foreign keys off, so rebuilding `jobs` does not cascade into its trials.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_TENANT_ID = 1
_OLD_BEST_UNIQUE = "uq_best_settings_workload_policy_metric_name_metric_mode"
_BEST_SETTING = ["workload", "policy", "metric_name", "metric_mode"]


def _tenant_column() -> sa.Column:
    return sa.Column(
        "tenant_id", sa.Integer(), server_default=str(DEFAULT_TENANT_ID), nullable=False
    )


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("max_concurrent_jobs", sa.Integer(), nullable=True),
        sa.Column("max_trials_per_job", sa.Integer(), nullable=True),
        sa.Column("max_epochs", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )
    # The first row of a new table: id 1 on both databases, and the sequence stays in step.
    op.bulk_insert(tenants, [{"name": "default", "created_at": datetime.now(UTC)}])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_tokens_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    op.create_index(op.f("ix_api_tokens_tenant_id"), "api_tokens", ["tenant_id"])

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(_tenant_column())
        batch.create_foreign_key(
            op.f("fk_jobs_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )
        batch.create_index(op.f("ix_jobs_tenant_id_id"), ["tenant_id", "id"])
        batch.create_index(op.f("ix_jobs_tenant_id_status"), ["tenant_id", "status"])

    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(_tenant_column())
        batch.create_foreign_key(
            op.f("fk_idempotency_keys_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )
        batch.drop_constraint(op.f("pk_idempotency_keys"), type_="primary")
        batch.create_primary_key(op.f("pk_idempotency_keys"), ["tenant_id", "key"])

    with op.batch_alter_table("best_settings") as batch:
        batch.add_column(_tenant_column())
        batch.create_foreign_key(
            op.f("fk_best_settings_tenant_id_tenants"), "tenants", ["tenant_id"], ["id"]
        )
        batch.drop_constraint(op.f(_OLD_BEST_UNIQUE), type_="unique")
        batch.create_unique_constraint(
            "uq_best_settings_tenant_setting", ["tenant_id", *_BEST_SETTING]
        )


def downgrade() -> None:
    # Without tenants, keys and best settings are global again: other tenants' rows would collide
    # with the default tenant's, so only the default tenant's are kept (jobs all stay).
    op.execute(f"DELETE FROM best_settings WHERE tenant_id <> {DEFAULT_TENANT_ID}")
    op.execute(f"DELETE FROM idempotency_keys WHERE tenant_id <> {DEFAULT_TENANT_ID}")

    with op.batch_alter_table("best_settings") as batch:
        batch.drop_constraint("uq_best_settings_tenant_setting", type_="unique")
        batch.create_unique_constraint(op.f(_OLD_BEST_UNIQUE), _BEST_SETTING)
        batch.drop_constraint(op.f("fk_best_settings_tenant_id_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")

    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_constraint(op.f("pk_idempotency_keys"), type_="primary")
        batch.create_primary_key(op.f("pk_idempotency_keys"), ["key"])
        batch.drop_constraint(op.f("fk_idempotency_keys_tenant_id_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")

    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_tenant_id_status"))
        batch.drop_index(op.f("ix_jobs_tenant_id_id"))
        batch.drop_constraint(op.f("fk_jobs_tenant_id_tenants"), type_="foreignkey")
        batch.drop_column("tenant_id")

    op.drop_index(op.f("ix_api_tokens_tenant_id"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("tenants")
