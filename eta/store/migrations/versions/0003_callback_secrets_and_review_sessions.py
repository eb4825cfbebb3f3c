"""Per-tenant callback signing secrets (with a rotation overlap), and server-side review-page sessions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("callback_secret", sa.String(100), nullable=True))
        batch.add_column(sa.Column("previous_callback_secret", sa.String(100), nullable=True))
        batch.add_column(sa.Column("previous_callback_secret_until", sa.DateTime(timezone=True), nullable=True))
    # Every existing tenant gets its own secret now (never a shared default).
    tenants = sa.table("tenants", sa.column("id", sa.Uuid()), sa.column("callback_secret", sa.String(100)))
    connection = op.get_bind()
    for (tenant_id,) in connection.execute(sa.select(tenants.c.id)).all():
        connection.execute(sa.update(tenants).where(tenants.c.id == tenant_id)
                           .values(callback_secret=f"whsec_{secrets.token_urlsafe(32)}"))

    op.create_table(
        "review_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name="fk_review_sessions_key_id_api_keys",
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_review_sessions"),
        sa.UniqueConstraint("token_hash", name="uq_review_sessions_token_hash"),
    )
    op.create_index("ix_review_sessions_key_id", "review_sessions", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_review_sessions_key_id", table_name="review_sessions")
    op.drop_table("review_sessions")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("previous_callback_secret_until")
        batch.drop_column("previous_callback_secret")
        batch.drop_column("callback_secret")
