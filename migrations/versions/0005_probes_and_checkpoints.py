"""Cooldown probes and trial checkpoints: what early stopping judged a trial by at each rung.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`trial_probes` holds one row per (trial, epoch): the cooldown probe branched from the trial's
state at the end of that epoch (annealed to 0 for `cooldown_steps` steps, evaluated, thrown
away) and early stopping's `decision` at that rung ('continue', 'stop', or NULL). Losses are a
nullable float plus a `*_kind` column (0 finite, 1 NaN, 2 +inf, 3 -inf), as in trial_metrics.
`trials.restored_from_epoch` is the epoch of the checkpoint a trial last resumed from (NULL:
it never resumed, which is every trial stored before this revision).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _kind(name: str) -> sa.Column:
    return sa.Column(name, sa.SmallInteger(), server_default="0", nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.add_column(sa.Column("restored_from_epoch", sa.Integer(), nullable=True))
    op.create_table(
        "trial_probes",
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("cooldown_steps", sa.Integer(), nullable=False),
        sa.Column("train_loss", sa.Float(), nullable=True),
        _kind("train_loss_kind"),
        sa.Column("val_loss", sa.Float(), nullable=True),
        _kind("val_loss_kind"),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("elapsed_s", sa.Float(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=True),
        sa.CheckConstraint(
            "decision IN ('continue', 'stop')", name=op.f("ck_trial_probes_decision")
        ),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_trial_probes_trial_id_trials"),
            ondelete="CASCADE",
        ),
        # One row per trial and epoch: a probe reported twice is stored once.
        sa.PrimaryKeyConstraint("trial_id", "epoch", name=op.f("pk_trial_probes")),
    )


def downgrade() -> None:
    op.drop_table("trial_probes")
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("restored_from_epoch")
