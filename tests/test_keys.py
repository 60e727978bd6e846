"""Key shapes, fingerprints, normalisation, leak detection and redaction."""

from __future__ import annotations

import dataclasses
import secrets
import string

import pytest

from core.errors import KeyShapeError
from core.keys import (
    KeyShape,
    Leak,
    ShapeProblem,
    check_shape,
    continues_leak,
    find_leaks,
    fingerprint,
    fold,
    is_key_fragment,
    normalize,
    redact,
    resembles_key,
)
from core.secret import Secret
from tests.canaries import (
    ALL_CANARIES,
    anthropic_key,
    byok_token,
    discord_token,
    moonshot_key,
    openai_key,
    openai_legacy_key,
    slack_app_token,
    slack_bot_token,
    telegram_token,
)

URLSAFE = string.ascii_letters + string.digits + "-_"
ALNUM = string.ascii_letters + string.digits


def rand(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


def reason_of(shape: str, value: str) -> str:
    with pytest.raises(KeyShapeError) as caught:
        check_shape(shape, Secret(value))
    assert caught.value.provider == shape
    # The error never carries the key, not even a recognisable piece of it.
    if len(value.strip()) >= 12:
        assert value.strip()[-12:] not in str(caught.value)
        assert value.strip()[-12:] not in repr(caught.value)
    return caught.value.reason


# --- check_shape -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "make"),
    [
        ("anthropic", anthropic_key),
        ("anthropic", lambda: f"  {anthropic_key()}\n"),
        ("openai", openai_key),
        ("openai", openai_legacy_key),
        ("openai", lambda: "sk-svcacct-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74)),
        ("openai", lambda: "sk-proj-" + rand(URLSAFE, 58) + "T3BlbkFJ" + rand(URLSAFE, 58)),
        ("moonshot", moonshot_key),
        ("generic", lambda: "sk-or-v1-" + secrets.token_hex(32)),
        ("generic", lambda: "gsk_" + rand(ALNUM, 52)),
        ("generic", moonshot_key),
        ("generic", anthropic_key),
    ],
)
def test_check_shape_accepts_real_shapes(shape: str, make: object) -> None:
    value = make()  # type: ignore[operator]

    assert check_shape(shape, Secret(value)) is None


def _anthropic_like(kind: str) -> str:
    return f"sk-ant-{kind}-" + rand(URLSAFE, 93) + "AA"


# The values hold random key material: test ids name shape and reason only, so that every
# pytest-xdist worker collects the same tests.
_SHAPE_CASES = [
    ("anthropic", "", "empty"),
    ("anthropic", " \n\t", "empty"),
    ("openai", "", "empty"),
    ("moonshot", "   ", "empty"),
    ("generic", "", "empty"),
    (
        "anthropic",
        anthropic_key()[:50] + " " + anthropic_key()[50:],
        "contains spaces or line breaks",
    ),
    (
        "anthropic",
        anthropic_key()[:50] + "\n" + anthropic_key()[51:],
        "contains spaces or line breaks",
    ),
    (
        "openai",
        openai_key()[:40] + "\u00a0" + openai_key()[41:],
        "contains spaces or line breaks",
    ),
    ("generic", "two words here", "contains spaces or line breaks"),
    ("anthropic", openai_key(), "looks like an OpenAI key"),
    ("anthropic", openai_legacy_key(), "looks like an OpenAI key"),
    ("anthropic", moonshot_key(), "does not start with sk-ant-"),
    ("anthropic", "ant-" + rand(URLSAFE, 100), "does not start with sk-ant-"),
    ("anthropic", anthropic_key()[:-5], "wrong length"),
    ("anthropic", anthropic_key() + "x", "wrong length"),
    ("anthropic", _anthropic_like("admin01"), "is an admin key, not an API key"),
    ("anthropic", _anthropic_like("oat01"), "is a subscription token, not an API key"),
    ("anthropic", _anthropic_like("api02"), "is not an Anthropic API key"),
    ("anthropic", anthropic_key()[:-2] + "AB", "is not an Anthropic API key"),
    ("anthropic", anthropic_key()[:-3] + "é" + "AA", "has characters keys never contain"),
    (
        "anthropic",
        anthropic_key()[:60] + "\u200b" + anthropic_key()[61:],
        "has characters keys never contain",
    ),
    (
        "anthropic",
        anthropic_key()[:60] + "*" + anthropic_key()[61:],
        "has characters keys never contain",
    ),
    ("openai", anthropic_key(), "looks like an Anthropic key"),
    ("openai", "pk-" + rand(ALNUM, 48), "does not start with sk-"),
    (
        "openai",
        "sk-admin-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74),
        "is an admin key, not an API key",
    ),
    ("openai", moonshot_key(), "is not an OpenAI API key"),
    ("openai", "sk-proj-" + rand(ALNUM, 150), "is not an OpenAI API key"),
    ("openai", "sk-proj-" + rand(ALNUM, 10) + "T3BlbkFJ" + rand(ALNUM, 10), "wrong length"),
    ("openai", "sk-" + rand(ALNUM, 19) + "T3BlbkFJ" + rand(ALNUM, 20), "wrong length"),
    ("openai", openai_key() + "+", "has characters keys never contain"),
    ("moonshot", anthropic_key(), "looks like an Anthropic key"),
    ("moonshot", openai_key(), "looks like an OpenAI key"),
    ("moonshot", openai_legacy_key(), "looks like an OpenAI key"),
    ("moonshot", "ms-" + rand(ALNUM, 48), "does not start with sk-"),
    ("moonshot", "sk-" + rand(ALNUM, 10), "wrong length"),
    ("moonshot", "sk-" + rand(ALNUM, 80), "wrong length"),
    (
        "moonshot",
        "sk-" + rand(ALNUM, 20) + "_" + rand(ALNUM, 27),
        "has characters keys never contain",
    ),
    ("generic", "short", "wrong length"),
    ("generic", "x" * 2000, "wrong length"),
    ("generic", "ключ" + rand(ALNUM, 20), "has characters keys never contain"),
    ("generic", "key<" + rand(ALNUM, 20) + ">", "has characters keys never contain"),
]


@pytest.mark.parametrize(
    ("shape", "value", "reason"),
    _SHAPE_CASES,
    ids=[f"{shape}-{reason}" for shape, _, reason in _SHAPE_CASES],
)
def test_check_shape_rejects_with_the_right_reason(shape: str, value: str, reason: str) -> None:
    assert reason_of(shape, value) == reason


def test_reasons_are_the_shape_problem_values() -> None:
    assert reason_of("anthropic", "") == ShapeProblem.EMPTY
    assert {str(kind) for kind in KeyShape} == {"anthropic", "openai", "moonshot", "generic"}


def test_unknown_shape_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="gemini"):
        check_shape("gemini", Secret(anthropic_key()))


def test_key_shape_error_message_is_secret_free() -> None:
    key = openai_key()
    with pytest.raises(KeyShapeError) as caught:
        check_shape("anthropic", Secret(key))

    assert str(caught.value) == "anthropic key rejected: looks like an OpenAI key"


# --- normalize and fingerprint -----------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        "{}",
        "  {}  \n",
        '"{}"',
        "'{}'",
        "`{}`",
        "```\n{}\n```",
        "\u201c{}\u201d",
        "\u2018{}\u2019",
        "\u00ab{}\u00bb",
        '\ufeff "`{}`" \u200b',
    ],
)
def test_normalize_strips_what_people_paste_around_keys(wrap: str) -> None:
    key = anthropic_key()

    normalized = normalize(Secret(wrap.format(key)))

    assert isinstance(normalized, Secret)
    assert normalized.reveal() == key
    check_shape("anthropic", normalized)


def test_normalize_keeps_the_inside_of_a_key() -> None:
    assert normalize(Secret("a`b'c d")).reveal() == "a`b'c d"


@pytest.mark.parametrize(
    ("make", "prefix"),
    [
        (anthropic_key, "sk-ant-"),
        (openai_key, "sk-proj-"),
        (lambda: "sk-svcacct-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74), "sk-svcacct-"),
        (lambda: "sk-admin-" + rand(URLSAFE, 74) + "T3BlbkFJ" + rand(URLSAFE, 74), "sk-admin-"),
        (openai_legacy_key, "sk-"),
        (moonshot_key, "sk-"),
        (lambda: "gsk_" + rand(ALNUM, 52), ""),
    ],
)
def test_fingerprint_shows_prefix_and_last_four(make: object, prefix: str) -> None:
    key = make()  # type: ignore[operator]

    assert fingerprint(Secret(key)) == f"{prefix}…{key[-4:]}"
    assert fingerprint(Secret(f' "{key}"\n')) == f"{prefix}…{key[-4:]}"


def test_fingerprint_of_a_short_value_shows_no_characters() -> None:
    assert fingerprint(Secret("sk-abc123")) == "sk-…"
    assert fingerprint(Secret("hunter2hunter2")) == "…"
    assert fingerprint(Secret("")) == "…"


# --- find_leaks --------------------------------------------------------------------------------

EXPECTED_KIND = {
    "anthropic": "anthropic",
    "openai": "openai",
    "openai-legacy": "openai",
    "moonshot": "api-key",
    "telegram": "telegram",
    "discord": "discord",
    "slack-bot": "slack",
    "slack-app": "slack",
    "byok": "byok",
}

CONTEXTS = [
    "{}",
    "my key is {}, thanks!",
    "here:\n```\n{}\n```\nok?",
    '```python\nclient = Anthropic(api_key="{}")\n```',
    "'{}'",
    "`{}`",
    '{{"api_key": "{}"}}',
    "export ANTHROPIC_API_KEY={}",
    "\u201c{}\u201d",
    "ключ: {} — спасибо 🙏",
    "キー{}です",
    "🔑{}🔑",
    "token={}&x=1",
]


@pytest.mark.parametrize("name", sorted(ALL_CANARIES))
@pytest.mark.parametrize("context", CONTEXTS)
def test_find_leaks_finds_every_canary_in_every_context(name: str, context: str) -> None:
    canary = ALL_CANARIES[name]()
    text = context.format(canary)
    start = text.index(canary)

    assert find_leaks(text) == [Leak(EXPECTED_KIND[name], start, start + len(canary))]


def test_find_leaks_finds_a_telegram_token_inside_a_bot_api_url() -> None:
    token = telegram_token()
    text = f'HTTP Request: POST https://api.telegram.org/bot{token}/getUpdates "HTTP/1.1 200 OK"'
    start = text.index(token)

    assert find_leaks(text) == [Leak("telegram", start, start + len(token))]


def test_find_leaks_reports_several_leaks_in_order() -> None:
    keys = [anthropic_key(), slack_bot_token(), discord_token(), byok_token(), openai_key()]
    text = "first {} then {}; also {}\n and {} plus {}.".format(*keys)

    leaks = find_leaks(text)

    assert [text[leak.start : leak.end] for leak in leaks] == keys
    assert [leak.kind for leak in leaks] == ["anthropic", "slack", "discord", "byok", "openai"]


def test_find_leaks_catches_other_sk_keys_and_truncated_pastes() -> None:
    openrouter = "sk-or-v1-" + secrets.token_hex(32)
    deepseek = "sk-" + secrets.token_hex(16)
    truncated = anthropic_key()[:40]
    text = f"{openrouter} / {deepseek} / {truncated}"

    assert [(leak.kind, text[leak.start : leak.end]) for leak in find_leaks(text)] == [
        ("api-key", openrouter),
        ("api-key", deepseek),
        ("anthropic", truncated),
    ]


def test_find_leaks_catches_slack_config_and_user_tokens() -> None:
    tokens = [
        f"xoxp-{secrets.randbelow(10**12)}-{secrets.randbelow(10**12)}-{rand(ALNUM, 32)}",
        "xoxe.xoxp-1-" + rand(string.ascii_uppercase + string.digits, 163),
        "xoxe-1-" + rand(string.ascii_uppercase + string.digits, 146),
        slack_app_token(),
    ]

    for token in tokens:
        assert find_leaks(f"token: {token}") == [Leak("slack", 7, 7 + len(token))]


ORDINARY = [
    "Hello! How do I connect my agent to Telegram?",
    "Please read https://github.com/byokbot/byokbot/blob/main/core/keys.py#L10 first.",
    "The endpoint is https://api.telegram.org/bot/getMe and https://api.anthropic.com/v1/messages",
    "https://discord.com/api/v10/channels/175928847299117063/messages?limit=50",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "commit 3b18e512dba79e4c8300dd08aeb37f8e728b8dad (HEAD -> main)",
    "request id 123e4567-e89b-12d3-a456-426614174000 failed",
    "uuid without dashes 123e4567e89b12d3a456426614174000",
    "the task-0123456789abcdef0123456789abcdef finished after "
    "the disk-abcdefabcdefabcdefabcdefabcdefab0",
    "risk-free, desk-bound and sk-learn are all fine words; so is sk-ant- on its own.",
    "Keys look like sk-ant-api03-… or sk-proj-…, never paste them here.",
    "My bot id is 123456789 and the time is 12:30:45 on 2026-11-27.",
    "xoxb is the Slack bot token prefix and xapp the app-level one.",
    "see you soon, xoxo-hugs-and-kisses-to-everyone-at-home",
    "a byok-plan is a bring-your-own-key plan",
    "Room 4B at 10:00; call +1 (555) 010-9999 or mail someone@example.com",
    "base64 SGVsbG8gV29ybGQhIFRoaXMgaXMgYSB0ZXN0IG9mIHRoZSBlbWVyZ2VuY3k=",
    "JWT eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "A Discord snowflake such as 175928847299117063 is not a token.",
    "Path /home/user/.config/byokbot/master.key is mode 0600.",
    "byok- is our token prefix; byok-plan is a word.",
    "Привет! Как подключить ключ? 日本語のテキストも大丈夫です。🙂",
    "import os\nfrom core.vault import Vault\nvault = Vault(ring)  # os.urandom(32)",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_no_false_positives_on_ordinary_text(text: str) -> None:
    assert find_leaks(text) == []
    assert redact(text) == text


# --- redact ------------------------------------------------------------------------------------


def test_redact_replaces_each_leak_with_its_kind() -> None:
    anthropic, telegram, moonshot = anthropic_key(), telegram_token(), moonshot_key()
    text = f"A={anthropic}\nbot{telegram}/getMe\n'{moonshot}' ok"

    assert redact(text) == (
        "A=[REDACTED anthropic]\nbot[REDACTED telegram]/getMe\n'[REDACTED api-key]' ok"
    )


def test_redact_is_idempotent() -> None:
    text = f"key {anthropic_key()} and {discord_token()}"

    once = redact(text)

    assert redact(once) == once
    assert once == "key [REDACTED anthropic] and [REDACTED discord]"


def test_leak_is_a_frozen_value() -> None:
    leak = Leak("anthropic", 1, 2)

    with pytest.raises(dataclasses.FrozenInstanceError):
        leak.start = 5  # type: ignore[misc]
    assert leak == Leak("anthropic", 1, 2)


@pytest.mark.parametrize(
    ("text", "shape", "expected"),
    [
        (anthropic_key(), "anthropic", True),
        (f"  `{anthropic_key()}`  ", "anthropic", True),
        (f"here it is: {anthropic_key()}", "anthropic", True),  # a credential inside text
        ("sk-ant-api03-cut", "anthropic", True),  # starts like a key: a truncated paste
        (openai_key(), "anthropic", True),  # the wrong provider's key is still a key
        ("never mind, what is the capital of France?", "anthropic", False),
        ("hello", "anthropic", False),
        ("nevermind", "generic", False),  # a generic shape accepts any word; words are not keys
        ("a1B2c3D4e5F6g7H8i9J0k", "generic", True),
        ("abcdefghijklmnopqrstuvwxyz", "generic", False),
        ("", "openai", False),
    ],
)
def test_resembles_key(text: str, shape: str, expected: bool) -> None:
    assert resembles_key(text, shape) is expected


# ----- leak guard: hidden characters, look-alikes, split keys (issue 12 item 8) -------------


@pytest.mark.parametrize(
    "hidden",
    ["\u200b", "\u200c", "\u200d", "\u00ad", "\u2060", "\ufeff", "\u180e"],
)
@pytest.mark.parametrize("at", [1, 2, 3, 6, 20])
def test_format_characters_inside_a_key_do_not_hide_it(hidden: str, at: int) -> None:

    key = anthropic_key()
    text = f"my key {key[:at]}{hidden}{key[at:]} ok"
    [leak] = find_leaks(text)
    assert text[leak.start : leak.end] == f"{key[:at]}{hidden}{key[at:]}"
    assert redact(text) == "my key [REDACTED anthropic] ok"


def test_fullwidth_look_alikes_fold_to_ascii() -> None:

    key = anthropic_key()
    wide = "".join(chr(ord(c) + 0xFEE0) for c in "sk-ant-") + key[7:]
    assert fold(wide)[0] == key
    assert [leak.kind for leak in find_leaks(f"é {wide}")] == ["anthropic"]
    assert redact(f"é {wide} ü") == "é [REDACTED anthropic] ü"
    assert fold("plain ascii") == ("plain ascii", None)
    assert find_leaks("naïve café résumé — no key here") == []


def test_key_fragments_and_split_keys() -> None:

    key = anthropic_key()
    for first, second in ((key[:54], key[54:]), (key[:13], key[13:]), (key[:30], key[30:])):
        assert continues_leak(first, second)
        assert continues_leak(f"here: {first}", second)
    other = openai_key()
    assert continues_leak(other[:20], other[20:])
    # A word typed right after a pasted key is not the rest of it.
    assert not continues_leak(key, "thanks")
    assert not continues_leak(key, " and a normal sentence after it")
    assert not continues_leak("", key[54:])
    assert not continues_leak("hello there", "general kenobi")
    assert is_key_fragment("sk-ant-api03-")
    assert is_key_fragment(" `sk-proj-abc` ")
    assert is_key_fragment("sk-\u200bant-")
    assert is_key_fragment("sk-abcdefgh12")
    assert not is_key_fragment("sk-")
    assert not is_key_fragment("ask-me anything")
    assert not is_key_fragment("sk-ant- is how Anthropic keys start")
