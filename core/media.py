"""What the bot makes of files people send: image types, document text, voice transcripts.

The control plane downloads a file (``FileSource``), then: an image is checked by its magic
bytes and goes to the agent as base64 (``core.llm.ImageInput``); a document's text is
extracted here (PDF with pypdf, in a thread: parsing is CPU work on untrusted input) and given
to the agent as context; a voice note is transcribed with an OpenAI-compatible
``/audio/transcriptions`` endpoint (the tenant's provider, or the metering proxy for a managed
tenant). Limits come from ``[media]``; anything beyond them is a
``MediaRefused`` whose ``reason`` ``bot/texts.py`` turns into words.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
from typing import Final

import httpx

from core.config import MediaSettings
from core.llm import ImageInput, tls_context
from core.secret import Secret

log = logging.getLogger(__name__)

# Types both provider APIs take as image input.
_IMAGE_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


class MediaRefused(Exception):
    """The file cannot be used; ``reason`` is a key of ``texts.MEDIA_REFUSED``."""

    def __init__(self, reason: str, **details: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details


def image_type(data: bytes) -> str | None:
    """The image's media type from its first bytes (not from the name the sender gave)."""
    for magic, media_type in _IMAGE_MAGIC:
        if data.startswith(magic):
            return media_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def image_input(data: bytes) -> ImageInput:
    """The image as the model's input; raises ``MediaRefused("image_type")``."""
    media_type = image_type(data)
    if media_type is None:
        raise MediaRefused("image_type")
    return ImageInput(media_type, base64.b64encode(data).decode("ascii"))


def is_pdf(name: str, mime: str, data: bytes) -> bool:
    return data.startswith(b"%PDF-") or mime == "application/pdf" or name.lower().endswith(".pdf")


async def document_text(name: str, mime: str, data: bytes, limits: MediaSettings) -> str:
    """The text of a text, Markdown, code or PDF file, within ``limits``.

    Raises ``MediaRefused``: ``document_type`` (binary, not a PDF), ``pdf_unreadable``
    (broken or encrypted), ``pdf_pages`` (more pages than allowed), ``document_chars``
    (more text than allowed), ``document_empty`` (no text at all, e.g. a scanned PDF).
    """
    if is_pdf(name, mime, data):
        text = await asyncio.to_thread(_pdf_text, data, limits.max_document_pages)
    else:
        if b"\x00" in data:
            raise MediaRefused("document_type")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise MediaRefused("document_type") from None
    text = text.strip()
    if not text:
        raise MediaRefused("document_empty")
    if len(text) > limits.max_document_chars:
        raise MediaRefused("document_chars", chars=len(text), limit=limits.max_document_chars)
    return text


def _pdf_text(data: bytes, max_pages: int) -> str:
    # Imported here: only the bot's process reads PDFs, and only when one arrives.
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise MediaRefused("pdf_unreadable")
        pages = len(reader.pages)
        if pages > max_pages:
            raise MediaRefused("pdf_pages", pages=pages, limit=max_pages)
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        log.info("pdf not readable: %s", type(exc).__name__)
        raise MediaRefused("pdf_unreadable") from None


def document_prompt(name: str, text: str, caption: str) -> str:
    """The message the agent gets: the file's text as context, then what the person wrote."""
    label = name or "document"
    ask = caption.strip() or "Please read this document and tell me briefly what it says."
    return f'The person sent a file, "{label}". Its text:\n<document>\n{text}\n</document>\n\n{ask}'


class TranscriptionFailed(Exception):
    """The transcription endpoint did not give a transcript; ``reason``: a texts key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def transcribe(
    base_url: str,
    key: Secret,
    audio: bytes,
    *,
    filename: str,
    mime: str,
    model: str,
    seconds: float,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str:
    """POST ``{base_url}/audio/transcriptions`` (multipart, OpenAI's shape): the text."""
    text, _ = await transcribe_timed(
        base_url,
        key,
        audio,
        filename=filename,
        mime=mime,
        model=model,
        seconds=seconds,
        transport=transport,
        verbose=False,
    )
    return text


async def transcribe_timed(
    base_url: str,
    key: Secret,
    audio: bytes,
    *,
    filename: str,
    mime: str,
    model: str,
    seconds: float,
    transport: httpx.AsyncBaseTransport | None = None,
    verbose: bool = True,
    claimed_seconds: float | None = None,
) -> tuple[str, float | None]:
    """As ``transcribe``; with ``verbose`` (``verbose_json``) also the audio's duration.

    ``claimed_seconds`` (the chat platform's figure) goes to the metering proxy as
    ``x-audio-seconds``: it can raise the proxy's reservation, never lower it.
    """
    url = base_url.rstrip("/") + "/audio/transcriptions"
    files = {"file": (filename or "voice.ogg", audio, mime or "application/octet-stream")}
    headers = {"authorization": f"Bearer {key.reveal()}"}
    if claimed_seconds is not None:
        headers["x-audio-seconds"] = f"{claimed_seconds:g}"
    form = {"model": model}
    if verbose:
        form["response_format"] = "verbose_json"
    verify = await asyncio.to_thread(tls_context)  # built once, off the bot's loop
    # As every client that carries a key: no proxy from the environment (it would see the key,
    # and route the loopback metering proxy away), no redirects.
    client = httpx.AsyncClient(
        timeout=seconds, transport=transport, verify=verify, trust_env=False, follow_redirects=False
    )
    try:
        async with client as http:
            response = await http.post(url, headers=headers, files=files, data=form)
    except httpx.HTTPError as exc:
        log.warning("transcription: %s", type(exc).__name__)
        raise TranscriptionFailed("network") from None
    if response.status_code in (401, 403):
        raise TranscriptionFailed("invalid_key")
    if response.status_code == 402:
        # The metering proxy: the managed plan's allowance has no room for this voice note.
        raise TranscriptionFailed("cap_reached")
    if response.status_code == 429:
        raise TranscriptionFailed("rate_limited")
    if response.status_code >= 400:
        # The body may echo parts of the key: only the status is logged.
        log.warning("transcription: HTTP %s", response.status_code)
        raise TranscriptionFailed("failed")
    try:
        reply = response.json()
    except ValueError:
        reply = None
    text = reply.get("text") if isinstance(reply, dict) else None
    if not isinstance(text, str):
        raise TranscriptionFailed("failed")
    if not text.strip():
        raise TranscriptionFailed("empty")
    duration = reply.get("duration") if isinstance(reply, dict) else None
    if not isinstance(duration, int | float) or isinstance(duration, bool) or duration < 0:
        duration = None
    return text.strip(), duration
