"""job leases

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 04:50:00

``job_leases``: one row per background job; a replica runs a job only when it takes the row's
lease, so several ``byokbot run`` on one PostgreSQL run each job once per interval.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_job_leases")),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
