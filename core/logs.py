"""Logging set-up with a filter that redacts key shapes and registered secrets from every record."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import IO, Final

from core.keys import redact

__all__ = [
    "QUIET_LOGGERS",
    "SDK_LOGGERS",
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "install_filter",
    "redact_text",
    "register_secret",
]

# httpx logs every request URL at INFO, and Telegram puts the bot token in the URL.
# APScheduler's executor logs two INFO lines per job run (its failures stay at ERROR).
QUIET_LOGGERS: Final = ("httpx", "httpcore", "apscheduler.executors.default")
# Below INFO the platform SDKs log whole updates, gateway events and request bodies, which
# carry what people type, including keys of shapes we cannot recognise. The root handler
# drops those records whatever level the operator picks.
SDK_LOGGERS: Final = ("telegram", "discord", "slack_bolt", "slack_sdk", "aiohttp", "tornado")
_FLOORS: Final = (
    *((name, logging.WARNING) for name in QUIET_LOGGERS),
    *((name, logging.INFO) for name in SDK_LOGGERS),
)
_MIN_SECRET_CHARS: Final = 8
_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_lock = threading.Lock()
# Copy-on-write: readers take the current tuple without locking.
_registered: tuple[tuple[str, str], ...] = ()
# Attributes every LogRecord has; anything else came from ``extra=`` and may hold anything.
_STANDARD_ATTRS: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
}


def register_secret(value: str, *, label: str) -> None:
    """Redact this exact value as ``[REDACTED <label>]`` in every record from now on.

    For secrets that may not match a known shape (bot tokens, signing secrets). Values shorter
    than 8 characters are ignored: redacting them would shred ordinary words.
    """
    global _registered
    if len(value) < _MIN_SECRET_CHARS:
        return
    with _lock:
        if any(existing == value for existing, _ in _registered):
            return
        entries = [*_registered, (value, label)]
        # Longest first, so a secret that contains another is replaced whole.
        entries.sort(key=lambda entry: len(entry[0]), reverse=True)
        _registered = tuple(entries)


def redact_text(text: str) -> str:
    """Apply exact-value redaction of registered secrets, then key-shape redaction."""
    for value, label in _registered:
        if value in text:
            text = text.replace(value, f"[REDACTED {label}]")
    return redact(text)


class RedactingFilter(logging.Filter):
    """Rewrites each record so its message, exception text and stack carry no secret.

    The record is changed in place (``msg`` becomes the final redacted text, ``args`` is
    emptied, ``exc_info`` is replaced by a redacted ``exc_text``), so every handler that sees
    it afterwards, filtered or not, gets the clean version. It never drops a record.
    """

    _formatter: Final = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a filter must never raise; args may be anything
            message = f"{record.msg!s} (log arguments failed to format: {type(exc).__name__})"
        record.msg = redact_text(message)
        record.args = ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        # Formatters print exc_text whenever it is set; the exception object itself (whose
        # args may hold a key) must not reach handlers that format exc_info their own way.
        record.exc_info = None
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_ATTRS:
                setattr(record, name, _redact_extra(value))
        return True


def _redact_extra(value: object) -> object:
    """Redact an ``extra=`` value; non-strings are replaced by text only if they leak."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, int | float):
        return value
    try:
        text = str(value)
    except Exception:  # noqa: BLE001 - a filter must never raise; an unprintable value cannot leak
        return value
    cleaned = redact_text(text)
    return value if cleaned == text else cleaned


class _FloorFilter(logging.Filter):
    """Drops records below a per-logger floor, even if someone lowers that logger's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, floor in _FLOORS:
            if record.name == name or record.name.startswith(name + "."):
                return record.levelno >= floor
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, exception, and ``extra=`` fields.

    It formats what ``RedactingFilter`` left on the record, so the redaction holds here too.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        for name, value in record.__dict__.items():
            if name not in _STANDARD_ATTRS and name not in out:
                out[name] = value if isinstance(value, str | int | float | bool) else str(value)
        return json.dumps(out, ensure_ascii=False)


class _ByokbotHandler(logging.StreamHandler[IO[str]]):
    """The root handler ``configure_logging`` installs; a type so a second call finds it."""


def install_filter(handler: logging.Handler) -> None:
    """Attach a ``RedactingFilter`` to ``handler`` (once), e.g. pytest's caplog handler."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


def configure_logging(
    level: str = "INFO", *, stream: IO[str] | None = None, json_lines: bool = False
) -> None:
    """Install one redacting root handler and keep httpx/httpcore at WARNING. Idempotent.

    The filter sits on the handler, not a logger, so records propagated from every logger
    (third-party ones included) pass through it. The handler also drops SDK records below
    INFO (see ``SDK_LOGGERS``); uncaught exceptions (main and other threads) and warnings
    are logged through it instead of printed raw. ``json_lines`` writes ``JsonFormatter``'s
    one object per line instead of plain text.
    """
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    target = stream if stream is not None else sys.stderr
    handler = next((h for h in root.handlers if isinstance(h, _ByokbotHandler)), None)
    if handler is None:
        handler = _ByokbotHandler(target)
        handler.addFilter(_FloorFilter())
        install_filter(handler)
        root.addHandler(handler)
    elif handler.stream is not target:
        handler.setStream(target)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(_FORMAT))
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Uncaught exceptions would otherwise print straight to stderr, unredacted; some carry a
    # token in their text (python-telegram-bot's InvalidToken does).
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    # Warnings print object reprs to stderr (python-telegram-bot's Bot repr holds the token).
    logging.captureWarnings(True)


_crash_log = logging.getLogger("byokbot.crash")


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    _crash_log.critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    _crash_log.critical(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
