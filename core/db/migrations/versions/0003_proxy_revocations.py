"""proxy revocation counter

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 22:00:00

One row whose ``generation`` grows with every revocation (tokens revoked, tenant paused):
every metering proxy polls it, so a revocation made by another process is seen within a
second (core/proxy_tokens.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "proxy_revocations",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_proxy_revocations")),
    )
    op.bulk_insert(table, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    op.drop_table("proxy_revocations")
