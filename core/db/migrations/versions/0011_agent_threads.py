"""agent threads

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-02 04:50:00

``agent_threads`` says which stored conversation (``agent_memory`` row) a chat continues after
``/new``; it holds only numbers, the conversations stay encrypted in ``agent_memory``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_threads",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("conversation", sa.String(length=400), nullable=False),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_agent_threads_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "conversation", name=op.f("pk_agent_threads")),
    )


def downgrade() -> None:
    op.drop_table("agent_threads")
