"""What every flow gets: the services, the turn's event, and ways to answer."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from core import audit
from core.access import Access
from core.agent_data import ProxyAccess
from core.billing import Billing, CheckoutLinks, StarsInvoices
from core.budget import Budget
from core.chat import (
    OPEN_DM_PAYLOAD,
    Button,
    ButtonStyle,
    ChatRef,
    Document,
    Event,
    MessageRef,
    Platform,
    Reply,
    TextFormat,
    UserRef,
    button_owner_tag,
    is_link,
)
from core.config import Config
from core.conversations import DatabaseThreads
from core.credentials import Credentials
from core.db import Database
from core.flowstate import FlowStates
from core.intake import Intake
from core.livechecks import LiveChecks
from core.mcp_servers import McpServers
from core.plans import PlanCatalog
from core.ports import Agents, Clock, Messenger
from core.runtime.ports import NotesStore
from core.secret import Secret
from core.tasks import DatabaseTasks
from core.tenants import Tenants, TenantView
from core.usage import UsageLedger

log = logging.getLogger("byokbot.flows")

# Platforms whose answers to an event can be private to one person in a shared channel.
EPHEMERAL_PLATFORMS = frozenset({Platform.DISCORD, Platform.SLACK})
# Platforms with a private form (modal) that can be opened from a shared channel.
MODAL_PLATFORMS = frozenset({Platform.DISCORD, Platform.SLACK})
# Platforms whose private form is hidden input in place (the console's no-echo prompt).
HIDDEN_INPUT_PLATFORMS = frozenset({Platform.CONSOLE})


class KeyVerifier(Protocol):
    """Checks a key with a cheap live call; returns the models it reaches.

    Raises ``KeyRejected`` (the provider refused it) or ``KeyCheckFailed`` (could not ask).
    """

    async def __call__(self, provider: str, key: Secret) -> Sequence[str]: ...


class KeyRejected(Exception):
    """The provider refused the key; ``reason`` is short and secret-free."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyCheckFailed(Exception):
    """The provider could not be asked (network, timeout); ``reason`` is short."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LiveKeyCheck:
    """``KeyVerifier`` over ``core.llm.verify_key``: one cheap authenticated call per key."""

    def __init__(self, config: Config, *, timeout: float = 10.0) -> None:
        self._config = config
        self._timeout = timeout

    async def __call__(self, provider: str, key: Secret) -> Sequence[str]:
        from core.llm import verify_key
        from core.llm.errors import InvalidKey, LLMError, ModelNotFound

        settings = self._config.providers[provider]
        try:
            return await verify_key(settings.kind, settings.base_url, key, timeout=self._timeout)
        except InvalidKey:
            raise KeyRejected("invalid or revoked") from None
        except ModelNotFound:
            # Some OpenAI-compatible servers have no model list; the key itself was accepted.
            return ()
        except LLMError as exc:
            raise KeyCheckFailed(exc.code.replace("_", " ")) from None


class Refusal(Exception):
    """Raised by a flow for bad input: the router answers ``text`` and marks the turn refused.

    ``secret_retry`` marks a refused secret whose request is still open (another try is
    allowed); the router passes it on in ``Outcome.secret_retry``.
    """

    def __init__(self, text: str, *, sensitive: bool = False, secret_retry: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.sensitive = sensitive
        self.secret_retry = secret_retry


async def trial_cap_refusal(
    budget: Budget | None, tenant: TenantView, cap: int, *, longest_reply: int
) -> Refusal:
    """The trial's cap in the person's words: used up, or too little left for this request.

    The proxy refuses a request whose worst case (prompt + longest reply) does not fit, so a
    long conversation can be refused with part of the allowance left; a fresh one may fit.
    """
    from bot import texts

    spent = (await budget.summary(tenant.id, tenant.plan)).spent.tokens if budget else cap
    left = cap - spent
    # Worth saying when more than 5 % is left and a fresh conversation's reply could fit.
    if left * 20 > cap and left > longest_reply:
        return Refusal(texts.BILLING_TRIAL_CAP_LEFT.format(cap=cap, left=left))
    return Refusal(texts.BILLING_TRIAL_CAP.format(cap=cap))


class Confirmations:
    """The open Allow / Deny questions of this process, by a random id."""

    def __init__(self) -> None:
        self._open: dict[str, asyncio.Future[bool]] = {}

    def open(self) -> tuple[str, asyncio.Future[bool]]:
        cid = secrets.token_hex(8)
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._open[cid] = future
        return cid, future

    def answer(self, cid: str, allow: bool) -> bool:
        """Resolve question ``cid``; False when it is no longer open."""
        future = self._open.pop(cid, None)
        if future is None or future.done():
            return False
        future.set_result(allow)
        return True

    def close(self, cid: str) -> None:
        self._open.pop(cid, None)


@dataclass(slots=True)
class Services:
    """Everything flows may use. Built once by the composition root."""

    config: Config
    db: Database
    plans: PlanCatalog
    tenants: Tenants
    credentials: Credentials
    intake: Intake
    flow_states: FlowStates
    agents: Agents
    clock: Clock
    messengers: Mapping[Platform, Messenger]
    usage: UsageLedger
    verify_key: KeyVerifier | None = None
    budget: Budget | None = None
    rotate_master_key: Callable[[], Awaitable[tuple[int, int]]] | None = None
    live_checks: LiveChecks | None = None
    notes: NotesStore | None = None  # the agent's long-term notes (``/memory``)
    # Subscriptions and sign-up admission (issue 15); None in tests that build Services by
    # hand: every plan is then free, as before billing existed.
    billing: Billing | None = None
    access: Access | None = None
    stars: StarsInvoices | None = None
    checkout: CheckoutLinks | None = None
    tasks: DatabaseTasks | None = None  # scheduled tasks and time zones (``/tasks``)
    mcp: McpServers | None = None  # the tenants' MCP servers (``/mcp``)
    confirmations: Confirmations = field(default_factory=lambda: Confirmations())
    conversations: DatabaseThreads | None = None  # a chat's conversations (``/history``)
    # Managed tenants' scoped proxy tokens (voice notes go through the metering proxy).
    proxy_access: ProxyAccess | None = None

    async def audit(self, action: str, *, actor: str, tenant_id: str | None, **detail: Any) -> None:
        """Write an audit row that is not part of a larger change."""
        async with self.db.session() as session, session.begin():
            audit.record(
                session,
                at=self.clock.now(),
                actor=actor,
                action=action,
                tenant_id=tenant_id,
                **detail,
            )

    def is_admin(self, user: UserRef) -> bool:
        return user.identity in self.config.core.admins


def tag_buttons(rows: Sequence[Sequence[Button]], owner: UserRef) -> tuple[tuple[Button, ...], ...]:
    """Prefix each payload with the owner's tag so nobody else can press the button."""
    tag = button_owner_tag(owner)
    return tuple(
        tuple(
            b
            if b.payload.startswith("@") or is_link(b.payload)
            else Button(b.label, f"{tag}|{b.payload}", b.style)
            for b in row
        )
        for row in rows
    )


class Turn:
    """One event being handled: the person, where they are, and how to answer them."""

    def __init__(self, event: Event, services: Services, tenant: TenantView | None) -> None:
        self.event = event
        self.services = services
        self.tenant = tenant
        self.messenger = services.messengers[event.user.platform]

    @property
    def user(self) -> UserRef:
        return self.event.user

    @property
    def chat(self) -> ChatRef:
        return self.event.chat

    @property
    def actor(self) -> str:
        return self.event.user.identity

    def require_tenant(self) -> TenantView:
        from bot import texts

        if self.tenant is None:
            raise Refusal(texts.NEED_ACCOUNT)
        return self.tenant

    async def say(
        self,
        text: str,
        *,
        buttons: Sequence[Sequence[Button]] = (),
        sensitive: bool = False,
        markdown: bool = False,
        image: bytes | None = None,
        document: Document | None = None,
    ) -> MessageRef | None:
        """Answer the event. Sensitive answers stay private: ephemeral, or moved to a DM."""
        reply = Reply(
            text=text,
            buttons=tag_buttons(buttons, self.user),
            sensitive=sensitive,
            format=TextFormat.MARKDOWN if markdown else TextFormat.PLAIN,
            image=image,
            document=document,
        )
        if sensitive and not self.chat.is_direct and self.user.platform not in EPHEMERAL_PLATFORMS:
            from bot import texts

            dm = await self.messenger.open_dm(self.user)
            # The DM may also refuse the message itself (the person blocked the bot meanwhile).
            sent = None if dm is None else await self.messenger.send(dm, reply)
            if sent is None:
                # Personal details never fall back to the group.
                return await self.messenger.respond(
                    self.event,
                    Reply(
                        text=texts.DM_NEEDED,
                        buttons=((Button(texts.OPEN_DM_BUTTON, OPEN_DM_PAYLOAD),),),
                    ),
                )
            await self.messenger.respond(self.event, Reply(text=texts.SENT_TO_DM))
            return sent
        return await self.messenger.respond(self.event, reply)


def button(label: str, payload: str, *, style: ButtonStyle = ButtonStyle.DEFAULT) -> Button:
    return Button(label=label, payload=payload, style=style)
