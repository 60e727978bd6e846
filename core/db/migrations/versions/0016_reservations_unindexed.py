"""budget_reservations: no secondary indexes

Revision ID: 0016
Revises: 0010
Create Date: 2026-12-03 11:00:00

The table holds only reservations in flight (a settle deletes its row), so it stays small and
the sweeper's and a tenant deletion's scans of it are cheap; its indexes on ``expires_at`` and
``tenant_id`` were two more b-tree pages written at every reservation and again at every
settle (on SQLite, 10 of a commit's WAL writes instead of 6 — the metering proxy's request
path).
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_budget_reservations_expires_at", table_name="budget_reservations")
    op.drop_index("ix_budget_reservations_tenant_id", table_name="budget_reservations")


def downgrade() -> None:
    op.create_index(
        "ix_budget_reservations_tenant_id", "budget_reservations", ["tenant_id"], unique=False
    )
    op.create_index(
        "ix_budget_reservations_expires_at", "budget_reservations", ["expires_at"], unique=False
    )
