"""Job leases: the worker running a job's stage holds it until a deadline it keeps pushing back (a heartbeat);
the sweeper re-sends a job whose lease ran out. And an index for counting a tenant's unfinished jobs (the
fair order of the stage queues).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = "status IN ('queued', 'pre_evaluating', 'generating', 'post_evaluating')"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_jobs_lease_expires", "jobs", ["lease_expires_at"],
                    postgresql_where=sa.text("lease_expires_at IS NOT NULL"),
                    sqlite_where=sa.text("lease_expires_at IS NOT NULL"))
    op.create_index("ix_jobs_tenant_active", "jobs", ["tenant_id"],
                    postgresql_where=sa.text(_ACTIVE), sqlite_where=sa.text(_ACTIVE))


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_active", table_name="jobs")
    op.drop_index("ix_jobs_lease_expires", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
