"""Schedules paused by people: who, when and why, and who resumed them when.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OPEN = "resumed_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "schedule_pauses",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("schedule", sa.String(length=600), nullable=False),
        sa.Column("runbook", sa.String(length=512), nullable=False),
        sa.Column("paused_by", sa.String(length=255), nullable=False),
        sa.Column("paused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("resumed_by", sa.String(length=255), nullable=True),
        sa.Column("resumed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedule_pauses")),
    )
    op.create_index("ix_schedule_pauses_schedule_paused_at", "schedule_pauses", ["schedule", "paused_at"])
    op.create_index(
        "uq_schedule_pauses_open",
        "schedule_pauses",
        ["schedule"],
        unique=True,
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )


def downgrade() -> None:
    op.drop_index("uq_schedule_pauses_open", table_name="schedule_pauses")
    op.drop_index("ix_schedule_pauses_schedule_paused_at", table_name="schedule_pauses")
    op.drop_table("schedule_pauses")
