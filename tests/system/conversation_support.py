"""What the long-conversation tests share: a provider that summarises, and readers of its requests.

The fake provider echoes; a summarisation request (recognised by the first line the bot puts in
it) is answered with the lines that mention "remember", so a fact survives only if every
compaction carries it on.
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.llm_server import FakeLLMServer, Recorded, echo_reply
from tests.system.harness import Workspace

SUMMARY_HEAD = "Summarise this conversation between a person and their assistant."
FACT = "remember: my cat is called Miso"


def summariser(messages: list[dict[str, Any]]) -> str:
    last = str(messages[-1]["content"]) if messages else ""
    if not last.startswith(SUMMARY_HEAD):
        return echo_reply(messages)
    kept = [
        re.sub(r"^(Person|Assistant): ", "", line)
        for line in last.splitlines()
        if "remember" in line.lower() and not line.startswith("Assistant:")
    ]
    return " ".join(dict.fromkeys(kept)) or "Nothing to remember."


def system_of(request: Recorded) -> str:
    system = request.body.get("system", "")
    if isinstance(system, list):
        system = " ".join(str(b.get("text", "")) for b in system)
    extra = [str(m["content"]) for m in request.body.get("messages", []) if m["role"] == "system"]
    return " ".join([str(system), *extra]).strip()


def summaries(llm: FakeLLMServer) -> list[Recorded]:
    return [
        r
        for r in llm.requests
        if any(
            str(m.get("content", "")).startswith(SUMMARY_HEAD) for m in r.body.get("messages", [])
        )
    ]


def user_texts(request: Recorded) -> list[str]:
    return [str(m["content"]) for m in request.body.get("messages", []) if m["role"] == "user"]


def small_budget(ws: Workspace) -> None:
    ws.configure(
        {
            "core": {"messages_per_minute": 100_000},
            # ~1600 characters of conversation before the budget fills.
            "agent": {"context_tokens": 500, "max_reply_tokens": 60},
            "conversations": {"summary_max_tokens": 100},
        }
    )
