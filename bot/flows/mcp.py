"""``/mcp``: the tenant's remote MCP servers, and the Allow / Deny question for their tools.

``/mcp add <name> <url>`` records the server and opens the same one-time private intake as
an API key (the session's provider is ``mcp:<name>``), so the token is deleted from the chat,
encrypted with the tenant's data key, fingerprinted and rotatable (``/mcp rotate <name>``).
``/mcp`` lists, ``/mcp remove <name>`` removes. Every change moves the tenant to a new agent
process (the servers and tokens are part of its profile).

Before the agent runs a tool its server does not annotate read-only, the chat shows the call
with Allow / Deny buttons; the press resolves the question held here (``base.Confirmations``). The
press is routed without the conversation lock, which the streaming reply holds.
"""

from __future__ import annotations

import asyncio
import logging

from bot import texts
from bot.flows.base import Refusal, Turn, button
from bot.flows.keys import IntakeWords, _account, _failed, open_intake
from core.chat import MessageRef, Outcome, Reply
from core.intake import IntakePurpose, IntakeTicket
from core.keys import normalize
from core.mcp_servers import MAX_TOKEN_CHARS, BadMcpServer, McpServers, check_name, check_url
from core.runtime.ports import ConfirmRequest
from core.secret import Secret

log = logging.getLogger("byokbot.flows.mcp")

CONFIRM_ACTION = "mcpc"


def _store(turn: Turn) -> McpServers:
    store = turn.services.mcp
    if store is None or turn.services.config.mcp.max_servers == 0:
        raise Refusal(texts.MCP_OFF)
    return store


def _words(name: str) -> IntakeWords:
    return IntakeWords(
        title=texts.MCP_ASK_TITLE.format(name=name),
        prompt=texts.MCP_ASK_PROMPT.replace("{name}", name),
        prompt_hidden=texts.MCP_ASK_PROMPT_HIDDEN.replace("{name}", name),
        prompt_modal=texts.MCP_ASK_PROMPT_MODAL.format(name=name),
        label=texts.MCP_ASK_LABEL.format(name=name)[:45],
        dm_needed=texts.MCP_DM_NEEDED.format(name=name),
    )


def _name(raw: str) -> str:
    try:
        return check_name(raw)
    except BadMcpServer:
        raise Refusal(texts.MCP_BAD_NAME.format(name=raw[:40])) from None


async def handle_mcp(turn: Turn) -> Outcome | None:
    tenant = _account(turn)
    store = _store(turn)
    args = turn.event.args
    sub = args[0].lower() if args else "list"
    if sub == "list" and len(args) <= 1:
        return await _list(turn, store, tenant.id)
    if sub == "add" and len(args) == 3:
        return await _add(turn, store, tenant.id, _name(args[1]), args[2])
    if sub == "rotate" and len(args) == 2:
        name = _name(args[1])
        if not await store.exists(tenant.id, name):
            raise Refusal(texts.MCP_UNKNOWN.format(name=name))
        return await open_intake(turn, f"mcp:{name}", IntakePurpose.ROTATE, _words(name))
    if sub == "remove" and len(args) == 2:
        name = _name(args[1])
        if not await store.remove(tenant.id, name, actor=turn.actor):
            raise Refusal(texts.MCP_UNKNOWN.format(name=name))
        await turn.services.agents.reconfigure(tenant.id)
        await turn.say(texts.MCP_REMOVED.format(name=name))
        return None
    raise Refusal(texts.MCP_USAGE)


async def _list(turn: Turn, store: McpServers, tenant_id: str) -> Outcome | None:
    servers = await store.list(tenant_id)
    if not servers:
        await turn.say(texts.MCP_LIST_EMPTY)
        return None
    lines = "\n".join(
        texts.MCP_LINE.format(
            name=m.name,
            url=m.url,
            token=m.fingerprint or texts.MCP_NO_TOKEN,
            date=texts.day(m.created_at),
        )
        for m in servers
    )
    await turn.say(texts.MCP_LIST.format(lines=lines), sensitive=True)
    return None


async def _add(
    turn: Turn, store: McpServers, tenant_id: str, name: str, url: str
) -> Outcome | None:
    config = turn.services.config
    try:
        checked = check_url(url, config.tools.web_fetch.allow_networks)
    except BadMcpServer as exc:
        raise Refusal(texts.MCP_BAD_URL.get(str(exc), texts.MCP_BAD_URL["url"])) from None
    known = await store.list(tenant_id)
    if any(m.name == name for m in known):
        raise Refusal(texts.MCP_EXISTS.format(name=name))
    if len(known) >= config.mcp.max_servers:
        raise Refusal(texts.MCP_TOO_MANY.format(limit=config.mcp.max_servers))
    await store.add(tenant_id, name, checked, actor=turn.actor)
    await turn.say(texts.MCP_ADDED.format(name=name, url=checked))
    return await open_intake(turn, f"mcp:{name}", IntakePurpose.ADD, _words(name))


async def accept_token(turn: Turn, ticket: IntakeTicket, secret: Secret, note: str) -> None:
    """The server's token from the private intake: check, seal, and move to a new agent."""
    s = turn.services
    store = _store(turn)
    name = ticket.provider.removeprefix("mcp:")
    prefix = f"{note}\n" if note else ""
    token = normalize(secret)
    value = token.reveal()
    if not value or len(value) > MAX_TOKEN_CHARS or any(c.isspace() for c in value):
        left, retry = await _failed(turn, ticket)
        raise Refusal(
            prefix + texts.MCP_BAD_TOKEN.format(attempts_left=left),
            sensitive=True,
            secret_retry=retry,
        )
    await s.intake.consume(ticket)
    shown = await store.set_token(ticket.tenant_id, name, token, actor=turn.actor)
    await s.flow_states.clear(turn.user.identity)
    if shown is None:  # removed while the request was open
        raise Refusal(prefix + texts.MCP_UNKNOWN.format(name=name), sensitive=True)
    await s.agents.reconfigure(ticket.tenant_id)
    template = (
        texts.MCP_TOKEN_ROTATED if ticket.purpose is IntakePurpose.ROTATE else texts.MCP_TOKEN_SAVED
    )
    await turn.say(prefix + template.format(name=name, fingerprint=shown), sensitive=True)


async def ask(turn: Turn, request: ConfirmRequest) -> bool:
    """Show the call with Allow / Deny and wait for the press (the caller bounds the time)."""
    confirms = turn.services.confirmations
    cid, answer = confirms.open()
    text = texts.MCP_CONFIRM.format(
        server=request.server, tool=request.tool, arguments=request.arguments or "{}"
    )
    ref = await turn.say(
        text,
        buttons=[
            [
                button(texts.MCP_ALLOW_BUTTON, f"{CONFIRM_ACTION}:{cid}:1"),
                button(texts.MCP_DENY_BUTTON, f"{CONFIRM_ACTION}:{cid}:0"),
            ]
        ],
    )
    try:
        allowed = await answer
    except asyncio.CancelledError:
        # No answer in time (or the reply was stopped): the question closes as a refusal.
        if ref is not None:
            await _mark(turn, ref, f"{text}\n{texts.MCP_CONFIRM_EXPIRED}")
        raise
    finally:
        confirms.close(cid)
    if ref is not None:
        outcome = texts.MCP_CONFIRM_ALLOWED if allowed else texts.MCP_CONFIRM_DENIED
        await _mark(turn, ref, f"{text}\n{outcome}")
    return allowed


async def _mark(turn: Turn, ref: MessageRef, text: str) -> None:
    """Show the question's outcome on it; a question the person deleted ends nothing."""
    try:
        await turn.messenger.edit(ref, Reply(text))
    except Exception as exc:  # noqa: BLE001 - the decision stands; only its mark is missing
        log.info("tool confirmation not marked (%s)", type(exc).__name__)


async def on_confirm_button(turn: Turn, args: list[str]) -> Outcome | None:
    if len(args) != 2 or args[1] not in ("0", "1"):
        raise Refusal(texts.STALE_BUTTON)
    if not turn.services.confirmations.answer(args[0], args[1] == "1"):
        raise Refusal(texts.MCP_CONFIRM_STALE)
    return None


def is_confirm_press(payload: str) -> bool:
    """Whether a button's payload (``<owner tag>|...``) answers an Allow / Deny question."""
    return payload.partition("|")[2].startswith(f"{CONFIRM_ACTION}:")
