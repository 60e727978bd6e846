"""The bot's command hints in Discord's own slash command syntax.

The bot's texts name commands the way they are typed on a text platform (``/key add
<provider>``). On Discord an option is filled in by name, as the command picker shows it
(``/key add provider:<provider>``), so outgoing bot texts are rewritten from the registered
command definitions. Only what is certainly an option value is rewritten: a placeholder
(``<provider>``), a value the option offers (a provider id, a plan id, a model), or the
words after a free-text option; ``/plan to switch`` stays prose. The agent's replies are not
rewritten (the adapter applies this to the bot's plain texts only).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# Commands whose hints are typed on another platform (a link code is redeemed elsewhere).
_UNTOUCHED: Final = frozenset({"link"})
_COMMAND: Final = re.compile(r"(?<![\w/<:.])/(?P<name>[a-z][a-z0-9_-]*)\b(?!/)")
_TRAILING: Final = ".,;:!?)"
SUB_COMMAND, SUB_COMMAND_GROUP = 1, 2
# Words that continue a sentence after a command ("send /persona to see it"), not a value.
_PROSE: Final = frozenset(
    {"to", "for", "with", "and", "or", "in", "on", "at", "the", "a", "an", "if", "when"}
    | {"then", "again", "first", "there", "here", "now"}
)


@dataclass(frozen=True, slots=True)
class _Option:
    name: str
    values: frozenset[str]  # what the option offers (choices, autocomplete candidates)
    free_text: bool  # a free-text option: any words are its value


@dataclass(frozen=True, slots=True)
class SlashSyntax:
    """Rewrites ``/cmd [sub] value`` into ``/cmd [sub] option:value`` for registered commands."""

    options: Mapping[tuple[str, str | None], _Option | None]
    subs: Mapping[str, frozenset[str]]

    def __call__(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        while (match := _COMMAND.search(text, pos)) is not None:
            line_end = text.find("\n", match.end())
            rest = text[match.end() : len(text) if line_end < 0 else line_end]
            replacement, used = self._rewrite(match.group("name"), rest)
            out += [text[pos : match.start()], replacement]
            pos = match.end() + used
        out.append(text[pos:])
        return "".join(out)

    def _rewrite(self, name: str, rest: str) -> tuple[str, int]:
        """The command as Discord shows it, and how much of ``rest`` that consumed."""
        head = f"/{name}"
        if name in _UNTOUCHED or ((name, None) not in self.options and name not in self.subs):
            return head, 0
        sub: str | None = None
        used = 0
        subs = self.subs.get(name, frozenset())
        if subs:
            word = _next_word(rest)
            if word is None or word.rstrip(_TRAILING) != word or word not in subs:
                return head, 0  # "/key" alone, or "/key rotate." ending the sentence
            sub, used = word, 1 + len(word)
            head = f"{head} {sub}"
        option = self.options.get((name, sub))
        word = _next_word(rest[used:])
        if option is None or word is None or not _is_value(word, option):
            return head, used
        return f"{head} {option.name}:{word}", used + 1 + len(word)


def _next_word(rest: str) -> str | None:
    """The word right after one space; None when no word follows directly."""
    if len(rest) < 2 or rest[0] != " " or rest[1].isspace():
        return None
    return rest[1:].split(maxsplit=1)[0]


def _is_value(word: str, option: _Option) -> bool:
    if word[0] in "<[{":
        return True  # a placeholder such as <provider> or [page]
    bare = word.rstrip(_TRAILING)
    if bare in option.values:
        return True
    # A free-text option takes whatever follows, unless the sentence simply goes on.
    return option.free_text and bool(bare) and bare.lower() not in _PROSE


def from_definitions(
    definitions: Sequence[Mapping[str, Any]], values: Mapping[str, Collection[str]]
) -> SlashSyntax:
    """The rewriter for the registered commands; ``values`` lists each option's offered values."""
    options: dict[tuple[str, str | None], _Option | None] = {}
    subs: dict[str, frozenset[str]] = {}

    def first_option(opts: Sequence[Mapping[str, Any]]) -> _Option | None:
        for opt in opts:
            if opt.get("type") in (SUB_COMMAND, SUB_COMMAND_GROUP):
                continue
            offered = {str(c["value"]) for c in opt.get("choices") or ()}
            offered |= set(values.get(str(opt["name"]), ()))
            free = not opt.get("choices") and not opt.get("autocomplete")
            return _Option(str(opt["name"]), frozenset(offered), free)
        return None

    for d in definitions:
        name = str(d["name"])
        opts = list(d.get("options") or ())
        nested = [o for o in opts if o.get("type") == SUB_COMMAND]
        if nested:
            subs[name] = frozenset(str(o["name"]) for o in nested)
            for o in nested:
                options[(name, str(o["name"]))] = first_option(list(o.get("options") or ()))
        else:
            options[(name, None)] = first_option(opts)
    return SlashSyntax(options, subs)
