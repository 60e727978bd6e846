"""Provider key shapes, safe fingerprints, and detection of keys and tokens leaked into text."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from core.errors import KeyShapeError
from core.secret import Secret

__all__ = [
    "KeyShape",
    "Leak",
    "ShapeProblem",
    "check_shape",
    "continues_leak",
    "find_leaks",
    "fingerprint",
    "fold",
    "is_key_fragment",
    "normalize",
    "redact",
    "resembles_key",
]


class KeyShape(StrEnum):
    """The key formats ``check_shape`` knows; a provider's config names one."""

    ANTHROPIC = "anthropic"
    OPENAI = "openai"
    MOONSHOT = "moonshot"
    GENERIC = "generic"


class ShapeProblem(StrEnum):
    """Every ``KeyShapeError.reason``: short, secret-free, safe to map to a user text."""

    EMPTY = "empty"
    WHITESPACE = "contains spaces or line breaks"
    BAD_CHARACTERS = "has characters keys never contain"
    WRONG_LENGTH = "wrong length"
    NO_SK_ANT_PREFIX = "does not start with sk-ant-"
    NO_SK_PREFIX = "does not start with sk-"
    LOOKS_OPENAI = "looks like an OpenAI key"
    LOOKS_ANTHROPIC = "looks like an Anthropic key"
    ADMIN_KEY = "is an admin key, not an API key"
    SUBSCRIPTION_TOKEN = "is a subscription token, not an API key"  # noqa: S105 - a reason, not a secret
    NOT_ANTHROPIC = "is not an Anthropic API key"
    NOT_OPENAI = "is not an OpenAI API key"


_OPENAI_MARKER: Final = "T3BlbkFJ"  # base64 of "OpenAI", inside every OpenAI API key
_ANTHROPIC_LENGTH: Final = 108  # "sk-ant-api03-" + 93 + "AA"
_MOONSHOT_BODY: Final = range(32, 65)  # documented as ~48; allow some slack
_GENERIC_LENGTH: Final = range(8, 1025)
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")
_GENERIC_CHARS = re.compile(r"[A-Za-z0-9._~+/=:-]+")
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_OPENAI_PREFIXED = re.compile(r"sk-(?:proj|svcacct|None)-([A-Za-z0-9_-]+)")
_OPENAI_BODY = re.compile(r"[A-Za-z0-9_-]{20,80}T3BlbkFJ[A-Za-z0-9_-]{20,80}")
_OPENAI_LEGACY = re.compile(r"sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}")
_KNOWN_PREFIXES: Final = ("sk-ant-", "sk-proj-", "sk-svcacct-", "sk-admin-", "sk-")
# Characters people paste around a key: quotes, backticks, zero-width marks.
_WRAPPERS: Final = "`'\"\u201c\u201d\u2018\u2019\u00ab\u00bb\u200b\u200c\u200d\u2060\ufeff"
_FINGERPRINT_MIN_BODY: Final = 16  # below this, even 4 characters give too much away


def normalize(key: Secret) -> Secret:
    """Strip whitespace, quotes and backticks that people paste around a key."""
    value = key.reveal()
    while True:
        stripped = value.strip().strip(_WRAPPERS)
        if stripped == value:
            return Secret(value)
        value = stripped


def _resembles(value: str) -> KeyShape | None:
    if value.startswith("sk-ant-"):
        return KeyShape.ANTHROPIC
    if value.startswith(("sk-proj-", "sk-svcacct-", "sk-admin-", "sk-None-")):
        return KeyShape.OPENAI
    if _OPENAI_LEGACY.fullmatch(value):
        return KeyShape.OPENAI
    return None


def _anthropic_problem(value: str) -> ShapeProblem | None:
    if _resembles(value) is KeyShape.OPENAI:
        return ShapeProblem.LOOKS_OPENAI
    if not value.startswith("sk-ant-"):
        return ShapeProblem.NO_SK_ANT_PREFIX
    if value.startswith("sk-ant-admin01-"):
        return ShapeProblem.ADMIN_KEY
    if value.startswith(("sk-ant-oat01-", "sk-ant-ort01-")):
        return ShapeProblem.SUBSCRIPTION_TOKEN
    if not value.startswith("sk-ant-api03-"):
        return ShapeProblem.NOT_ANTHROPIC
    if len(value) != _ANTHROPIC_LENGTH:
        return ShapeProblem.WRONG_LENGTH
    if not value.endswith("AA"):
        return ShapeProblem.NOT_ANTHROPIC
    return None


def _openai_problem(value: str) -> ShapeProblem | None:
    if _resembles(value) is KeyShape.ANTHROPIC:
        return ShapeProblem.LOOKS_ANTHROPIC
    if not value.startswith("sk-"):
        return ShapeProblem.NO_SK_PREFIX
    if value.startswith("sk-admin-"):
        return ShapeProblem.ADMIN_KEY
    prefixed = _OPENAI_PREFIXED.fullmatch(value)
    body = prefixed.group(1) if prefixed else value[3:]
    if _OPENAI_MARKER not in body:
        return ShapeProblem.NOT_OPENAI
    if prefixed is None:
        return None if _OPENAI_LEGACY.fullmatch(value) else ShapeProblem.WRONG_LENGTH
    return None if _OPENAI_BODY.fullmatch(body) else ShapeProblem.WRONG_LENGTH


def _moonshot_problem(value: str) -> ShapeProblem | None:
    resembles = _resembles(value)
    if resembles is KeyShape.ANTHROPIC:
        return ShapeProblem.LOOKS_ANTHROPIC
    if resembles is KeyShape.OPENAI:
        return ShapeProblem.LOOKS_OPENAI
    if not value.startswith("sk-"):
        return ShapeProblem.NO_SK_PREFIX
    body = value[3:]
    if body and not _ALNUM.fullmatch(body):
        return ShapeProblem.BAD_CHARACTERS
    if len(body) not in _MOONSHOT_BODY:
        return ShapeProblem.WRONG_LENGTH
    return None


def _generic_problem(value: str) -> ShapeProblem | None:
    if not _GENERIC_CHARS.fullmatch(value):
        return ShapeProblem.BAD_CHARACTERS
    if len(value) not in _GENERIC_LENGTH:
        return ShapeProblem.WRONG_LENGTH
    return None


def check_shape(shape: str, key: Secret) -> None:
    """Raise ``KeyShapeError(provider=shape, reason=...)`` unless ``key`` has that shape.

    Surrounding whitespace is ignored; callers store ``normalize(key)``. An unknown ``shape``
    is a programming error (``ValueError``).
    """
    kind = KeyShape(shape)
    value = key.reveal().strip()
    problem: ShapeProblem | None
    if not value:
        problem = ShapeProblem.EMPTY
    elif any(ch.isspace() for ch in value):
        problem = ShapeProblem.WHITESPACE
    elif kind is KeyShape.GENERIC:
        problem = _generic_problem(value)
    elif not _TOKEN_CHARS.fullmatch(value):
        problem = ShapeProblem.BAD_CHARACTERS
    elif kind is KeyShape.ANTHROPIC:
        problem = _anthropic_problem(value)
    elif kind is KeyShape.OPENAI:
        problem = _openai_problem(value)
    else:
        problem = _moonshot_problem(value)
    if problem is not None:
        raise KeyShapeError(provider=str(kind), reason=str(problem))


def fingerprint(key: Secret) -> str:
    """Return a display form such as ``sk-ant-…9f3c``: known prefix, ellipsis, last 4.

    Keys of unknown shape give ``…`` + last 4; keys too short to spare 4 characters give ``…``.
    """
    value = normalize(key).reveal()
    prefix = next((p for p in _KNOWN_PREFIXES if value.startswith(p)), "")
    if len(value) - len(prefix) < _FINGERPRINT_MIN_BODY:
        return prefix + "…"
    return f"{prefix}…{value[-4:]}"


_GENERIC_LOOKALIKE_MIN: Final = 20


def resembles_key(text: str, shape: str) -> bool:
    """Whether a whole message looks like an attempt to hand over a key of ``shape``.

    True for a message holding a credential (``find_leaks``), one that has the shape, or a
    single word that starts like a key ("sk-…", possibly cut short). A generic shape accepts
    any token, so there only a long mix of letters and digits counts: "nevermind" is a word.
    """
    if find_leaks(text):
        return True
    value = normalize(Secret(text)).reveal()
    if not value or any(ch.isspace() for ch in value):
        return False
    if value.startswith(_KNOWN_PREFIXES):
        return True
    try:
        check_shape(shape, Secret(value))
    except KeyShapeError:
        return False
    if KeyShape(shape) is not KeyShape.GENERIC:
        return True
    return (
        len(value) >= _GENERIC_LOOKALIKE_MIN
        and any(ch.isdigit() for ch in value)
        and any(ch.isalpha() for ch in value)
    )


@dataclass(frozen=True, slots=True)
class Leak:
    """A credential found in text: its kind and the ``text[start:end]`` span."""

    kind: str
    start: int
    end: int


# Detection is deliberately looser than check_shape: a truncated or oddly wrapped key still
# leaks most of its secret. Alternatives are tried in order, so specific shapes win.
# Only ASCII classes ([0-9], never \d) so neighbouring non-Latin text ends a match cleanly.
_LEAK_PATTERNS: Final = (
    ("anthropic", r"sk-ant-[A-Za-z0-9_-]{20,}"),
    ("openai", r"sk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_-]{20,}"),
    ("openai", r"(?<![A-Za-z0-9])sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}(?![A-Za-z0-9])"),
    # Moonshot, DeepSeek, OpenRouter (sk-or-v1-…) and other "sk-" keys.
    ("api-key", r"(?<![A-Za-z0-9])sk-(?:[A-Za-z0-9]{1,12}-){0,2}[A-Za-z0-9]{32,}"),
    # Every Slack token continues with a digit after its prefix; "xoxo-hugs" is not a token.
    ("slack", r"(?:xox[abposer](?:\.xox[bp])?|xapp)-[0-9][A-Za-z0-9-]{9,}"),
    ("telegram", r"(?<![0-9])[0-9]{6,12}:[A-Za-z0-9_-]{35,}"),
    (
        "discord",
        r"(?<![A-Za-z0-9_-])[MNO][A-Za-z0-9_-]{23,25}\.[A-Za-z0-9_-]{6}\."
        r"[A-Za-z0-9_-]{27,38}(?![A-Za-z0-9_-])",
    ),
    ("byok", r"byok-[A-Za-z0-9_-]{32,}"),
)
_LEAK = re.compile("|".join(f"(?P<g{i}>{p})" for i, (_, p) in enumerate(_LEAK_PATTERNS)))
_KIND_OF_GROUP: Final = {f"g{i}": kind for i, (kind, _) in enumerate(_LEAK_PATTERNS)}


def fold(text: str) -> tuple[str, list[int] | None]:
    """``text`` as a matcher should read it, and where each of its characters came from.

    Format characters (Unicode category Cf: zero-width space and joiners, soft hyphen, word
    joiner U+2060, BOM…) are dropped and every other character is NFKC-normalised, so
    fullwidth or styled look-alikes read as ASCII. The index list maps each folded character
    back to its position in ``text``; None when nothing changed (plain ASCII, the fast path).
    """
    if text.isascii():
        return text, None
    out: list[str] = []
    origin: list[int] = []
    for position, char in enumerate(text):
        if char.isascii():
            out.append(char)
            origin.append(position)
            continue
        if unicodedata.category(char) == "Cf":
            continue
        for folded in unicodedata.normalize("NFKC", char):
            out.append(folded)
            origin.append(position)
    return "".join(out), origin


def find_leaks(text: str) -> list[Leak]:
    """Return every credential-shaped span in ``text``, in order and non-overlapping.

    Matching reads the folded text (``fold``): a key with a zero-width space, a soft hyphen or
    a word joiner inside, or typed in fullwidth letters, is still a key. Spans are positions
    in ``text`` itself, so ``redact`` removes the hidden characters with the key.
    """
    folded, origin = fold(text)
    leaks: list[Leak] = []
    for match in _LEAK.finditer(folded):
        group = match.lastgroup
        if group is None:  # pragma: no cover - every alternative is a named group
            continue
        start, end = match.start(), match.end()
        if origin is not None:
            start, end = origin[start], origin[end - 1] + 1
        leaks.append(Leak(kind=_KIND_OF_GROUP[group], start=start, end=end))
    return leaks


# A single word that starts a key: what the first of two messages holding a split key looks
# like when it is too short to be a leak on its own.
_FRAGMENT = re.compile(r"sk-(?:ant|proj|svcacct|admin|None)-[A-Za-z0-9_-]*|sk-[A-Za-z0-9]{8,}")
# How much of the previous message can be the first part of a key (the longest keys are
# ~110 characters), and how much of a key must continue in the new one: a short word
# typed straight after a pasted key ("thanks") is not the rest of it.
_SPLIT_TAIL: Final = 256
_SPLIT_MIN_CONTINUATION: Final = 16
_CONTINUATION = re.compile(r"[A-Za-z0-9_.:-]{16}")


def is_key_fragment(text: str) -> bool:
    """Whether a whole message is one word that starts like a key (``sk-ant-…``, ``sk-…``)."""
    folded = fold(text)[0].strip().strip(_WRAPPERS)
    return bool(folded) and _FRAGMENT.fullmatch(folded) is not None


def continues_leak(previous: str, text: str) -> bool:
    """Whether ``text`` carries on a key that ``previous`` (the message before it) began.

    A key split over two messages: read together, a credential starts in ``previous`` and
    goes on for at least 16 characters into ``text``.
    """
    if not previous or not text:
        return False
    # Cheap test first (this runs on every message): the new one must open with a long run
    # of characters keys are made of.
    if _CONTINUATION.match(fold(text[: _SPLIT_MIN_CONTINUATION * 4])[0]) is None:
        return False
    tail = previous[-_SPLIT_TAIL:]
    joined = tail + text
    return any(
        leak.start < len(tail) and leak.end - len(tail) >= _SPLIT_MIN_CONTINUATION
        for leak in find_leaks(joined)
    )


def redact(text: str) -> str:
    """Replace every leak in ``text`` with ``[REDACTED <kind>]``."""
    leaks = find_leaks(text)
    if not leaks:
        return text
    parts: list[str] = []
    position = 0
    for leak in leaks:
        parts.append(text[position : leak.start])
        parts.append(f"[REDACTED {leak.kind}]")
        position = leak.end
    parts.append(text[position:])
    return "".join(parts)
