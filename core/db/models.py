"""Tables. Secrets live only as AES-GCM ciphertext; no other column holds key text."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (Alembic needs them on SQLite)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class TenantRow(Base):
    """One person's account, whatever platforms they reach us from."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    plan: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    status_reason: Mapped[str] = mapped_column(String(200), default="")
    paused: Mapped[bool] = mapped_column(default=False)
    provider: Mapped[str | None] = mapped_column(String(64), default=None)
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    persona: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IdentityRow(Base):
    """A ``platform:user_id`` that belongs to a tenant, and where to DM them."""

    __tablename__ = "identities"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    platform: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    dm_chat_id: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime]


class DataKeyRow(Base):
    """A tenant's data key, wrapped by a master key; deleting the row shreds the tenant."""

    __tablename__ = "data_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    kek_version: Mapped[int] = mapped_column(Integer, index=True)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]
    rewrapped_at: Mapped[datetime | None] = mapped_column(default=None)


class KekUsageRow(Base):
    """How many data keys each master key version has wrapped (GCM nonce budget)."""

    __tablename__ = "kek_usage"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    wraps: Mapped[int] = mapped_column(BigInteger, default=0)


class ProviderKeyRow(Base):
    """A tenant's provider key: ciphertext, display fingerprint and an HMAC equality tag."""

    __tablename__ = "provider_keys"
    __table_args__ = (Index("ix_provider_keys_tenant_status", "tenant_id", "status"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    provider: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer, default=1)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    fingerprint: Mapped[str] = mapped_column(String(64))
    equality_tag: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    status_reason: Mapped[str] = mapped_column(String(200), default="")
    models: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class IntakeSessionRow(Base):
    """A one-time secret exchange. Only a SHA-256 of the token is kept."""

    __tablename__ = "intake_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    identity: Mapped[str] = mapped_column(String(200), index=True)
    provider: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    origin_chat_id: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class FlowStateRow(Base):
    """Where a person is in a multi-step flow, so a restart never strands them."""

    __tablename__ = "flow_states"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    flow: Mapped[str] = mapped_column(String(32))
    step: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    expires_at: Mapped[datetime | None] = mapped_column(default=None, index=True)
    updated_at: Mapped[datetime]


class AuditRow(Base):
    """Append-only record of every tenant-affecting action. Never holds a secret."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))
    tenant_id: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MemoryRow(Base):
    """A conversation's memory, encrypted with the tenant's data key."""

    __tablename__ = "agent_memory"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    conversation: Mapped[str] = mapped_column(String(400), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    # Grows with every save and is bound into the blob's associated data, so an older blob
    # copied back over a newer one fails to open (0: written before versions existed).
    version: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    updated_at: Mapped[datetime]


class ThreadRow(Base):
    """Which stored conversation a chat continues; holds no conversation text.

    ``active`` 0 is the chat's own memory key, n > 0 the key with ``#n`` (``/new`` takes
    ``last + 1``).
    """

    __tablename__ = "agent_threads"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    conversation: Mapped[str] = mapped_column(String(400), primary_key=True)
    active: Mapped[int] = mapped_column(Integer, default=0)
    last: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class NotesRow(Base):
    """A person's long-term notes (one JSON list per tenant), encrypted with the data key."""

    __tablename__ = "agent_notes"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    # Bound into the blob's associated data like MemoryRow.version: an old copy is refused.
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime]


class UsageRow(Base):
    """Tokens used per tenant, day and model (rows are upserted in batches)."""

    __tablename__ = "usage_daily"
    __table_args__ = (UniqueConstraint("tenant_id", "day", "model"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    day: Mapped[date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(200))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)


class ProxyTokenRow(Base):
    """A managed tenant's scoped proxy token. Only its SHA-256 is kept; ``id`` orders issues."""

    __tablename__ = "proxy_tokens"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[datetime]


class ProxyRevocationRow(Base):
    """One row (``id`` 1): its ``generation`` grows with every revocation; proxies poll it."""

    __tablename__ = "proxy_revocations"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger)


class BudgetRow(Base):
    """A managed tenant's spend in the current period, what is reserved, and the minute window.

    Money is integer micro-dollars so concurrent additions never lose a fraction of a cent.
    """

    __tablename__ = "budgets"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date)
    tokens_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    usd_micros_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    usd_micros_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    alerted_pct: Mapped[int] = mapped_column(Integer, default=0)
    window_minute: Mapped[int] = mapped_column(BigInteger, default=0)
    window_requests: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]


class ReservationRow(Base):
    """An open budget reservation; whoever deletes the row (settle or sweeper) releases it."""

    __tablename__ = "budget_reservations"
    # One b-tree on SQLite: the proxy writes a row and deletes it per request (0017).
    __table_args__ = {"sqlite_with_rowid": False}

    # No secondary indexes: only reservations in flight are here (migration 0016).
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    tokens: Mapped[int] = mapped_column(BigInteger)
    usd_micros: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class DeliveryRow(Base):
    """A platform delivery (update, event, interaction) already handled, by any replica.

    Rows older than the retention window are reused or swept, so a delivery id is recognised
    across restarts and replicas for that window.
    """

    __tablename__ = "deliveries"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    seen_at: Mapped[datetime] = mapped_column(index=True)


class LiveCheckRow(Base):
    """One live key check against a provider, kept an hour to bound checks per person."""

    __tablename__ = "live_checks"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    identity: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[datetime] = mapped_column(index=True)


class InboxRow(Base):
    """A platform delivery recorded before it is confirmed to the platform (the durable inbox).

    ``pending`` while its turn runs under ``owner``'s lease; ``done`` afterwards, kept for the
    retention window so a redelivery is recognised. ``meta`` holds only ids (user, chat,
    message) so a person can be told to resend; ``body`` is the whole event sealed under a key
    derived from the master key (``kek_version``), dropped once the turn is done.
    """

    __tablename__ = "inbox"
    __table_args__ = (Index("ix_inbox_state_lease", "state", "lease_until"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    platform: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(10))
    owner: Mapped[str] = mapped_column(String(40))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    lease_until: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    kek_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class SubscriptionRow(Base):
    """A tenant's subscription: state, paid period, grace, and the provider's references.

    No card data: Stripe keeps it; only its customer and subscription ids are stored here.
    """

    __tablename__ = "subscriptions"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    plan: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    provider: Mapped[str] = mapped_column(String(16), default="")
    period_start: Mapped[datetime | None] = mapped_column(default=None)
    period_end: Mapped[datetime | None] = mapped_column(default=None, index=True)
    grace_until: Mapped[datetime | None] = mapped_column(default=None)
    pending_plan: Mapped[str | None] = mapped_column(String(64), default=None)
    external_id: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    customer_id: Mapped[str | None] = mapped_column(String(200), default=None, index=True)
    auto_renew: Mapped[bool] = mapped_column(default=False)
    reminded_for: Mapped[datetime | None] = mapped_column(default=None)
    # The provider's time of the newest event applied: older ones arriving late change nothing.
    last_event_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime]
    # When the billing job next has something to do here (a reminder, the period's end, the
    # grace's end); None when nothing will happen by time alone. The job reads only due rows.
    due_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class PaymentRow(Base):
    """One charge (a Stars payment or a paid Stripe invoice), by the provider's charge id."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    provider: Mapped[str] = mapped_column(String(16))
    charge_id: Mapped[str] = mapped_column(String(200), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(8))
    plan: Mapped[str] = mapped_column(String(64))
    payer: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[datetime] = mapped_column(index=True)
    refunded: Mapped[bool] = mapped_column(default=False)


class BillingEventRow(Base):
    """A provider event (a Stripe webhook) already processed: each one takes effect once."""

    __tablename__ = "billing_events"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime]


class InviteRow(Base):
    """An invite code an operator made: how many sign-ups it still admits, and to which plan."""

    __tablename__ = "invites"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    plan: Mapped[str | None] = mapped_column(String(64), default=None)
    uses_left: Mapped[int] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime]


class AccessRequestRow(Base):
    """A stranger's request to sign up (``[access] mode = "approval"``)."""

    __tablename__ = "access_requests"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    plan: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    dm_chat_id: Mapped[str | None] = mapped_column(String(200), default=None)
    created_at: Mapped[datetime]


class TrialUseRow(Base):
    """An identity that has had a trial; kept after deletion so a trial is had once."""

    __tablename__ = "trial_uses"

    identity: Mapped[str] = mapped_column(String(200), primary_key=True)
    at: Mapped[datetime]


class TimezoneRow(Base):
    """A person's time zone (IANA name), asked once for their scheduled tasks."""

    __tablename__ = "tenant_timezones"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    tz: Mapped[str] = mapped_column(String(64))


class TaskRow(Base):
    """A scheduled task: its chat, its schedule, and its prompt encrypted with the data key.

    ``next_run`` is None while the person's time zone is unknown (and after a one-off ran);
    a run is claimed by a conditional UPDATE on it, so two processes never both run it.
    """

    __tablename__ = "scheduled_tasks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    conversation: Mapped[str] = mapped_column(String(400))
    when: Mapped[str] = mapped_column(String(100))
    prompt_blob: Mapped[bytes] = mapped_column(LargeBinary)
    next_run: Mapped[datetime | None] = mapped_column(index=True)
    created_at: Mapped[datetime]


class McpServerRow(Base):
    """A tenant's remote MCP server: its URL, and its token sealed with the tenant's data key.

    ``ciphertext`` is empty (and ``fingerprint`` "") until the token arrives through the intake.
    """

    __tablename__ = "mcp_servers"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    version: Mapped[int] = mapped_column(Integer, default=0)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class JobLeaseRow(Base):
    """Which replica last ran a background job, and until when no other may (PostgreSQL)."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    until: Mapped[datetime]
