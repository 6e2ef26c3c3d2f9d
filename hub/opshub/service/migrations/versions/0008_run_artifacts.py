"""A run's artifacts: the data its runbook published for dashboards (runbooks/artifacts.py), as
{name: data}, found in its recorded notebook (run_artifacts.py).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: runs recorded before this revision, and runs that published nothing, have none.
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("artifacts", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("artifacts")
