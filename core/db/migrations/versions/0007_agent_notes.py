"""agent notes

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-02 01:10:00

``agent_notes`` keeps each person's long-term notes (the agent's remember/recall/forget tools)
as one blob encrypted with the tenant's data key, with a version bound into it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_notes",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_agent_notes_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_agent_notes")),
    )


def downgrade() -> None:
    op.drop_table("agent_notes")
