"""A live dashboard's health, as its latest views found it: broken since when (and why, for its author
and admins), or when it last rendered every cell.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: dashboards published before this revision have not been viewed since, and say so.
    with op.batch_alter_table("dashboards") as batch:
        batch.add_column(sa.Column("broken_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("broken_detail", sa.Text(), nullable=True))
        batch.add_column(sa.Column("last_good_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("dashboards") as batch:
        batch.drop_column("last_good_at")
        batch.drop_column("broken_detail")
        batch.drop_column("broken_since")
