"""Pure translation between terminal lines and the neutral chat model."""

from __future__ import annotations

from core.chat import Button, ChatRef, Event, EventKind, Reply, UserRef, is_link


def to_event(
    line: str, *, user: UserRef, chat: ChatRef, buttons: list[Button], seq: int
) -> Event | None:
    """Translate one typed line; blank lines give None.

    ``/cmd args`` is a command, a number while buttons are shown presses one, anything else is
    a message.
    """
    text = line.rstrip("\r\n")
    stripped = text.strip()
    if not stripped:
        return None
    event_id = f"console:{seq}"
    if stripped.isdigit() and buttons:
        index = int(stripped) - 1
        if 0 <= index < len(buttons):
            return Event(
                EventKind.BUTTON,
                user,
                chat,
                payload=buttons[index].payload,
                event_id=event_id,
                message_id=str(seq),
            )
    if stripped.startswith("/") and len(stripped) > 1:
        head, *args = stripped[1:].split()
        return Event(
            EventKind.COMMAND,
            user,
            chat,
            text=stripped,
            command=head.lower(),
            args=tuple(args),
            event_id=event_id,
            message_id=str(seq),
        )
    return Event(EventKind.MESSAGE, user, chat, text=text, event_id=event_id, message_id=str(seq))


def render(reply: Reply) -> tuple[str, list[Button]]:
    """The text to print and the buttons it offers, numbered from 1 in reading order."""
    links = [b for row in reply.buttons for b in row if is_link(b.payload)]
    text = reply.text + "".join(f"\n  {b.label}: {b.payload}" for b in links)
    buttons = [
        b
        for row in reply.buttons
        for b in row
        if not b.payload.startswith("@") and not is_link(b.payload)
    ]
    if not buttons:
        return text, []
    choices = "\n".join(f"  [{i}] {b.label}" for i, b in enumerate(buttons, start=1))
    return f"{text}\n{choices}\n(type a number to choose)", buttons
