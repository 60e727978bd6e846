"""Keys: the one-time private exchange, listing, removal, and the leak guard.

States (persisted per person): ``keys/await_secret`` with the intake session id, while a key
is awaited; cleared when the key is stored, the session expires or is locked.
"""

from __future__ import annotations

import logging

from bot import texts
from bot.flows.base import (
    EPHEMERAL_PLATFORMS,
    MODAL_PLATFORMS,
    KeyCheckFailed,
    KeyRejected,
    Refusal,
    Turn,
    button,
)
from core.chat import OPEN_DM_PAYLOAD, Button, Outcome, SecretRequest
from core.config import ProviderSettings
from core.errors import (
    IntakeError,
    IntakeLocked,
    IntakeNotYours,
    IntakeUsed,
    KeyShapeError,
)
from core.flowstate import FlowState
from core.intake import IntakePurpose, IntakeTicket
from core.keys import check_shape, normalize
from core.secret import Secret
from core.tenants import TenantStatus, TenantView

log = logging.getLogger("byokbot.flows.keys")


def provider_buttons(turn: Turn, purpose: IntakePurpose = IntakePurpose.ADD) -> list[list[Button]]:
    return [
        [button(p.name, f"prov:{p.id}:{purpose.value}")]
        for p in turn.services.config.providers.values()
    ]


def _provider(turn: Turn, name: str) -> ProviderSettings:
    providers = turn.services.config.providers
    found = providers.get(name.lower())
    if found is None:
        raise Refusal(
            texts.KEY_UNKNOWN_PROVIDER.format(provider=name[:40], providers=texts.join(providers))
        )
    return found


def _account(turn: Turn) -> TenantView:
    tenant = turn.require_tenant()
    if tenant.status is TenantStatus.SUSPENDED:
        reason = f" ({tenant.status_reason})" if tenant.status_reason else ""
        raise Refusal(texts.SUSPENDED.format(reason=reason))
    return tenant


async def handle_key(turn: Turn) -> Outcome | None:
    _account(turn)
    args = turn.event.args
    sub = args[0].lower() if args else ""
    providers = texts.join(turn.services.config.providers)
    if sub in ("add", "rotate"):
        purpose = IntakePurpose(sub)
        if len(args) < 2:
            return await ask_provider(turn, purpose)
        return await start_intake(turn, _provider(turn, args[1]), purpose)
    if sub == "remove":
        if len(args) < 2:
            raise Refusal(texts.KEY_USAGE.format(providers=providers))
        return await _remove(turn, _provider(turn, args[1]))
    if sub == "list":
        return await _list(turn)
    raise Refusal(texts.KEY_USAGE.format(providers=providers))


async def ask_provider(turn: Turn, purpose: IntakePurpose = IntakePurpose.ADD) -> Outcome | None:
    await turn.say(texts.KEY_WHICH_PROVIDER, buttons=provider_buttons(turn, purpose))
    return None


async def on_provider_button(turn: Turn, args: list[str]) -> Outcome | None:
    if len(args) != 2 or args[1] not in ("add", "rotate"):
        raise Refusal(texts.STALE_BUTTON)
    _account(turn)
    return await start_intake(turn, _provider(turn, args[0]), IntakePurpose(args[1]))


async def start_intake(
    turn: Turn, provider: ProviderSettings, purpose: IntakePurpose
) -> Outcome | None:
    """Open a one-time session and ask for the key in the most private place the platform has."""
    s = turn.services
    tenant = _account(turn)
    token, ticket = await s.intake.open(
        tenant_id=tenant.id,
        user=turn.user,
        provider=provider.id,
        purpose=purpose,
        origin_chat_id=turn.chat.id,
    )
    await s.flow_states.set(
        turn.user.identity,
        "keys",
        "await_secret",
        data={"ticket": ticket.id, "provider": provider.id},
        ttl=s.intake.ttl,
    )
    modal = turn.user.platform in MODAL_PLATFORMS
    minutes = max(1, int(s.intake.ttl.total_seconds() // 60))
    prompt = (
        texts.KEY_ASK_PROMPT_MODAL.format(provider=provider.name)
        if modal
        else texts.KEY_ASK_PROMPT.format(provider=provider.name, minutes=minutes)
    )
    request = SecretRequest(
        token=token,
        provider=provider.id,
        title=texts.KEY_ASK_TITLE.format(provider=provider.name),
        prompt=prompt,
        expires_at=ticket.expires_at,
        label=texts.KEY_ASK_LABEL.format(provider=provider.name),
    )
    reached = await turn.messenger.ask_secret(turn.event, request)
    if not reached:
        await s.intake.cancel_for(turn.user)
        await s.flow_states.clear(turn.user.identity)
        await turn.say(
            texts.KEY_DM_NEEDED.format(provider=provider.id),
            buttons=[[Button(texts.OPEN_DM_BUTTON, f"{OPEN_DM_PAYLOAD}:key")]],
        )
        return None
    if not turn.chat.is_direct and not modal:
        await turn.say(texts.KEY_MOVED_TO_DM)
    return None


def _attempts_text(left: int, provider: str, *, form: bool = False) -> str:
    if left <= 0:
        return texts.ATTEMPTS_NONE.format(provider=provider)
    # Never "send it again" after a form: the key is only taken from the form.
    return (texts.ATTEMPTS_LEFT_FORM if form else texts.ATTEMPTS_LEFT).format(n=left)


async def _failed(turn: Turn, ticket: IntakeTicket) -> tuple[str, int]:
    left = await turn.services.intake.failed_attempt(ticket)
    if left == 0:
        await turn.services.flow_states.clear(turn.user.identity)
    return _attempts_text(left, ticket.provider, form=turn.event.via_modal), left


def _intake_refusal(exc: IntakeError, provider: str | None) -> Refusal:
    if isinstance(exc, IntakeNotYours):
        return Refusal(texts.INTAKE_NOT_YOURS)
    if isinstance(exc, IntakeLocked):
        return Refusal(texts.INTAKE_LOCKED)
    if isinstance(exc, IntakeUsed):
        return Refusal(texts.INTAKE_USED)
    if provider:
        return Refusal(texts.INTAKE_EXPIRED.format(provider=provider))
    return Refusal(texts.INTAKE_EXPIRED_GENERIC)


async def _accept(turn: Turn, ticket: IntakeTicket, secret: Secret, note: str = "") -> None:
    """Check, verify, store. Refusals count an attempt; the key is never echoed."""
    s = turn.services
    provider = s.config.providers.get(ticket.provider)
    if provider is None:  # the operator removed the provider while the session was open
        raise Refusal(
            texts.KEY_UNKNOWN_PROVIDER.format(
                provider=ticket.provider, providers=texts.join(s.config.providers)
            )
        )
    key = normalize(secret)
    prefix = f"{note}\n" if note else ""
    try:
        check_shape(provider.key_shape, key)
    except KeyShapeError as exc:
        left, n = await _failed(turn, ticket)
        raise Refusal(
            prefix
            + texts.KEY_BAD_SHAPE.format(
                provider=provider.name, reason=exc.reason, attempts_left=left
            ),
            sensitive=True,
            retry=n > 0,
        ) from None
    models: list[str] = []
    if s.config.core.verify_keys_live and s.verify_key is not None:
        try:
            models = list(await s.verify_key(provider.id, key))
        except KeyRejected as exc:
            left, n = await _failed(turn, ticket)
            raise Refusal(
                prefix
                + texts.KEY_REJECTED_LIVE.format(
                    provider=provider.name, reason=exc.reason, attempts_left=left
                ),
                sensitive=True,
                retry=n > 0,
            ) from None
        except KeyCheckFailed as exc:
            # Not the person's fault: no attempt is counted.
            n = s.intake.max_attempts - ticket.attempts
            raise Refusal(
                prefix
                + texts.KEY_CHECK_FAILED.format(
                    provider=provider.name,
                    reason=exc.reason,
                    attempts_left=_attempts_text(n, provider.id, form=turn.event.via_modal),
                ),
                sensitive=True,
                retry=n > 0,
            ) from None
    await s.intake.consume(ticket)
    info = await s.credentials.store(
        ticket.tenant_id, provider.id, key, actor=turn.actor, models=models
    )
    await s.flow_states.clear(turn.user.identity)
    await s.tenants.activate(ticket.tenant_id, actor=turn.actor)
    await s.agents.reconfigure(ticket.tenant_id)
    template = texts.KEY_ROTATED if ticket.purpose is IntakePurpose.ROTATE else texts.KEY_STORED
    text = template.format(fingerprint=info.fingerprint, provider=provider.name)
    if info.replaced_same_key:
        text = f"{text}\n{texts.KEY_SAME_AS_BEFORE}"
    await turn.say(prefix + text, sensitive=True)


async def on_secret_event(turn: Turn) -> Outcome | None:
    """A secret from a private form (modal, hidden console input)."""
    secret = turn.event.secret
    if secret is None or not turn.event.intake_token:
        raise Refusal(texts.INTAKE_EXPIRED_GENERIC)
    if turn.tenant is None:
        raise Refusal(texts.NEED_ACCOUNT)
    try:
        ticket = await turn.services.intake.by_token(
            turn.event.intake_token, turn.user, tenant_id=turn.tenant.id
        )
    except IntakeError as exc:
        raise _intake_refusal(exc, None) from None
    _account(turn)
    await _accept(turn, ticket, secret)
    return None


async def on_dm_secret(turn: Turn, state: FlowState) -> Outcome | None:
    """A DM message while a key is awaited: it is the key. Delete it the moment it is read."""
    s = turn.services
    secret = Secret(turn.event.text)
    note = ""
    if turn.event.message_id is not None:
        deleted = await turn.messenger.delete(turn.chat, turn.event.message_id)
        note = texts.KEY_MESSAGE_DELETED if deleted else texts.KEY_DELETE_FAILED
    provider = str(state.data.get("provider", ""))
    try:
        ticket = await s.intake.get(str(state.data.get("ticket", "")), turn.user)
    except IntakeError as exc:
        await s.flow_states.clear(turn.user.identity)
        refusal = _intake_refusal(exc, provider or None)
        raise Refusal(f"{note}\n{refusal.text}" if note else refusal.text) from None
    await _accept(turn, ticket, secret, note)
    return None


async def on_leak(turn: Turn) -> Outcome | None:
    """A key shape in an ordinary message: never read, stored or forwarded; delete and warn."""
    deleted = False
    if turn.event.message_id is not None:
        deleted = await turn.messenger.delete(turn.chat, turn.event.message_id)
    s = turn.services
    await s.audit(
        "leak.detected",
        actor=turn.actor,
        tenant_id=turn.tenant.id if turn.tenant else None,
        platform=turn.user.platform.value,
        direct=turn.chat.is_direct,
        deleted=deleted,
    )
    log.warning(
        "key shape seen in an ordinary message on %s (deleted=%s)",
        turn.user.platform.value,
        deleted,
    )
    # Ephemeral where the platform has it (only the sender sees it); elsewhere in place, since
    # everyone who saw the key should know it is burnt.
    await turn.say(
        texts.LEAK_WARNING.format(
            deleted=texts.LEAK_DELETED if deleted else texts.LEAK_NOT_DELETED
        ),
        sensitive=turn.user.platform in EPHEMERAL_PLATFORMS,
    )
    return Outcome(refused=True)


async def _remove(turn: Turn, provider: ProviderSettings) -> Outcome | None:
    tenant = _account(turn)
    s = turn.services
    info = await s.credentials.remove(tenant.id, provider.id, actor=turn.actor)
    if info is None:
        raise Refusal(texts.KEY_NONE_FOR.format(provider=provider.name))
    await s.agents.reconfigure(tenant.id)
    await turn.say(
        texts.KEY_REMOVED.format(provider=provider.name, fingerprint=info.fingerprint),
        sensitive=True,
    )
    return None


async def _list(turn: Turn) -> Outcome | None:
    tenant = _account(turn)
    stored = await turn.services.credentials.list(tenant.id)
    if not stored:
        await turn.say(texts.KEY_LIST_EMPTY, sensitive=True)
        return None
    lines = "\n".join(
        texts.KEY_LINE.format(
            provider=k.provider,
            fingerprint=k.fingerprint,
            status=k.status.value,
            date=texts.day(k.created_at),
        )
        for k in stored
    )
    await turn.say(texts.KEY_LIST.format(lines=lines), sensitive=True)
    return None
