"""Long-term notes: ``remember``, ``recall`` and ``forget``.

The notes arrive with each request (``request.notes``); a change is applied to this request's
copy and sent as a ``note`` event, which the control plane stores encrypted with the tenant's
data key. So a fact remembered in one chat is there for every later request, in any chat.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Final

from core.llm import ToolSpec
from core.runtime import protocol
from core.runtime.tools import ToolContext, ToolFailed, string_arg


def _always(_: protocol.ToolConfig) -> bool:
    return True


def _no_target(_: Mapping[str, Any]) -> str:
    return ""


class Remember:
    name: Final = "remember"
    spec: Final = ToolSpec(
        "remember",
        "Save a short fact about the person for future conversations (their name, "
        "preferences, ongoing projects). Use when they tell you something worth keeping or "
        "ask you to remember it.",
        {
            "type": "object",
            "properties": {"fact": {"type": "string", "description": "The fact, one sentence."}},
            "required": ["fact"],
        },
    )

    def target(self, args: Mapping[str, Any]) -> str:
        return _no_target(args)

    def available(self, config: protocol.ToolConfig) -> bool:
        return _always(config)

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        fact = string_arg(args, "fact", limit=ctx.config.max_note_chars)
        if any(n.text == fact for n in ctx.notes):
            return "Already remembered."
        if len(ctx.notes) >= ctx.config.max_notes:
            raise ToolFailed(
                f"the notes are full ({ctx.config.max_notes}); forget one first "
                "or ask the person to tidy them with /memory"
            )
        note = protocol.Note(secrets.token_hex(4), fact)
        ctx.notes.append(note)
        await ctx.emit(protocol.NoteEvent(ctx.request_id, "add", note.id, note.text))
        return f"Remembered (note {note.id})."


class Recall:
    name: Final = "recall"
    spec: Final = ToolSpec(
        "recall",
        "Look up the facts saved about the person in earlier conversations. Pass words to "
        "search for, or an empty query for all of them.",
        {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "Words to look for."}},
        },
    )

    def target(self, args: Mapping[str, Any]) -> str:
        return _no_target(args)

    def available(self, config: protocol.ToolConfig) -> bool:
        return _always(config)

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        if not ctx.notes:
            return "No notes saved yet."
        query = args.get("query")
        words = query.lower().split() if isinstance(query, str) else []
        found = [n for n in ctx.notes if any(w in n.text.lower() for w in words)] or ctx.notes
        prefix = "" if not words or len(found) < len(ctx.notes) else "No exact match; all notes:\n"
        return prefix + "\n".join(f"[{n.id}] {n.text}" for n in found)


class Forget:
    name: Final = "forget"
    spec: Final = ToolSpec(
        "forget",
        "Delete a saved fact about the person by its note id (from recall), when they ask "
        "you to forget it or it is no longer true.",
        {
            "type": "object",
            "properties": {"note_id": {"type": "string", "description": "The note's id."}},
            "required": ["note_id"],
        },
    )

    def target(self, args: Mapping[str, Any]) -> str:
        return _no_target(args)

    def available(self, config: protocol.ToolConfig) -> bool:
        return _always(config)

    async def run(self, args: Mapping[str, Any], ctx: ToolContext) -> str:
        note_id = string_arg(args, "note_id", limit=64).strip("[]")
        for i, note in enumerate(ctx.notes):
            if note.id == note_id:
                del ctx.notes[i]
                await ctx.emit(protocol.NoteEvent(ctx.request_id, "forget", note.id))
                return "Forgotten."
        raise ToolFailed(f"no note has the id {note_id!r}; call recall to see the ids")


REMEMBER = Remember()
RECALL = Recall()
FORGET = Forget()
