"""billing: subscriptions.due_at, when the billing job next has to look at a row

Revision ID: 0015
Revises: 0011
Create Date: 2026-12-02 05:00:00

The billing job reads only rows whose ``due_at`` has come (an indexed range), not every live
subscription. Existing live rows are due at once; the job's first round sets their real time.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as b:
        b.add_column(sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
        b.create_index(b.f("ix_subscriptions_due_at"), ["due_at"], unique=False)
    op.execute(
        "UPDATE subscriptions SET due_at = updated_at "
        "WHERE state IN ('trial', 'active', 'past_due')"
    )


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as b:
        b.drop_index(b.f("ix_subscriptions_due_at"))
        b.drop_column("due_at")
