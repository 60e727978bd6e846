"""scheduled tasks

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 02:25:00

``scheduled_tasks`` holds the agent's scheduled tasks (prompt encrypted with the tenant's data
key); ``tenant_timezones`` the time zone each person gave for them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_timezones",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("tz", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_timezones_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_tenant_timezones")),
    )
    op.create_table(
        "scheduled_tasks",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("conversation", sa.String(length=400), nullable=False),
        sa.Column("when", sa.String(length=100), nullable=False),
        sa.Column("prompt_blob", sa.LargeBinary(), nullable=False),
        sa.Column("next_run", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_scheduled_tasks_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scheduled_tasks")),
    )
    op.create_index(
        op.f("ix_scheduled_tasks_tenant_id"), "scheduled_tasks", ["tenant_id"], unique=False
    )
    op.create_index(
        op.f("ix_scheduled_tasks_next_run"), "scheduled_tasks", ["next_run"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_scheduled_tasks_next_run"), table_name="scheduled_tasks")
    op.drop_index(op.f("ix_scheduled_tasks_tenant_id"), table_name="scheduled_tasks")
    op.drop_table("scheduled_tasks")
    op.drop_table("tenant_timezones")
