"""Retention marker on jobs, and indexes for audit lookups by custom_id and for the purge pass.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNPURGED = "purged_at IS NULL"


def upgrade() -> None:
    # A nullable column with no default: an instant catalog change on Postgres, a plain ADD COLUMN on SQLite.
    op.add_column("jobs", sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_tenant_custom_id", "jobs", ["tenant_id", "custom_id"])
    op.create_index(
        "ix_jobs_unpurged_created",
        "jobs",
        ["created_at"],
        postgresql_where=sa.text(UNPURGED),
        sqlite_where=sa.text(UNPURGED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_unpurged_created", table_name="jobs")
    op.drop_index("ix_jobs_tenant_custom_id", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("purged_at")
