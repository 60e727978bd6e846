"""deliveries, live checks, memory versions

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:50:00

``deliveries`` remembers handled platform deliveries across restarts and replicas;
``live_checks`` bounds live key checks per person and platform-wide; ``agent_memory.version``
is the monotonic version bound into each memory blob (rollback detection).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_deliveries")),
    )
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deliveries_seen_at"), ["seen_at"], unique=False)
    op.create_table(
        "live_checks",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("identity", sa.String(length=200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_live_checks")),
    )
    with op.batch_alter_table("live_checks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_live_checks_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_live_checks_identity"), ["identity"], unique=False)
    with op.batch_alter_table("agent_memory", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("version", sa.BigInteger(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("agent_memory", schema=None) as batch_op:
        batch_op.drop_column("version")
    with op.batch_alter_table("live_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_live_checks_identity"))
        batch_op.drop_index(batch_op.f("ix_live_checks_at"))
    op.drop_table("live_checks")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_seen_at"))
    op.drop_table("deliveries")
