"""Model calls per batch and stage, and how many times each job's stage results were recorded: what the
workers did, as data (the demo and the worker tests read these instead of the worker's log).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(sa.Column("model_calls", JSON, nullable=True))
    with op.batch_alter_table("job_results") as batch:
        batch.add_column(sa.Column("stage_records", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("job_results") as batch:
        batch.drop_column("stage_records")
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("model_calls")
