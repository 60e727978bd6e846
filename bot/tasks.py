"""Scheduled tasks in the running bot: storing the agent's requests and running due ones.

``BotTasks`` is the supervisor's ``TaskSink`` (it answers the chat when a task cannot be kept)
and provides the ``run-tasks`` job, which posts each due task's answer where it was asked.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC
from zoneinfo import ZoneInfo

from bot import texts
from core.chat import ChatRef, Platform, Reply
from core.errors import AgentUnavailable
from core.plans import PlanCatalog
from core.ports import Agents, Messenger
from core.runtime.ports import TaskVerdict
from core.tasks import DatabaseTasks, zone
from core.tenants import Tenants

log = logging.getLogger("byokbot.tasks")


def chat_of(conversation: str) -> ChatRef | None:
    """The chat a conversation id (``bot.flows.agent.conversation_of``) names."""
    platform, _, rest = conversation.partition(":")
    chat_id, _, thread = rest.partition(":")
    try:
        return ChatRef(Platform(platform), chat_id, is_direct=False, thread_id=thread or None)
    except ValueError:
        return None


class BotTasks:
    def __init__(
        self,
        store: DatabaseTasks,
        tenants: Tenants,
        plans: PlanCatalog,
        messengers: Mapping[Platform, Messenger],
    ) -> None:
        self.store = store
        self._tenants = tenants
        self._plans = plans
        self._messengers = messengers
        self.agents: Agents | None = None  # set once the supervisor exists

    async def _say(self, conversation: str, text: str) -> None:
        chat = chat_of(conversation)
        messenger = self._messengers.get(chat.platform) if chat else None
        if chat is None or messenger is None:
            log.warning("no chat to answer a scheduled task in")
            return
        await messenger.send(chat, Reply(text))

    async def schedule(
        self, tenant_id: str, conversation: str, when: str, prompt: str
    ) -> TaskVerdict:
        """Store the agent's task; the verdict goes back to the model, which tells the person.

        Only the time zone is asked in the chat by the bot itself, once (for the first task
        that waits for it), since the person must answer with ``/timezone``.
        """
        tenant = await self._tenants.get(tenant_id)
        limit = self._plans.get(tenant.plan).max_tasks if tenant.plan in self._plans else 0
        added = await self.store.add(tenant_id, conversation, when, prompt, limit=limit)
        log.info("task of %s: %s", tenant_id, added.outcome)
        if added.outcome == "added" and added.next_run is not None:
            local = added.next_run.astimezone(ZoneInfo(added.tz))
            return TaskVerdict(
                True,
                texts.TASK_TOLD_ADDED.format(
                    local=local.strftime("%Y-%m-%d %H:%M (%A)"),
                    tz=added.tz,
                    utc=added.next_run.strftime("%Y-%m-%d %H:%M"),
                ),
            )
        if added.outcome == "needs_timezone":
            if added.waiting <= 1:
                await self._say(conversation, texts.TASK_ASK_TIMEZONE)
            return TaskVerdict(True, texts.TASK_TOLD_NEEDS_TIMEZONE)
        if added.outcome == "limit":
            return TaskVerdict(False, texts.TASK_TOLD_LIMIT.format(limit=limit))
        if added.outcome == "past":
            now = self.store.now().astimezone(ZoneInfo(added.tz))
            return TaskVerdict(
                False,
                texts.TASK_TOLD_PAST.format(
                    when=when, tz=added.tz, now=now.strftime("%Y-%m-%d %H:%M")
                ),
            )
        return TaskVerdict(False, texts.TASK_TOLD_BAD.format(reason=added.reason))

    async def context(self, tenant_id: str) -> str:
        tz_name = await self.store.timezone(tenant_id)
        tz = zone(tz_name) if tz_name else None
        if tz is None:
            now = self.store.now().astimezone(UTC)
            return texts.TASK_CONTEXT_NO_TZ.format(now=now.strftime("%Y-%m-%dT%H:%M (%A)"))
        now = self.store.now().astimezone(tz)
        return texts.TASK_CONTEXT.format(now=now.strftime("%Y-%m-%dT%H:%M (%A)"), tz=tz_name)

    async def run_due(self) -> int:
        """The ``run-tasks`` job: run each claimed task's prompt and post the answer."""
        agents = self.agents
        if agents is None:
            return 0
        ran = 0
        for task in await self.store.claim_due():
            try:
                parts = [
                    c
                    async for c in agents.reply(
                        task.tenant_id, task.conversation, texts.TASK_PROMPT.format(task.prompt)
                    )
                ]
                answer = "".join(parts).strip() or texts.TASK_EMPTY
            except AgentUnavailable as exc:
                log.warning("task %s: agent unavailable (%s)", task.id, exc.reason)
                answer = texts.TASK_FAILED
            await self._say(task.conversation, texts.TASK_HEADER + answer)
            ran += 1
        return ran
