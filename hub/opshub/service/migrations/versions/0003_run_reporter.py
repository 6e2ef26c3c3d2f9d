"""Record who reported a run and how it reached the service.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: runs recorded before this revision have no reporter on record, and say so.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("reported_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("reported_from", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("reported_from")
        batch.drop_column("reported_by")
