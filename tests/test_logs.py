"""Log redaction: canaries in messages, arguments, exceptions and stacks never reach the output."""

from __future__ import annotations

import io
import logging
import secrets
import sys
import threading
import warnings
from collections.abc import Iterator

import httpx
import pytest

from core import logs
from core.logs import (
    RedactingFilter,
    configure_logging,
    install_filter,
    redact_text,
    register_secret,
)
from tests.canaries import (
    anthropic_key,
    discord_token,
    moonshot_key,
    openai_key,
    slack_bot_token,
    telegram_token,
)

log = logging.getLogger("byokbot.test_logs")


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore the root handlers, levels and the secret registry after each test."""
    monkeypatch.setattr(logs, "_registered", ())
    # configure_logging replaces both hooks; monkeypatch puts the originals back.
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in logs.QUIET_LOGGERS}
    yield
    logging.captureWarnings(False)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    install_filter(caplog.handler)
    caplog.set_level(logging.DEBUG)
    return caplog


class Leaky:
    """An object whose str and repr carry a key, as SDK objects sometimes do."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __str__(self) -> str:
        return f"Leaky(key={self.key})"

    __repr__ = __str__


def assert_clean(text: str, *canaries: str) -> None:
    for canary in canaries:
        assert canary not in text
        assert canary[-16:] not in text


# --- the filter --------------------------------------------------------------------------------


def test_canary_in_the_message(captured: pytest.LogCaptureFixture) -> None:
    key = anthropic_key()

    log.debug(f"user pasted {key} in a group")

    assert captured.messages == ["user pasted [REDACTED anthropic] in a group"]
    assert_clean(captured.text, key)


def test_canary_in_positional_dict_and_object_args(captured: pytest.LogCaptureFixture) -> None:
    keys = [anthropic_key(), openai_key(), moonshot_key(), slack_bot_token(), discord_token()]

    log.info("positional %s and %r", keys[0], (keys[1],))
    log.info("mapping %(key)s", {"key": keys[2]})
    log.warning("object %s list %s", Leaky(keys[3]), [keys[4]])

    assert captured.messages == [
        "positional [REDACTED anthropic] and ('[REDACTED openai]',)",
        "mapping [REDACTED api-key]",
        "object Leaky(key=[REDACTED slack]) list ['[REDACTED discord]']",
    ]
    assert_clean(captured.text, *keys)
    assert all(record.args == () for record in captured.records)


def test_canary_in_exception_text_and_its_cause(captured: pytest.LogCaptureFixture) -> None:
    key, token = anthropic_key(), telegram_token()

    try:
        try:
            raise ValueError(f"provider said: invalid x-api-key {key}")
        except ValueError as inner:
            raise RuntimeError(Leaky(token)) from inner
    except RuntimeError:
        log.exception("turn failed")

    (record,) = captured.records
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "ValueError: provider said: invalid x-api-key [REDACTED anthropic]" in record.exc_text
    assert "RuntimeError: Leaky(key=[REDACTED telegram])" in record.exc_text
    assert "turn failed" in captured.text
    assert_clean(captured.text, key, token)


def test_already_formatted_exception_text_is_redacted_too() -> None:
    key = openai_key()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), None)
    record.exc_text = f"Traceback...\nKeyError: '{key}'"

    assert RedactingFilter().filter(record) is True

    assert record.exc_text == "Traceback...\nKeyError: '[REDACTED openai]'"


def test_canary_in_stack_info_and_extra_fields() -> None:
    key, token = anthropic_key(), discord_token()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s|%(token)s"))
    install_filter(handler)
    install_filter(handler)  # a second call adds nothing
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "hello", (), None, sinfo=f"Stack (most recent):\n  {key}"
    )
    record.token = token

    handler.handle(record)

    assert len(handler.filters) == 1
    assert stream.getvalue() == (
        "hello|[REDACTED discord]\nStack (most recent):\n  [REDACTED anthropic]\n"
    )


def test_a_bad_format_string_neither_raises_nor_leaks(
    captured: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    key = anthropic_key()

    log.info("two %s %s but one arg", key)

    assert captured.messages == [
        "two %s %s but one arg (log arguments failed to format: TypeError)"
    ]
    assert_clean(captured.text + capsys.readouterr().err, key)


def test_registered_exact_secrets_are_redacted_by_label(captured: pytest.LogCaptureFixture) -> None:
    signing = secrets.token_hex(16)  # no known shape: only exact matching can catch it
    register_secret(signing, label="slack signing secret")
    register_secret("short", label="ignored")

    log.info("verifying with %s; a short word stays", signing)

    assert captured.messages == [
        "verifying with [REDACTED slack signing secret]; a short word stays"
    ]


def test_longer_registered_secret_wins_over_one_it_contains() -> None:
    inner = secrets.token_hex(8)
    outer = inner + secrets.token_hex(8)
    register_secret(inner, label="inner")
    register_secret(outer, label="outer")
    register_secret(outer, label="outer again")

    assert redact_text(f"{outer} {inner}") == "[REDACTED outer] [REDACTED inner]"


def test_register_secret_is_thread_safe() -> None:
    values = [secrets.token_hex(12) for _ in range(200)]

    threads = [
        threading.Thread(target=register_secret, args=(value,), kwargs={"label": "t"})
        for value in values
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert redact_text(" ".join(values)) == " ".join(["[REDACTED t]"] * len(values))


# --- configure_logging and httpx ---------------------------------------------------------------


def bot_api_client() -> httpx.Client:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    return httpx.Client(transport=httpx.MockTransport(answer), trust_env=False)


def test_configure_logging_redacts_every_logger_and_is_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    key = anthropic_key()

    configure_logging("DEBUG", stream=first)
    configure_logging("DEBUG", stream=second)
    logging.getLogger("some.third.party").debug("got %s", key)

    ours = [h for h in logging.getLogger().handlers if isinstance(h, logs._ByokbotHandler)]
    assert len(ours) == 1
    assert logging.getLogger().level == logging.DEBUG
    assert first.getvalue() == ""
    assert "some.third.party: got [REDACTED anthropic]" in second.getvalue()
    assert_clean(second.getvalue(), key)


def test_httpx_at_info_logs_nothing_after_configure_logging() -> None:
    stream = io.StringIO()
    token = telegram_token()
    configure_logging("DEBUG", stream=stream)

    with bot_api_client() as client:
        client.get(f"https://api.telegram.org/bot{token}/getMe")
        # Someone lowers the level again later: the handler still keeps httpx quiet.
        logging.getLogger("httpx").setLevel(logging.INFO)
        client.get(f"https://api.telegram.org/bot{token}/getMe")

    assert logging.getLogger("httpcore").level == logging.WARNING
    assert "HTTP Request" not in stream.getvalue()
    assert_clean(stream.getvalue(), token)


def test_httpx_warnings_still_pass_but_redacted() -> None:
    stream = io.StringIO()
    token = telegram_token()
    configure_logging("INFO", stream=stream)

    logging.getLogger("httpx").warning("retrying https://api.telegram.org/bot%s/getMe", token)

    assert "retrying https://api.telegram.org/bot[REDACTED telegram]/getMe" in stream.getvalue()
    assert_clean(stream.getvalue(), token)


def test_httpx_forced_to_info_is_redacted_in_caplog(captured: pytest.LogCaptureFixture) -> None:
    token = telegram_token()
    logging.getLogger("httpx").setLevel(logging.INFO)

    with bot_api_client() as client:
        client.post(f"https://api.telegram.org/bot{token}/sendMessage", json={"text": "hi"})

    (record,) = [r for r in captured.records if r.name == "httpx"]
    assert record.getMessage() == (
        "HTTP Request: POST https://api.telegram.org/bot[REDACTED telegram]/sendMessage "
        '"HTTP/1.1 200 OK"'
    )
    assert_clean(captured.text, token)


def test_configure_logging_rejects_an_unknown_level() -> None:
    with pytest.raises(ValueError, match="LOUD"):
        configure_logging("LOUD", stream=io.StringIO())


def test_default_stream_is_stderr() -> None:
    configure_logging()

    (ours,) = [h for h in logging.getLogger().handlers if isinstance(h, logs._ByokbotHandler)]
    assert ours.stream is sys.stderr


def test_sdk_debug_records_are_dropped_but_info_passes_redacted() -> None:
    stream = io.StringIO()
    unknown_shape = "custom-" + secrets.token_hex(20)  # no pattern can recognise this one
    token = telegram_token()
    configure_logging("DEBUG", stream=stream)

    logging.getLogger("telegram.ext.Application").debug("Processing update %s", unknown_shape)
    logging.getLogger("discord.gateway").debug("WebSocket Event: %s", unknown_shape)
    logging.getLogger("slack_sdk.web.base_client").debug("Sending a request %s", unknown_shape)
    logging.getLogger("telegram.ext.Application").info("Application started with %s", token)
    logging.getLogger("byokbot.flows").debug("our own debug line")

    output = stream.getvalue()
    assert unknown_shape not in output
    assert "telegram.ext.Application: Application started with [REDACTED telegram]" in output
    assert "byokbot.flows: our own debug line" in output
    assert_clean(output, token)


def test_extra_objects_are_replaced_only_when_they_leak() -> None:
    key = anthropic_key()
    harmless = {"tenant": "t-1"}
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    record.payload = {"api_key": key}
    record.context = harmless
    record.count = 3

    RedactingFilter().filter(record)

    assert record.payload == "{'api_key': '[REDACTED anthropic]'}"
    assert record.context is harmless
    assert record.count == 3


def test_uncaught_exceptions_are_logged_redacted_not_printed_raw(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stream = io.StringIO()
    token = telegram_token()
    configure_logging("INFO", stream=stream)

    try:
        raise RuntimeError(f"The token `{token}` was rejected by the server.")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)

    def crash() -> None:
        raise ValueError(f"worker saw {token}")

    thread = threading.Thread(target=crash, name="worker-1")
    thread.start()
    thread.join()

    output = stream.getvalue()
    assert "byokbot.crash: uncaught exception\n" in output
    assert "RuntimeError: The token `[REDACTED telegram]` was rejected" in output
    assert "uncaught exception in thread worker-1" in output
    assert "ValueError: worker saw [REDACTED telegram]" in output
    assert_clean(output + capsys.readouterr().err, token)


def test_warnings_go_through_the_redacting_handler(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    token = telegram_token()
    configure_logging("INFO", stream=stream)

    warnings.showwarning(UserWarning(f"unclosed Bot[token={token}]"), UserWarning, __file__, 1)

    assert "py.warnings:" in stream.getvalue()
    assert "UserWarning: unclosed Bot[token=[REDACTED telegram]]" in stream.getvalue()
    assert_clean(stream.getvalue() + capsys.readouterr().err, token)


def test_json_logs_keep_the_redaction() -> None:
    """[logging] format = "json": one object per line, the redaction filter still applied."""
    import json

    from tests.canaries import anthropic_key

    key = anthropic_key()
    stream = io.StringIO()
    configure_logging("INFO", stream=stream, json_lines=True)
    log = logging.getLogger("byokbot.test")
    log.info("tenant pasted %s", key, extra={"tenant": "t1", "detail": key})
    try:
        raise ValueError(key)
    except ValueError:
        log.exception("failed")
    lines = [json.loads(x) for x in stream.getvalue().splitlines()]
    configure_logging("INFO", stream=stream)  # back to text: the same handler, reformatted
    log.info("plain again")
    assert key not in stream.getvalue()
    first, second = lines[-2], lines[-1]
    assert first["level"] == "INFO" and first["logger"] == "byokbot.test"
    assert first["message"].startswith("tenant pasted [REDACTED")
    assert first["tenant"] == "t1" and "[REDACTED" in first["detail"]
    assert "ValueError" in second["exception"] and "[REDACTED" in second["exception"]
    assert stream.getvalue().splitlines()[-1].endswith("byokbot.test: plain again")
