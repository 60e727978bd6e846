"""billing: subscriptions, payments, processed provider events, invites, access requests, trials

Revision ID: 0006
Revises: 0007
Create Date: 2026-12-02 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0007"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("period_start", _TS, nullable=True),
        sa.Column("period_end", _TS, nullable=True),
        sa.Column("grace_until", _TS, nullable=True),
        sa.Column("pending_plan", sa.String(length=64), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("customer_id", sa.String(length=200), nullable=True),
        sa.Column("auto_renew", sa.Boolean(), nullable=False),
        sa.Column("reminded_for", _TS, nullable=True),
        sa.Column("last_event_at", _TS, nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_subscriptions_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_subscriptions")),
    )
    with op.batch_alter_table("subscriptions", schema=None) as b:
        b.create_index(b.f("ix_subscriptions_state"), ["state"], unique=False)
        b.create_index(b.f("ix_subscriptions_period_end"), ["period_end"], unique=False)
        b.create_index(b.f("ix_subscriptions_external_id"), ["external_id"], unique=False)
        b.create_index(b.f("ix_subscriptions_customer_id"), ["customer_id"], unique=False)
    op.create_table(
        "payments",
        sa.Column("id", _ID, nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("charge_id", sa.String(length=200), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=8), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("payer", sa.String(length=200), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.Column("refunded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
        sa.UniqueConstraint("charge_id", name=op.f("uq_payments_charge_id")),
    )
    with op.batch_alter_table("payments", schema=None) as b:
        b.create_index(b.f("ix_payments_tenant_id"), ["tenant_id"], unique=False)
        b.create_index(b.f("ix_payments_at"), ["at"], unique=False)
    op.create_table(
        "billing_events",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_events")),
    )
    op.create_table(
        "invites",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=True),
        sa.Column("uses_left", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_invites")),
    )
    op.create_table(
        "access_requests",
        sa.Column("identity", sa.String(length=200), nullable=False),
        sa.Column("plan", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("dm_chat_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_access_requests")),
    )
    op.create_table(
        "trial_uses",
        sa.Column("identity", sa.String(length=200), nullable=False),
        sa.Column("at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("identity", name=op.f("pk_trial_uses")),
    )


def downgrade() -> None:
    op.drop_table("trial_uses")
    op.drop_table("access_requests")
    op.drop_table("invites")
    op.drop_table("billing_events")
    with op.batch_alter_table("payments", schema=None) as b:
        b.drop_index(b.f("ix_payments_at"))
        b.drop_index(b.f("ix_payments_tenant_id"))
    op.drop_table("payments")
    with op.batch_alter_table("subscriptions", schema=None) as b:
        b.drop_index(b.f("ix_subscriptions_customer_id"))
        b.drop_index(b.f("ix_subscriptions_external_id"))
        b.drop_index(b.f("ix_subscriptions_period_end"))
        b.drop_index(b.f("ix_subscriptions_state"))
    op.drop_table("subscriptions")
