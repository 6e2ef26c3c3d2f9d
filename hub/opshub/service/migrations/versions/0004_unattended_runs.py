"""Unattended runs: the runner's queue, schedules' fires, alerts, locks and the runner's credential.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE_ALERT = "status IN ('queued', 'running') AND alert_fingerprint IS NOT NULL"


def upgrade() -> None:
    # Every column nullable: runs people report have none of these.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("requested_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("first_cell_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("fire_key", sa.String(length=700), nullable=True))
        batch.add_column(sa.Column("alert_fingerprint", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("locks", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("runner_token_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("runner_server", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("cancel_requested_by", sa.String(length=255), nullable=True))
        batch.create_unique_constraint("uq_runs_fire_key", ["fire_key"])
        batch.create_index("ix_runs_status_queued_at", ["status", "queued_at"])
    op.create_index(
        "uq_runs_active_alert",
        "runs",
        ["runbook", "alert_fingerprint"],
        unique=True,
        sqlite_where=sa.text(ACTIVE_ALERT),
        postgresql_where=sa.text(ACTIVE_ALERT),
    )
    op.create_table(
        "schedules",
        sa.Column("key", sa.String(length=600), nullable=False),
        sa.Column("runbook", sa.String(length=512), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_schedules")),
    )


def downgrade() -> None:
    op.drop_table("schedules")
    op.drop_index("uq_runs_active_alert", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_status_queued_at")
        batch.drop_constraint("uq_runs_fire_key", type_="unique")
        for column in (
            "cancel_requested_by", "runner_server", "runner_token_hash", "locks", "alert_fingerprint",
            "fire_key", "first_cell_at", "queued_at", "due_at", "requested_by",
        ):  # fmt: skip
            batch.drop_column(column)
