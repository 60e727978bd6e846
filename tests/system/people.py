"""People on the fake platforms: they send messages, reply to prompts and press buttons."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.telegram_server import FakeTelegramServer, callback, message, tg_user

_query_ids = itertools.count(1)


@dataclass
class TelegramPerson:
    """Someone in a private chat with the bot (chat id = user id), or in a group."""

    server: FakeTelegramServer
    user_id: int
    first_name: str = "Ada"
    username: str | None = "ada"
    sent: list[int] = field(default_factory=list)

    @property
    def user(self) -> dict[str, Any]:
        return tg_user(self.user_id, self.first_name, self.username)

    def send(self, text: str, *, chat_id: int | None = None, reply_to: int | None = None) -> int:
        """Write ``text``; returns the message id the person's message has."""
        chat = self.user_id if chat_id is None else chat_id
        mid = self.server.next_message_id()
        replied = None
        if reply_to is not None:
            replied = {
                "message_id": reply_to,
                "date": 1_780_000_000,
                "chat": {"id": chat, "type": "private" if chat > 0 else "supergroup"},
                "from": {"id": self.server.bot_id, "is_bot": True, "first_name": "BYOK"},
                "text": self.server.chats.get(str(chat), {}).get(reply_to, ""),
            }
        self.server.push_update(message(chat, self.user, text, message_id=mid, reply_to=replied))
        self.sent.append(mid)
        return mid

    def send_update(self, body: dict[str, Any]) -> int:
        """A raw update body (a photo, a sticker…) from this person."""
        return self.server.push_update(body)

    def prompt_id(self, chat_id: int | None = None) -> int:
        """The newest bot message in the chat that asks for a reply (ForceReply)."""
        chat = str(self.user_id if chat_id is None else chat_id)
        for call in reversed(self.server.calls):
            markup = call.params.get("reply_markup")
            if (
                call.method == "sendMessage"
                and call.status == 200
                and str(call.params.get("chat_id")) == chat
                and isinstance(markup, dict)
                and markup.get("force_reply")
            ):
                return self._message_id_of(call)
        raise AssertionError(f"no ForceReply prompt in chat {chat}")

    def reply_to_prompt(self, text: str, *, chat_id: int | None = None) -> int:
        return self.send(text, chat_id=chat_id, reply_to=self.prompt_id(chat_id))

    def buttons(self, chat_id: int | None = None) -> list[tuple[int, str, str]]:
        """``(message_id, label, data)`` of every inline button in the chat, newest first."""
        chat = str(self.user_id if chat_id is None else chat_id)
        found: list[tuple[int, str, str]] = []
        for call in reversed(self.server.calls):
            if call.status != 200 or str(call.params.get("chat_id")) != chat:
                continue
            markup = call.params.get("reply_markup")
            if not isinstance(markup, dict):
                continue
            mid = self._message_id_of(call)
            for row in markup.get("inline_keyboard", []):
                for button in row:
                    if "callback_data" in button:
                        found.append((mid, button["text"], button["callback_data"]))
        return found

    def press(self, label: str, *, chat_id: int | None = None) -> None:
        """Press the newest button whose label contains ``label``."""
        chat = self.user_id if chat_id is None else chat_id
        for mid, text, data in self.buttons(chat_id):
            if label.lower() in text.lower():
                self.server.push_update(
                    callback(chat, self.user, data, message_id=mid, query_id=f"q{next(_query_ids)}")
                )
                return
        raise AssertionError(f"no button {label!r} in {self.buttons(chat_id)}")

    def _message_id_of(self, call: Any) -> int:
        if "message_id" in call.params:
            return int(call.params["message_id"])
        assert call.message_id is not None, call
        return int(call.message_id)

    def texts(self, chat_id: int | None = None) -> list[str]:
        """The bot's messages as the chat shows them now (edits applied, deletions gone)."""
        return self.server.texts(self.user_id if chat_id is None else chat_id)

    def everything(self, chat_id: int | None = None) -> str:
        """Every text the bot ever put in the chat (messages, edits, drafts)."""
        chat = str(self.user_id if chat_id is None else chat_id)
        parts = [
            str(c.params.get("text", c.params.get("caption", "")))
            for c in self.server.calls
            if str(c.params.get("chat_id")) == chat
        ]
        return "\n".join(parts)

    async def wait_text(
        self, pattern: str, *, chat_id: int | None = None, within: float = 15.0
    ) -> str:
        """Wait for a bot message in the chat matching ``pattern`` (a regex); returns it."""
        rx = re.compile(pattern, re.S)

        def hit() -> str | None:
            return next((t for t in reversed(self.texts(chat_id)) if rx.search(t)), None)

        try:
            await self.server.wait_for(lambda: hit() is not None, within)
        except TimeoutError:
            raise AssertionError(
                f"no message matching {pattern!r}; the chat shows:\n"
                + "\n---\n".join(self.texts(chat_id))
            ) from None
        found = hit()
        assert found is not None
        return found
