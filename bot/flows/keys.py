"""Keys: the one-time private exchange, listing, removal, and the leak guard.

States (persisted per person): ``keys/await_secret`` while a key is awaited; cleared when the
key is stored, the request is cancelled, the session expires or is locked. Its data: the
intake session id (``ticket``), ``provider``, how the answer comes back
(``answer``: ``modal`` — only from the form; ``reply`` — a DM replying to the ``prompt``
message; ``form`` — hidden input) and whether the person was told the request is still open
(``noted``).

While a key is awaited, a DM is the key only where the answer is not a modal, and only when
it replies to the prompt or has a key's shape; anything else goes on to the agent, with a
one-line note (once) that the request is still open. Where the key comes from a modal, a DM is
never the key: a key-shaped one is the leak guard's case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bot import texts
from bot.flows.base import (
    EPHEMERAL_PLATFORMS,
    HIDDEN_INPUT_PLATFORMS,
    MODAL_PLATFORMS,
    KeyCheckFailed,
    KeyRejected,
    Refusal,
    Turn,
    button,
    tag_buttons,
)
from core.chat import OPEN_DM_PAYLOAD, Button, MessageRef, Outcome, Reply, SecretRequest
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
from core.keys import check_shape, normalize, resembles_key
from core.livechecks import LiveCheckScope
from core.secret import Secret
from core.tenants import TenantStatus, TenantView

log = logging.getLogger("byokbot.flows.keys")

# How the awaited key comes back (the ``answer`` of the state).
ANSWER_MODAL = "modal"  # only from the form (Discord, Slack)
ANSWER_REPLY = "reply"  # a DM replying to the prompt message (Telegram)
ANSWER_FORM = "form"  # hidden input (the console)


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


@dataclass(frozen=True, slots=True)
class IntakeWords:
    """What the private prompt says (an API key's words, or an MCP server token's)."""

    title: str
    prompt: str  # {minutes}
    prompt_hidden: str  # {minutes}
    prompt_modal: str
    label: str
    dm_needed: str


async def start_intake(
    turn: Turn, provider: ProviderSettings, purpose: IntakePurpose
) -> Outcome | None:
    """Open a one-time session and ask for the key in the most private place the platform has."""
    p = provider.name
    words = IntakeWords(
        title=texts.KEY_ASK_TITLE.format(provider=p),
        prompt=texts.KEY_ASK_PROMPT.replace("{provider}", p),
        prompt_hidden=texts.KEY_ASK_PROMPT_HIDDEN.replace("{provider}", p),
        prompt_modal=texts.KEY_ASK_PROMPT_MODAL.format(provider=p),
        label=texts.KEY_ASK_LABEL.format(provider=p),
        dm_needed=texts.KEY_DM_NEEDED.format(provider=provider.id),
    )
    return await open_intake(turn, provider.id, purpose, words)


async def open_intake(
    turn: Turn, provider_id: str, purpose: IntakePurpose, words: IntakeWords
) -> Outcome | None:
    """The one-time private exchange for ``provider_id`` (a provider, or ``mcp:<server>``)."""
    s = turn.services
    tenant = _account(turn)
    token, ticket = await s.intake.open(
        tenant_id=tenant.id,
        user=turn.user,
        provider=provider_id,
        purpose=purpose,
        origin_chat_id=turn.chat.id,
    )
    modal = turn.user.platform in MODAL_PLATFORMS
    data: dict[str, object] = {
        "ticket": ticket.id,
        "provider": provider_id,
        "answer": ANSWER_MODAL if modal else ANSWER_REPLY,
    }
    # Written before asking, so a restart right after the prompt still knows it is open.
    await s.flow_states.set(turn.user.identity, "keys", "await_secret", data=data, ttl=s.intake.ttl)
    minutes = max(1, int(s.intake.ttl.total_seconds() // 60))
    if modal:
        prompt = words.prompt_modal
    elif turn.user.platform in HIDDEN_INPUT_PLATFORMS:
        prompt = words.prompt_hidden.format(minutes=minutes)
    else:
        prompt = words.prompt.format(minutes=minutes)
    request = SecretRequest(
        token=token,
        provider=provider_id,
        title=words.title,
        prompt=prompt,
        expires_at=ticket.expires_at,
        label=words.label,
    )
    reached = await turn.messenger.ask_secret(turn.event, request)
    if reached is False:
        await s.intake.cancel_for(turn.user)
        await s.flow_states.clear(turn.user.identity)
        await turn.say(
            words.dm_needed,
            buttons=[[Button(texts.OPEN_DM_BUTTON, f"{OPEN_DM_PAYLOAD}:key")]],
        )
        return None
    if not modal:
        if isinstance(reached, MessageRef):
            data["prompt"] = reached.id
        else:
            data["answer"] = ANSWER_FORM
        await s.flow_states.set(
            turn.user.identity, "keys", "await_secret", data=data, ttl=s.intake.ttl
        )
    if isinstance(reached, MessageRef):
        # The prompt itself cannot carry a button (Telegram: ForceReply or a keyboard, not both).
        await turn.messenger.send(
            reached.chat,
            Reply(
                text=texts.KEY_CANCEL_HINT,
                buttons=tag_buttons(
                    [[button(texts.CANCEL_BUTTON, f"cancel:{ticket.id}")]], turn.user
                ),
            ),
        )
    if not turn.chat.is_direct and not modal:
        await turn.say(texts.KEY_MOVED_TO_DM)
    return None


def _answer_mode(turn: Turn, state: FlowState) -> str:
    mode = state.data.get("answer")
    if isinstance(mode, str):
        return mode
    # A state written before answer modes existed.
    return ANSWER_MODAL if turn.user.platform in MODAL_PLATFORMS else ANSWER_REPLY


def answers_prompt(turn: Turn, state: FlowState) -> bool:
    """Whether a DM, while a key is awaited, is the key: a reply to the prompt, or key-shaped."""
    mode = _answer_mode(turn, state)
    if mode == ANSWER_MODAL:
        return False  # only the form gives the key; a key-shaped DM is the leak guard's case
    event = turn.event
    prompt = state.data.get("prompt")
    if event.reply_to is not None and (prompt is None or event.reply_to == str(prompt)):
        return mode == ANSWER_REPLY
    return looks_like_awaited_key(turn, state)


def looks_like_awaited_key(turn: Turn, state: FlowState) -> bool:
    """Whether a message has the shape of the key being awaited (or of any credential)."""
    provider = turn.services.config.providers.get(str(state.data.get("provider", "")))
    return resembles_key(turn.event.text, provider.key_shape if provider else "generic")


async def note_still_open(turn: Turn, state: FlowState) -> None:
    """Tell the person, once, that their key request is still open and how to answer it."""
    mode = _answer_mode(turn, state)
    if mode == ANSWER_MODAL or state.data.get("noted"):
        return
    s = turn.services
    provider = s.config.providers.get(str(state.data.get("provider", "")))
    name = provider.name if provider else str(state.data.get("provider", ""))
    template = texts.KEY_STILL_OPEN_REPLY if mode == ANSWER_REPLY else texts.KEY_STILL_OPEN
    if state.expires_at is not None:
        left = state.expires_at - s.clock.now()
        if left.total_seconds() > 0:
            await s.flow_states.set(
                turn.user.identity,
                state.flow,
                state.step,
                data={**state.data, "noted": True},
                ttl=left,
            )
    await turn.say(template.format(provider=name))


def _attempts_left(turn: Turn, left: int) -> str:
    # A form shows the error beside the field (or offers to reopen it): no "send it again".
    template = texts.ATTEMPTS_LEFT_FORM if turn.event.via_modal else texts.ATTEMPTS_LEFT
    return template.format(n=left)


def _attempts_text(turn: Turn, left: int, provider: str) -> str:
    return _attempts_left(turn, left) if left > 0 else texts.ATTEMPTS_NONE.format(provider=provider)


async def _failed(turn: Turn, ticket: IntakeTicket) -> tuple[str, bool]:
    """Count a refused attempt: the words for what is left, and whether a try is left."""
    left = await turn.services.intake.failed_attempt(ticket)
    if left == 0:
        await turn.services.flow_states.clear(turn.user.identity)
    return _attempts_text(turn, left, ticket.provider), left > 0


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
    if ticket.provider.startswith("mcp:"):
        from bot.flows import mcp  # it builds on this module's intake

        await mcp.accept_token(turn, ticket, secret, note)
        return
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
        left, retry = await _failed(turn, ticket)
        raise Refusal(
            prefix
            + texts.KEY_BAD_SHAPE.format(
                provider=provider.name, reason=exc.reason, attempts_left=left
            ),
            sensitive=True,
            secret_retry=retry,
        ) from None
    models: list[str] = []
    if s.config.core.verify_keys_live and s.verify_key is not None:
        await _admit_live_check(turn, provider, prefix)
        try:
            models = list(await s.verify_key(provider.id, key))
        except KeyRejected as exc:
            left, retry = await _failed(turn, ticket)
            raise Refusal(
                prefix
                + texts.KEY_REJECTED_LIVE.format(
                    provider=provider.name, reason=exc.reason, attempts_left=left
                ),
                sensitive=True,
                secret_retry=retry,
            ) from None
        except KeyCheckFailed as exc:
            # Not the person's fault: no attempt is counted.
            raise Refusal(
                prefix
                + texts.KEY_CHECK_FAILED.format(
                    provider=provider.name,
                    reason=exc.reason,
                    attempts_left=_attempts_left(turn, s.intake.max_attempts - ticket.attempts),
                ),
                sensitive=True,
                secret_retry=True,
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


async def _admit_live_check(turn: Turn, provider: ProviderSettings, prefix: str) -> None:
    """The live check is bounded per person and platform-wide (it must be no key oracle)."""
    limits = turn.services.live_checks
    if limits is None:
        return
    refused = await limits.admit(turn.user.identity)
    if refused is None:
        return
    log.warning("live key check refused: %s bound of %d per hour", refused.scope, refused.limit)
    template = (
        texts.KEY_CHECKS_PERSON_LIMIT
        if refused.scope is LiveCheckScope.PERSON
        else texts.KEY_CHECKS_PLATFORM_LIMIT
    )
    text = template.format(limit=refused.limit, minutes=refused.minutes, provider=provider.id)
    raise Refusal(prefix + text, sensitive=True)


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


async def on_secret_cancelled(turn: Turn) -> Outcome | None:
    """The person closed the form without saving: the request it was opened for ends."""
    s = turn.services
    token = turn.event.intake_token
    if not token or turn.tenant is None:
        return None
    try:
        ticket = await s.intake.by_token(token, turn.user, tenant_id=turn.tenant.id)
    except IntakeError:
        return None  # that request had already ended (used, expired, replaced): nothing to say
    cancelled = await s.intake.cancel(ticket.id)
    state = await s.flow_states.get(turn.user.identity)
    if state is not None and state.flow == "keys" and state.data.get("ticket") == ticket.id:
        await s.flow_states.clear(turn.user.identity)
    if cancelled:
        await turn.say(texts.KEY_REQUEST_CANCELLED, sensitive=True)
    return None


async def on_dm_secret(turn: Turn, state: FlowState) -> Outcome | None:
    """The awaited key, as a DM (see ``answers_prompt``). Delete it the moment it is read."""
    s = turn.services
    secret = Secret(turn.event.text)
    note = ""
    if turn.event.message_id is not None:
        deleted = await turn.messenger.delete(turn.chat, turn.event.message_id)
        note = texts.KEY_MESSAGE_DELETED if deleted else texts.KEY_DELETE_FAILED
    provider = str(state.data.get("provider", ""))
    if note == texts.KEY_MESSAGE_DELETED and provider.startswith("mcp:"):
        note = texts.MCP_MESSAGE_DELETED
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
