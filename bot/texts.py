"""Every user-facing string. Tests assert against these, so wording lives in one place."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from core.chat import AttachmentKind
from core.config import PlanSettings


@dataclass(frozen=True, slots=True)
class Counted:
    """A text that depends on a count: ``format(n=...)`` picks the singular or the plural."""

    one: str
    other: str

    def format(self, *, n: int, **values: object) -> str:
        return (self.one if n == 1 else self.other).format(n=n, **values)


# -- general -----------------------------------------------------------------------------

CONSOLE_BANNER = (
    "byokbot console — type /start to begin, /help for commands, Ctrl-D or Ctrl-C to quit."
)
OOPS = (
    "Sorry — something went wrong on our side while handling that. Nothing was lost; "
    "please try again in a moment."
)
UNKNOWN_COMMAND = "I don't know the command /{command}. Send /help to see what I can do."
TOO_LONG = (
    "That message is too long for me ({length} characters; the limit is {limit}). "
    "Please send it in shorter parts."
)
SLOW_DOWN = "You're sending messages faster than I can take them. Please wait a few seconds."
NOT_ADMIN = "Only operators can use /admin."
STALE_BUTTON = (
    "That button is from an older message and no longer does anything. Send /help to start again."
)
NOT_YOUR_BUTTON = "That button belongs to someone else's conversation."
NEED_ACCOUNT = "You don't have an agent yet. Send /start to set one up."
EMPTY_MESSAGE = "I can only read text messages for now."

# -- media ------------------------------------------------------------------------------------

MEDIA_NAMES = {
    AttachmentKind.PHOTO: "photos",
    AttachmentKind.VOICE: "voice messages",
    AttachmentKind.AUDIO: "audio files",
    AttachmentKind.VIDEO: "videos",
    AttachmentKind.DOCUMENT: "files",
    AttachmentKind.STICKER: "stickers",
}
MEDIA_ONLY = (
    "Your agent can't read {what} yet, only text. Please type your message instead "
    "and I'll pass it on."
)
MEDIA_DROPPED = (
    "Note: your agent can't read {what} yet, so I passed on only the text you wrote with it."
)


# Photos, voice notes and documents the agent reads (bot/flows/media.py).
MEDIA_TOO_LARGE = (
    "That {what} is too large for me ({size}; the limit is {limit}). Please send a smaller one."
)
MEDIA_UNAVAILABLE = (
    "I couldn't download that file from the chat service. Please try sending it again."
)
MEDIA_TOO_MANY_IMAGES = "I can pass on at most {limit} photos at once. Please send fewer."
MEDIA_NO_IMAGES = (
    "The model {model} can't look at images. Choose another with /model, or describe the "
    "picture in words."
)
MEDIA_TRANSCRIPT = "🎙️ I heard: “{text}”"
MEDIA_VOICE_NEEDS_KEY = (
    "To understand voice messages I need an OpenAI API key (for transcription). Add one with "
    "/key add openai, or type your message instead."
)
MEDIA_VOICE_MANAGED = (
    "Voice messages aren't available on the managed plan on this server. Please type your "
    "message instead."
)
MEDIA_TRANSCRIPTION_FAILED = {
    "invalid_key": (
        "Your OpenAI key was refused when transcribing the voice message. Check it with "
        "/key list, or type your message instead."
    ),
    "rate_limited": "The transcription service is busy right now. Please try again in a minute.",
    "network": "I couldn't reach the transcription service. Please try again in a minute.",
    "empty": "I couldn't hear any words in that voice message. Please try again or type it.",
    "failed": "Transcribing the voice message failed. Please try again or type your message.",
}
# A managed tenant's voice note goes through our metering proxy: a failure there is ours.
MEDIA_TRANSCRIPTION_FAILED_MANAGED = {
    "invalid_key": (
        "Sorry — our managed service couldn't authorise that voice message. The problem is on "
        "our side, not with your account; please send it again."
    ),
    "rate_limited": (
        "You're sending requests faster than your plan allows. Please try the voice message "
        "again in a minute."
    ),
    "network": (
        "Sorry — our transcription service can't be reached right now. The problem is on our "
        "side, not yours; please try again in a minute, or type your message."
    ),
    "empty": MEDIA_TRANSCRIPTION_FAILED["empty"],
    "failed": (
        "Sorry — our transcription service failed on that voice message. The problem is on our "
        "side, not yours; please try again, or type your message."
    ),
}
MEDIA_REFUSED = {
    "image_type": "I can read JPEG, PNG, GIF and WebP images only. Please send it as one of those.",
    "document_type": (
        "I can read text, Markdown, code and PDF files only. Please send the file in one of "
        "those formats, or paste the text."
    ),
    "document_empty": (
        "I found no text in that file (a scanned PDF has only pictures of pages). Please send "
        "a file with text in it."
    ),
    "pdf_unreadable": (
        "I couldn't read that PDF (it is damaged or password-protected). Please send another "
        "copy, or paste the text."
    ),
    "pdf_pages": (
        "That PDF has {pages} pages; I read at most {limit}. Please send the part you need."
    ),
    "document_chars": (
        "That file has {chars} characters of text; I pass on at most {limit}. Please send the "
        "part you need."
    ),
}


def media_names(kinds: Iterable[AttachmentKind]) -> str:
    """``photos``, ``photos or files``: the kinds of media in a message, for prose."""
    names = list(dict.fromkeys(MEDIA_NAMES[k] for k in kinds))
    if len(names) <= 1:
        return names[0] if names else "attachments"
    return ", ".join(names[:-1]) + " or " + names[-1]


HELP = """Here's what I can do:
/start — set up your agent
/plan — see or change your plan
/key add <provider> — hand over an API key privately (also: rotate, remove, list)
/status — your plan, keys and agent
/model — choose the model · /persona <text> — set how your agent behaves
/reset — forget this conversation · /stop — stop a reply in progress
/new — start a new conversation · /compact — summarise this one to free up room
/history — recent conversations: switch back, or export this one as a file
/memory — what your agent remembers about you (and erase it)
/tasks — your scheduled reminders · /timezone <zone> — your time zone for them
/mcp add <name> <url> — connect an MCP server's tools (also: rotate, remove; /mcp lists)
/usage — tokens used this month
/pause · /resume — pause or resume your agent
/link — use the same agent from another chat app
/whoami — your id here (what an operator puts in the admin list)
/cancel — drop a pending key request or confirmation
/delete — erase your account and everything in it
Anything else you write goes to your agent."""

ADMIN_HELP = """Operator commands:
/admin stats — totals
/admin tenants [page] — list tenants
/admin tenant <id | platform:user> — one tenant
/admin suspend <tenant> [reason] · /admin resume <tenant>
/admin setplan <tenant> <plan>
/admin audit [tenant] — recent audit entries
/admin broadcast <text> — message every tenant
/admin models — the managed plans' curated models and prices
/admin rotate-master-key — rewrap every data key under a new master key
/admin invite [plan] [uses] — an invite code · /admin requests — waiting sign-ups
/admin revenue — MRR and subscriptions · /admin comp <tenant> <plan> <days>
/admin refund <charge id> — refund a Stars payment"""

# -- onboarding and plans -----------------------------------------------------------------

WELCOME = (
    "Hi! I'm byokbot. I run your own AI agent, right here in chat.\nPick a plan to get started:"
)
WELCOME_BACK = "Welcome back! You're on the {plan} plan. Send /help to see what I can do."


def plan_line(plan: PlanSettings, *, priced: bool = True) -> str:
    """One plan in a list; without a payment provider no price is promised."""
    if not priced:
        return f"• {plan.name}: {plan.description}"
    return f"• {plan.name} — ${plan.price_usd:g}/month: {plan.description}"


def plan_button(plan: PlanSettings, *, priced: bool = True) -> str:
    return f"{plan.name} (${plan.price_usd:g}/mo)" if priced else plan.name


PLAN_CHOOSE = "Choose a plan:\n{lines}"
PLAN_CURRENT = "You're on the {plan} plan. Choose another to switch:\n{lines}"
PLAN_SAME = "You're already on the {plan} plan."
PLAN_CHANGED = (
    "Done — you're now on the {plan} plan. Your keys, conversations and settings are kept."
)
PLAN_UNKNOWN = "There's no plan called “{plan}”. Available: {plans}."
PLAN_MANAGED_OFF = (
    "The {plan} plan isn't available on this server: the operator hasn't enabled it. "
    "You can use your own API key instead — send /plan {byok}."
)
SIGNED_UP = "Welcome aboard — you're on the {plan} plan."
BYOK_NEEDS_KEY = "The {plan} plan runs on your own key. Which provider is it from?"
MANAGED_READY = "You're all set: just write to me and your agent will answer."
ALL_SET = "Your agent is ready: just write to me and it will answer."

# -- keys -----------------------------------------------------------------------------

KEY_USAGE = "Use /key add <provider>, /key rotate <provider>, /key remove <provider> or /key list.\nProviders: {providers}."
KEY_WHICH_PROVIDER = "Which provider is the key from?"
KEY_UNKNOWN_PROVIDER = "I don't know the provider “{provider}”. Available: {providers}."
KEY_ASK_TITLE = "Your {provider} API key"
KEY_ASK_PROMPT = (
    "Paste your {provider} API key as a reply to this message. I'll delete your message "
    "the moment I've read it and keep the key encrypted. This request expires in {minutes} minutes."
)
KEY_ASK_PROMPT_HIDDEN = (
    "Paste your {provider} API key at the hidden prompt below — nothing you type is shown. "
    "Press Enter on an empty line to cancel. This request expires in {minutes} minutes."
)
KEY_ASK_PROMPT_MODAL = (
    "Paste your {provider} API key. It is encrypted at rest and never shown in chat."
)
# A form field's label: Discord cuts labels at 45 characters.
KEY_ASK_LABEL = "{provider} API key"
KEY_MOVED_TO_DM = (
    "I've sent you a private message to collect the key — keys never belong in a group."
)
KEY_DM_NEEDED = (
    "I can't message you privately yet. Open a private chat with me, press Start, "
    "then send /key add {provider} there."
)
KEY_SECRET_ASKED = "Waiting for your key — use the private prompt I just opened."
KEY_CANCEL_HINT = "Changed your mind? Press Cancel or send /cancel."
CANCEL_BUTTON = "Cancel"
KEY_STILL_OPEN_REPLY = (
    "(Your {provider} key request is still open: send the key as a reply to my key message, "
    "or /cancel to drop it.)"
)
KEY_STILL_OPEN = (
    "(Your {provider} key request is still open: paste the key, or send /cancel to drop it.)"
)
KEY_REQUEST_CANCELLED = (
    "Key request cancelled — nothing was saved. Send /key add <provider> when you're ready."
)
LINK_CODE_CANCELLED = "The link code I gave you no longer works."
FLOW_CANCELLED = "Cancelled."
NOTHING_TO_CANCEL = "There's nothing to cancel."
KEY_STORED = "Key saved: {fingerprint} ({provider}). Your agent will use it from the next message."
KEY_ROTATED = "Key rotated: {fingerprint} ({provider}). Replies in progress finish on the old key; new ones use the new key."
KEY_SAME_AS_BEFORE = "Note: that is the same key you had before."
KEY_MESSAGE_DELETED = "I deleted your message with the key from this chat."
KEY_DELETE_FAILED = (
    "I couldn't delete your message with the key (the platform didn't allow it). Please "
    "delete it yourself, and consider rotating the key at your provider."
)
KEY_BAD_SHAPE = "That doesn't look like a valid {provider} key ({reason}). {attempts_left}"
KEY_REJECTED_LIVE = "{provider} refused that key ({reason}). {attempts_left}"
KEY_CHECKS_PERSON_LIMIT = (
    "I check at most {limit} keys per person per hour with the provider, so nobody can use me "
    "to test keys, and you've reached that. Your key was not checked or saved. Try again in "
    "{minutes} minute(s) with /key add {provider}."
)
KEY_CHECKS_PLATFORM_LIMIT = (
    "Too many keys are being checked right now (at most {limit} an hour for everyone), so "
    "yours was not checked or saved. Try again in {minutes} minute(s) with /key add {provider}."
)
KEY_CHECK_FAILED = "I couldn't reach {provider} to check the key ({reason}). {attempts_left}"
ATTEMPTS_LEFT = Counted(
    one="You can try 1 more time — send it again.",
    other="You can try {n} more times — send it again.",
)
ATTEMPTS_LEFT_FORM = Counted(
    one="You can try again (1 attempt left).",
    other="You can try again ({n} attempts left).",
)
ATTEMPTS_NONE = "That was the last attempt; send /key add {provider} to start over."
INTAKE_EXPIRED = "That key request has expired. Send /key add {provider} to start a new one."
INTAKE_EXPIRED_GENERIC = (
    "That key request has expired or was already used. Send /key add <provider> to start a new one."
)
INTAKE_NOT_YOURS = (
    "That key request belongs to someone else. Send /key add <provider> to start your own."
)
INTAKE_LOCKED = "Too many attempts for that key request. Send /key add <provider> to start over."
INTAKE_USED = (
    "That key request was already used. Send /key add <provider> if you want to change the key."
)
INTAKE_PRIVATE_ONLY = "Keys can only be handed over in a private chat with me."
KEY_LIST_EMPTY = "You have no keys stored. Add one with /key add <provider>."
KEY_LIST = "Your keys:\n{lines}"
KEY_LINE = "• {provider}: {fingerprint} — {status}, added {date}"
KEY_REMOVED = "Removed your {provider} key ({fingerprint})."
KEY_NONE_FOR = "You have no {provider} key stored."
KEY_DEAD = (
    "Your {provider} key ({fingerprint}) was refused by the provider — it may have been "
    "revoked. Send /key rotate {provider} to replace it."
)

LEAK_WARNING = (
    "That message looked like it contained an API key, so I did not read or keep it. "
    "{deleted} Treat the key as exposed: revoke it at the provider and add a new one with "
    "/key rotate in a private chat with me."
)
LEAK_DELETED = "I deleted the message."
LEAK_NOT_DELETED = "I couldn't delete the message — please delete it yourself."

# -- account ----------------------------------------------------------------------------

STATUS = """Plan: {plan} ({price})
Account: {status}{paused}
Model: {model}
Keys: {keys}"""
ACCOUNT_STATES = {
    "trial": "not set up yet",
    "active": "active",
    "suspended": "suspended by an operator",
    "deleted": "erased",
}
ACCOUNT_NEEDS_KEY = "waiting for your API key"
STATUS_MODEL = "{model} ({provider})"
STATUS_MODEL_DEFAULT = "{model} ({provider}'s default)"
STATUS_MODEL_NONE = "none until you add a key"
MANAGED_NAME = "the plan"
PAUSED = "Your agent is paused. Send /resume when you want it back."
RESUMED = "Your agent is back. Write to it any time."
ALREADY_PAUSED = "Your agent is already paused."
NOT_PAUSED = "Your agent isn't paused."
SUSPENDED = "Your account is suspended by an operator{reason}. Contact support to resume it."
DELETE_CONFIRM = (
    "This erases your account: keys, conversations and settings are destroyed and cannot be "
    "recovered. Are you sure?"
)
DELETE_YES = "Yes, erase everything"
DELETE_NO = "No, keep it"
DELETED = (
    "Your account and everything in it has been erased. Send /start if you ever want to come back."
)
DELETE_CANCELLED = "Nothing was deleted."
LINK_CODE = (
    "To use this agent from another chat app, send this there within {minutes} minutes:\n"
    "/link {code}\nThe code works once."
)
LINKED = "Linked! This account now talks to the same agent, with the same plan and keys."
LINK_ALREADY_SAME = "This account is already linked to that agent."
LINK_HAS_OWN = (
    "This account already has its own agent. To link it to another one, erase this one "
    "with /delete first (its keys and memory are destroyed)."
)
LINK_PRIVATE_ONLY = "Send /link with your code in a private chat with me, not in a group."
LINK_BAD_CODE = (
    "That link code is unknown, used or expired. Send /link on your other app for a new one."
)
SENT_TO_DM = "I've sent you the details in a private message."
DM_NEEDED = "That's private, and I can't message you privately yet. Open a private chat with me, press Start, then ask again."
OPEN_DM_BUTTON = "Open a private chat"

# -- agent --------------------------------------------------------------------------------

AGENT_UNAVAILABLE = {
    "tool_steps": "Your agent needed more tool steps than allowed for one reply and stopped there. Try asking for one thing at a time.",
    "not_configured": "Your agent isn't available on this server yet. An operator has to enable the agent runtime.",
    "proxy_off": "The managed plan isn't switched on on this server yet: an operator has to enable its metering proxy. Meanwhile you can use your own key with /plan byok.",
    "no_key": "Your agent has no API key to use. Add one with /key add <provider> in a private chat with me.",
    "paused": PAUSED,
    "suspended": "Your account is suspended, so your agent can't answer.",
    "invalid_key": "Your provider refused the API key — it may have been revoked. Send /key rotate <provider> to replace it.",
    "rate_limited": "Your provider is rate-limiting your key. Please try again {retry}.",
    "out_of_credit": "Your provider says the key is out of credit or quota. Top it up with the provider, or switch keys with /key rotate.",
    "overloaded": "Your provider is overloaded right now. Please try again in a minute.",
    "model_not_found": "Your provider doesn't offer the model {model}. Pick another with /model.",
    "network": "I couldn't reach your provider just now. Please try again in a minute.",
    "timeout": "Your provider took too long to answer. Please try again.",
    "crashed": "Your agent stopped unexpectedly while answering. It has been restarted — please send your message again.",
    "busy": "The server is at its limit of running agents right now. Please try again in a minute.",
    "cap_reached": "You've used this month's allowance on your plan. It resets on the 1st; you can also /plan to switch to BYOK.",
    "model_not_in_plan": "That model isn't included in your plan. Pick another with /model.",
    "restarting": "Your agent is restarting after a problem. Please try again {retry}.",
    "stopped": "Your agent was stopped while answering (paused or removed).",
    "start_failed": "Your agent couldn't start just now. Please try again in a minute; if it keeps happening, tell an operator.",
    "protocol": "Your agent sent something I couldn't understand. An operator has been told; please try again later.",
    "bad_response": "Your provider sent a reply I couldn't read. Please try again.",
    "deleted": "This account has been erased. Send /start to set up a new agent.",
    "agent_failed": "Your agent hit an internal error while answering. Please try again; if it keeps happening, tell an operator.",
}
# A managed tenant's agent talks to our metering proxy with our keys: when that path fails,
# the problem is ours, never the person's provider or key.
AGENT_UNAVAILABLE_MANAGED = {
    "network": "Sorry — our managed service can't be reached right now. The problem is on our side, not yours; please try again in a minute.",
    "timeout": "Sorry — our managed service took too long to answer. The problem is on our side; please try again.",
    "overloaded": "Sorry — our managed service is having trouble right now. The problem is on our side, not yours; please try again in a minute, and tell an operator if it keeps happening.",
    "invalid_key": "Sorry — our managed service couldn't authorise that request. The problem is on our side, not with your account; please send your message again.",
    "out_of_credit": "Sorry — our managed service can't answer right now. The problem is on our side (not your allowance); an operator has to fix it, so please try again later.",
    "bad_response": "Sorry — our managed service sent a reply I couldn't read. The problem is on our side; please try again.",
    "model_not_found": "Sorry — the model {model} isn't available on our managed service right now (a problem on our side). Pick another with /model.",
    "rate_limited": "You're sending requests faster than your plan allows. Please try again {retry}.",
}
# -- hardening: a reply over [agent] max_reply_chars is cut, and this follows it --
AGENT_UNAVAILABLE["too_long"] = (
    "✂️ Your agent's reply was cut off here: it went over this server's length limit. "
    "Ask for a shorter answer, or for the rest in parts."
)
AGENT_GENERIC = "Your agent couldn't answer ({reason}). Please try again."
STOPPED = "Stopped."
NOTHING_TO_STOP = "There's no reply in progress."
RESET_DONE = "I've forgotten this conversation. Let's start fresh."
PERSONA_SET = "Persona saved. Your agent will behave like this from the next message."
PERSONA_CLEARED = "Persona cleared — your agent is back to its default behaviour."
PERSONA_SHOW = (
    "Your persona:\n{persona}\n\nChange it with /persona <text>, or clear it with /persona clear."
)
PERSONA_NONE = "You have no persona set. Set one with /persona <text>, e.g. /persona You are a concise assistant."
PERSONA_TOO_LONG = "A persona can be at most {limit} characters (that one has {length})."
MODEL_CHOOSE = "Current model: {current}. Choose one:"
MODEL_NOT_SET = "none yet"
MODEL_MORE = "…and {count} more: send /model <name> to choose one of those."
MODEL_SET = "Model set to {model}."
MODEL_NONE = "There are no models to choose from yet: add a key with /key add <provider> first."
USAGE_ALERT = (
    "Heads-up: you've used {pct}% of this month's allowance ({used}). It resets on {resets}."
)
USAGE_ALERT_FULL = (
    "Your plan's allowance for this month is used up, or too low for another reply ({used}). "
    "Your agent can answer again on {resets}; to keep going now, upgrade your plan or switch "
    "to BYOK with /plan byok."
)
USAGE_MANAGED = "Plan allowance this month: {used} ({pct}%). Resets on {resets}."
USAGE_VOICE = "Voice notes this month: {notes} ({seconds:,} s of audio, ${usd})"
ADMIN_MODELS = "Curated models by plan:\n{lines}"
ADMIN_MODEL_LINE = (
    "• {plan}: {model} via {upstream} — ${input:g}/${output:g} per million tokens in/out"
)
ADMIN_SPEND = "\nThis month: {used}"
ADMIN_TOTALS = "\nManaged usage this month: {tokens:,} tokens, ${usd:,.2f} across {tenants} tenants"
USAGE_NONE = "No usage recorded this month yet."
USAGE = "This month: {input} input and {output} output tokens over {requests} requests.\n{lines}"

# -- admin ------------------------------------------------------------------------------

ADMIN_STATS = "Tenants: {total} ({by_status})\nPlans: {by_plan}\nActive keys: {keys}"
ADMIN_TENANTS_EMPTY = "No tenants yet."
ADMIN_TENANT_LINE = "• {id} — {plan}, {status} — {identities}"
ADMIN_TENANT = """Tenant {id}
Identities: {identities}
Plan: {plan} · Status: {status}{reason}{paused}
Model: {model}
Keys: {keys}
Created: {created}{billing}"""
ADMIN_NO_TENANT = "No tenant matches “{ref}”."
ADMIN_USAGE = "Usage: /admin {sub} {args}"
ADMIN_UNKNOWN = "Unknown admin command “{sub}”.\n" + ADMIN_HELP
ADMIN_SUSPENDED = "Suspended {id}."
ADMIN_RESUMED = "Resumed {id}."
ADMIN_PLAN_SET = "Tenant {id} is now on the {plan} plan."
ADMIN_AUDIT_EMPTY = "No audit entries."
ADMIN_AUDIT_LINE = "{at} {actor} {action} {tenant} {detail}"
ADMIN_BROADCAST_DONE = "Broadcast sent to {sent} of {total} tenants."
ADMIN_BROADCAST = "📢 {text}"
ADMIN_REWRAP_DONE = "Master key rotated to v{version}: {count} data keys rewrapped."
ADMIN_ROTATE_ENV = (
    "The master key comes from an environment variable, so it can't be rotated from chat: "
    "add the new version to {env} and run byokbot master-key rotate."
)
CLI_UNDELIVERED = (
    "{count} notice(s) could not be delivered from the command line ({where}): console chats "
    "live in their own byokbot chat, and a platform that is not enabled here cannot send; "
    "send it from a chat with /admin instead"
)
ADMIN_NOTICE_SENT = " The tenant was told in {sent} of {total} chats."
TENANT_SUSPENDED_NOTICE = "An operator has suspended your account{reason}."
TENANT_RESUMED_NOTICE = "Your account has been resumed. Welcome back!"


# ----- the durable inbox and retry wording (issue 13) ------------------------------------------
INBOX_RESEND = (
    "Sorry — I restarted before I could finish answering your last message. Please send it again."
)
RETRY_IN_A_MOMENT = "in a moment"
RETRY_IN_ONE_SECOND = "in 1 second"
RETRY_IN_SECONDS = "in {n} seconds"
RETRY_IN_A_MINUTE = "in a minute"
RETRY_IN_MINUTES = "in {n} minutes"


def retry_in(seconds: float | None) -> str:
    """When to try again, in words: never "in 0 seconds" (a wait under a second rounds up)."""
    if seconds is None or seconds <= 0:
        return RETRY_IN_A_MINUTE
    whole = math.ceil(seconds)
    if whole == 1:
        return RETRY_IN_ONE_SECOND
    if whole < 60:
        return RETRY_IN_SECONDS.format(n=whole)
    return RETRY_IN_A_MINUTE if whole < 90 else RETRY_IN_MINUTES.format(n=math.ceil(whole / 60))


def join(items: Iterable[str]) -> str:
    """Comma-separated list for prose."""
    return ", ".join(items)


def day(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d")


# -- agent tools and long-term notes (issue 14) ----------------------------------------------

TOOL_STATUS = {
    "web_fetch": "🔎 reading {target}…",
    "web_search": "🔎 searching the web for “{target}”…",
    "remember": "📝 noting that down…",
    "recall": "🧠 looking through my notes…",
    "forget": "🧹 forgetting that…",
    "schedule_task": "⏰ scheduling that…",
}
TOOL_STATUS_OTHER = "⚙️ working on it…"


def tool_status(name: str, target: str) -> str:
    """The status line shown while the agent runs tool ``name`` on ``target``."""
    if name.startswith("mcp:"):
        return MCP_STATUS.format(server=name[4:], tool=target or "a tool")
    template = TOOL_STATUS.get(name, TOOL_STATUS_OTHER)
    if "{target}" in template and not target:
        return TOOL_STATUS_OTHER
    return template.format(target=target)


MEMORY_NONE = (
    "Your agent hasn't noted anything about you yet. Tell it something to remember "
    '("remember that I prefer metric units") and it keeps it across chats.'
)
MEMORY_LIST = "What your agent remembers about you:\n{lines}\n\nErase one with /memory forget <number>, or all with /memory clear."
MEMORY_FORGET_BUTTON = "Forget {n}"
MEMORY_CLEAR_BUTTON = "Forget everything"
MEMORY_FORGOTTEN = "Forgotten: “{text}”."
MEMORY_CLEARED = "Done: your agent's notes about you are erased ({count})."
MEMORY_BAD_NUMBER = "There's no note number {arg}. Send /memory to see the numbered list."
MEMORY_USAGE = "Use /memory to see the notes, /memory forget <number> to erase one, or /memory clear to erase all."
MEMORY_OFF = "Long-term notes aren't available on this server."
# -- agent sandbox (issue 11) ---------------------------------------------------------------

AGENT_UNAVAILABLE["sandbox"] = (
    "Your agent can't start on this server right now: its security sandbox isn't available "
    "here. An operator has been told; please try again later."
)
SANDBOX_CHECK_PASSED = (
    "sandbox self-test: an agent process was refused every escape tried ({count})"
)
SANDBOX_CHECK_FAILED = "sandbox self-test failed: {failures}"
# -- operations (issue 16): /whoami ----------------------------------------------------------

WHOAMI = """You are {identity} here.
To make you an admin, an operator adds "{identity}" to admins in the [core] table of the config."""
WHOAMI_ADMIN = "You are an admin of this bot."
# -- billing and access (issue 15) ----------------------------------------------------------

BILLING_NOTICES: dict[str, str] = {
    "trial_started": "🎁 Your free trial has started. It runs until {end}.",
    "trial_ending": "⏳ Your free trial ends on {end}. Send /plan to subscribe and keep your agent.",
    "trial_ended": (
        "Your free trial has ended. Send /plan to subscribe; your agent stops on {grace} "
        "otherwise. Your keys, memory and settings are kept."
    ),
    "renewal_reminder": "🔔 Your {plan} subscription renews on {end}.",
    "receipt": "🧾 Payment received: {amount} for the {plan} plan (charge {charge}). "
    "Paid until {end}. Thank you!",
    "past_due": (
        "⚠️ Your {plan} payment didn't go through. Your agent keeps working until {grace}; "
        "send /plan to pay or update your card."
    ),
    "suspended": (
        "⛔ Your account is suspended because the {plan} subscription is unpaid. Your agent "
        "has stopped; your keys, memory and settings are kept. Send /plan to pay and resume."
    ),
    "resumed": "✅ Your account is active again on the {plan} plan. Welcome back!",
    "cancelling": "Your {plan} subscription won't renew; it stays active until {end}.",
    "cancelled": (
        "Your {plan} subscription has ended and your agent has stopped. Your keys, memory "
        "and settings are kept; send /plan to subscribe again."
    ),
    "granted": "🎟 An operator gave you the {plan} plan until {end}.",
    "refunded": "💸 Your payment of {amount} was refunded.",
    "plan_pending": "You'll move to the {plan} plan when the current period ends on {end}.",
    "plan_prorated": (
        "You're on the {plan} plan now; what was left of your period was converted: "
        "paid until {end}."
    ),
    "plan_prorated_card": (
        "You're on the {plan} plan now. Stripe settles the difference for the rest of this "
        "period on your next invoice."
    ),
}
BILLING_PAY = (
    "The {plan} plan is ${price:g}/month. Pay below; your agent starts as soon as the "
    "payment arrives."
)
BILLING_PAY_STARS = "Pay {stars} ⭐ / month"
BILLING_PAY_CARD = "Pay by card (Stripe)"
BILLING_PORTAL = "Manage card or cancel"
BILLING_PORTAL_TEXT = "Change your card or cancel your subscription on Stripe:"
BILLING_NO_PROVIDER = (
    "The {plan} plan is given out by the operators here. Ask one of them to grant it to you "
    "(or pick another plan with /plan)."
)
BILLING_NEEDS_PAYMENT = (
    "Your {plan} plan isn't paid for, so your agent can't answer. Send /plan to subscribe."
)
BILLING_CHECKOUT_FAILED = (
    "I couldn't open the payment page just now. Please try /plan again in a minute."
)
BILLING_TRIAL_CAP = (
    "You've used your free trial's allowance ({cap:,} tokens). Send /plan to subscribe and "
    "keep talking to your agent."
)
BILLING_TRIAL_CAP_LEFT = (
    "You've nearly used your free trial's allowance ({cap:,} tokens): {left:,} are left, not "
    "enough for a reply in this long a conversation. Send /new to start a fresh one, or /plan "
    "to subscribe and keep talking to your agent."
)
BILLING_STATUS = "\nSubscription: {state}{until}{provider}"
BILLING_STATE_NAMES: dict[str, str] = {
    "trial": "free trial",
    "active": "active",
    "past_due": "payment overdue",
    "suspended": "suspended (unpaid)",
    "cancelled": "cancelled",
}
PAYMENT_BAD_INVOICE = "This invoice is no longer valid. Send /plan in chat for a fresh one."
PAYMENT_WRONG_PERSON = "This invoice belongs to someone else's account."
PAYMENT_ALREADY = "Payment {charge} was already recorded."
ACCESS_INVITE_ONLY = "This bot is invite-only. If you have an invite code, send /start <code>."
ACCESS_BAD_CODE = "That invite code isn't valid or has been used up. Ask an operator for a new one."
ACCESS_ADMITTED = "Invite accepted. Welcome!"
ACCESS_REQUESTED = (
    "Thanks! Sign-ups here are approved by an operator. I've sent your request and will "
    "tell you here as soon as it's decided."
)
ACCESS_PENDING = "Your request to sign up is waiting for an operator. I'll tell you here."
ACCESS_DENIED_BEFORE = "An operator declined your sign-up request."
ACCESS_APPROVED = (
    "🎉 An operator approved your sign-up: you're on the {plan} plan. Send /plan to continue."
)
ACCESS_DENIED = "Sorry — an operator declined your sign-up request."
ACCESS_REQUEST_TO_ADMIN = "Sign-up request from {name} ({identity}) for the {plan} plan."
ACCESS_APPROVE = "Approve"
ACCESS_DENY = "Deny"
ACCESS_DECIDED = "{identity}: {decision}."
ACCESS_ALREADY_DECIDED = "That request was already decided."
ADMIN_INVITE = "Invite code: {code} — {uses} use(s){plan}. The person sends /start {code}."
ADMIN_REQUESTS_EMPTY = "No sign-up requests are waiting."
ADMIN_REQUEST_LINE = "• {identity} ({name}) — {plan}, since {at}"
ADMIN_REVENUE = """Revenue
MRR: {stars} ⭐ (Telegram Stars) · ${usd:,.2f} (Stripe)
Subscriptions: {states}
Renewing: {providers}
Paid in the last 30 days: {paid}"""
ADMIN_COMP_DONE = "Tenant {id} has the {plan} plan until {end}."
ADMIN_COMP_BAD_DAYS = "Days must be a positive number (got “{days}”)."
ADMIN_REFUND_DONE = "Refunded {charge}: {amount}."
ADMIN_REFUND_UNKNOWN = "No refundable payment has the charge id “{charge}”."
ADMIN_REFUND_NOT_STARS = (
    "That charge was paid through Stripe; refund it in the Stripe dashboard "
    "(the webhook ends the subscription)."
)
ADMIN_REFUND_FAILED = "Telegram refused the refund: {reason}"


# --- scheduled tasks (issue 14: schedule_task, /tasks, /timezone) ---
TASK_ASK_TIMEZONE = (
    "⏰ I'll keep that task, but I need your time zone first. "
    "Send /timezone followed by your zone, e.g. /timezone Europe/Paris."
)
# What the model learns from schedule_task (it words the answer to the person).
TASK_TOLD_ADDED = (
    "Scheduled. Next run: {local} in {tz} ({utc} UTC). The person can see and cancel it "
    "with /tasks."
)
TASK_TOLD_NEEDS_TIMEZONE = (
    "Stored, but it has no run time yet: the person's time zone is unknown. byokbot has asked "
    "them to send /timezone Area/City (e.g. /timezone Europe/Paris); the task is scheduled as "
    "soon as they do. Tell them so."
)
TASK_TOLD_LIMIT = (
    "Not scheduled: the person already has {limit} scheduled task(s), the most their plan "
    "allows. Tell them to cancel one with /tasks first."
)
TASK_TOLD_PAST = (
    "Not scheduled: {when} in {tz} has already passed (it is now {now} there). Ask the person "
    "for a later time."
)
TASK_TOLD_BAD = (
    "Not scheduled: {reason}. Use an ISO local time like 2026-12-03T09:00 or five cron fields "
    "like '0 8 * * mon-fri'."
)
TASK_CONTEXT = (
    "Now it is {now} in the person's time zone, {tz}. Give schedule_task times in that zone."
)
TASK_CONTEXT_NO_TZ = (
    "Now it is {now} UTC; the person's time zone is not known yet (byokbot asks for it when "
    "a task is scheduled)."
)
TASK_PROMPT = "(Scheduled task, running now as the person asked earlier.) {}"
TASK_HEADER = "⏰ "
TASK_EMPTY = "(the agent had nothing to say)"
TASK_FAILED = "A scheduled task could not run: your agent is unavailable right now. See /status."
TASKS_OFF = "Scheduled tasks are not available on this bot."
TASKS_NONE = "You have no scheduled tasks. Ask your agent, e.g. “remind me tomorrow at 9 to …”."
TASKS_LIST = "Your scheduled tasks:\n{lines}"
TASK_LINE = "{n}. {when} — next: {next}"
TASK_NO_TZ = "waiting for /timezone"
TASK_CANCEL_BUTTON = "Cancel {n}"
TASK_CANCELLED = "Cancelled that task."
TIMEZONE_ASK = (
    "No time zone set yet. Send /timezone followed by your zone, e.g. /timezone Europe/Paris."
)
TIMEZONE_SHOW = "Your time zone is {tz}. Change it with /timezone Area/City."
TIMEZONE_USAGE = "Use /timezone Area/City, e.g. /timezone America/New_York."
TIMEZONE_BAD = "“{tz}” is not a time zone I know. Use Area/City, e.g. /timezone Europe/Paris."
TIMEZONE_SET = "Time zone set to {tz}. {scheduled} waiting task(s) scheduled."


# --- MCP servers (issue 14 item 3: /mcp, the token intake, Allow / Deny) ---
MCP_STATUS = "🔌 {server}: {tool}…"
MCP_OFF = "Connecting MCP servers is turned off on this bot."
MCP_USAGE = (
    "Usage: /mcp (list) · /mcp add <name> <https://server/mcp> · /mcp rotate <name> · "
    "/mcp remove <name>"
)
MCP_BAD_NAME = (
    "“{name}” can't be a server name: use up to 32 lower-case letters, digits, - or _, "
    "starting with a letter (e.g. /mcp add github https://…)."
)
MCP_BAD_URL = {
    "url": "That isn't a URL I can use: send the server's full address, e.g. https://example.com/mcp.",
    "credentials": "Leave the user name and password out of the URL — I'll ask for the token privately.",
    "private": "That address is private or internal; I can only connect to public MCP servers.",
    "https": "Use an https:// address: the token must not travel unencrypted.",
}
MCP_EXISTS = "You already have a server named {name}. Use /mcp rotate {name} or /mcp remove {name}."
MCP_TOO_MANY = "You have {limit} MCP servers, the most allowed. Remove one with /mcp remove <name>."
MCP_UNKNOWN = "You have no MCP server named {name}. Send /mcp to see yours."
MCP_ADDED = "MCP server {name} added ({url}). Now its access token, privately:"
MCP_ASK_TITLE = "Token for MCP server {name}"
MCP_ASK_PROMPT = (
    "Paste the access token for MCP server {name} as a reply to this message. I'll delete your "
    "message the moment I've read it and keep the token encrypted. This request expires in "
    "{minutes} minutes."
)
MCP_ASK_PROMPT_HIDDEN = (
    "Paste the access token for MCP server {name} at the hidden prompt below — nothing you "
    "type is shown. Press Enter on an empty line to cancel. This request expires in "
    "{minutes} minutes."
)
MCP_ASK_PROMPT_MODAL = (
    "Paste the access token for MCP server {name}. It is encrypted at rest and never shown in chat."
)
MCP_ASK_LABEL = "Token for {name}"
MCP_DM_NEEDED = (
    "I can't message you privately yet. Open a private chat with me, press Start, "
    "then send /mcp rotate {name} there."
)
MCP_MESSAGE_DELETED = "I deleted your message with the token from this chat."
MCP_BAD_TOKEN = (
    "That doesn't look like an access token (empty, too long, or with spaces). {attempts_left}"
)
MCP_TOKEN_SAVED = (
    "Token saved for MCP server {name}: {fingerprint}. Your agent can use its tools from the "
    "next message; anything that changes data asks you first."
)
MCP_TOKEN_ROTATED = (
    "Token rotated for MCP server {name}: {fingerprint}. New replies use the new token."
)
MCP_REMOVED = "MCP server {name} removed, with its token. Your agent no longer sees its tools."
MCP_LIST_EMPTY = "No MCP servers yet. Connect one with /mcp add <name> <https://server/mcp>."
MCP_LIST = "Your MCP servers:\n{lines}"
MCP_LINE = "• {name} — {url} — token {token} (since {date})"
MCP_NO_TOKEN = "not given yet (/mcp rotate <name>)"
MCP_CONFIRM = "Your agent wants to run {tool} on MCP server {server} with:\n{arguments}"
MCP_ALLOW_BUTTON = "Allow"
MCP_DENY_BUTTON = "Deny"
MCP_CONFIRM_ALLOWED = "✅ Allowed."
MCP_CONFIRM_DENIED = "🚫 Denied — the tool did not run."
MCP_CONFIRM_EXPIRED = "⌛ No answer in time — the tool did not run."
MCP_CONFIRM_STALE = "That question is closed (answered, or the reply ended)."
# -- conversations: /compact, /new, /history (issue 14) -------------------------------------

COMPACTED = (
    "Done — I summarised the {turns} earlier messages of this conversation "
    "(about {before} tokens) into a summary of about {after} tokens. "
    "Your agent continues from it; /history export saves it as a file."
)
COMPACT_NOTHING = "There's nothing to summarise yet — this conversation is empty."
NEW_CONVERSATION = (
    "Started a new conversation. The previous one is kept: send /history to see it or switch back."
)
NEW_ALREADY = "This conversation is already empty — just write to start it."
HISTORY_OFF = "Past conversations aren't available on this bot."
HISTORY_LIST = (
    "Your recent conversations (newest first):\n{lines}\n\n"
    "Press a button to switch, or send /history export to get the current one as a file."
)
HISTORY_LINE = "{n}. {when} — {words} ({turns} messages){current}"
HISTORY_CURRENT = " · current"
HISTORY_EMPTY_WORDS = "(empty)"
HISTORY_NEW_WHEN = "just started"
HISTORY_BUTTON = "Switch to {n}"
HISTORY_SWITCHED = (
    "Switched back to the conversation that began “{words}”. Carry on where you left off."
)
HISTORY_SAME = "That's the conversation you're in."
HISTORY_NONE = "There's no conversation number {arg}. Send /history to see the list."
HISTORY_USAGE = (
    "Use /history to list your recent conversations, /history <number> to switch to one, "
    "or /history export to get the current one as a file."
)
HISTORY_EXPORT_EMPTY = "This conversation is empty — there's nothing to export yet."
HISTORY_EXPORT_NO_FILES = (
    "Exporting a conversation as a file works on Telegram and Discord; it isn't available here yet."
)
HISTORY_EXPORTED = "Here's this conversation as a text file ({turns} messages)."
EXPORT_TITLE = "Conversation exported by byokbot on {when}"
EXPORT_SUMMARY = "Summary of the earlier messages (compacted):"
EXPORT_PERSON = "You"
EXPORT_AGENT = "Agent"

# ----- billing2 (issue 15): plan changes at Stripe -------------------------------------------
BILLING_PLAN_CHANGE_FAILED = (
    "I couldn't change your subscription at Stripe just now, so your plan stays as it is. "
    "Please try /plan again in a few minutes."
)
