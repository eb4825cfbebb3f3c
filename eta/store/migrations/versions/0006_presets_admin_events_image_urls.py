"""Parameter presets (named, versioned per tenant), the append-only administrative event log, and images by
reference: each job records the preset it ran with and the URL its image came from.

On Postgres a trigger refuses UPDATE and DELETE on `admin_events`: the log is appended to, never rewritten,
whatever code (or person with SQL access short of the table's owner dropping the trigger) tries.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "presets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("params", JSON, nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by_key_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_presets_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by_key_id"], ["api_keys.id"],
                                name=op.f("fk_presets_created_by_key_id_api_keys"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_presets")),
        sa.UniqueConstraint("tenant_id", "name", "version", name=op.f("uq_presets_tenant_id_name_version")),
    )
    op.create_table(
        "admin_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("actor_key_id", sa.Uuid(), nullable=True),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=True),
        sa.Column("details", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], name=op.f("fk_admin_events_tenant_id_tenants"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_events")),
    )
    op.create_index("ix_admin_events_tenant_created", "admin_events", ["tenant_id", "created_at", "id"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("preset_name", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("preset_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("image_url", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Row triggers only: deleting a whole tenant (CASCADE) still removes its events with it.
        op.execute("""
            CREATE FUNCTION admin_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' AND NOT EXISTS (SELECT 1 FROM tenants WHERE id = OLD.tenant_id) THEN
                    RETURN OLD;
                END IF;
                RAISE EXCEPTION 'admin_events is append-only (% refused)', TG_OP;
            END $$""")
        op.execute("""
            CREATE TRIGGER admin_events_append_only BEFORE UPDATE OR DELETE ON admin_events
            FOR EACH ROW EXECUTE FUNCTION admin_events_append_only()""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS admin_events_append_only ON admin_events")
        op.execute("DROP FUNCTION IF EXISTS admin_events_append_only()")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("image_url")
        batch.drop_column("preset_version")
        batch.drop_column("preset_name")
    op.drop_index("ix_admin_events_tenant_created", table_name="admin_events")
    op.drop_table("admin_events")
    op.drop_table("presets")
