"""Photos, voice notes and documents a person sends, made into what the agent can read.

The bot downloads each file through the adapter (``FileSource``: the platform token stays in
the adapter, and no agent ever sees a platform URL), within ``[media]``'s limits. A photo
becomes the model's image input, a voice note a transcript (shown to the person), a document
its text as context. Stickers, videos and files an adapter cannot fetch keep the old answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot import texts
from bot.flows.base import Refusal, Turn, trial_cap_refusal
from core.agent_data import managed_model
from core.chat import AttachmentKind, FileRef
from core.credentials import KeyStatus
from core.errors import AgentUnavailable
from core.llm import ImageInput
from core.media import (
    MediaRefused,
    TranscriptionFailed,
    document_prompt,
    document_text,
    image_input,
    transcribe,
    transcribe_timed,
)
from core.ports import FileSource, FileTooLarge, FileUnavailable
from core.secret import Secret
from core.tenants import TenantView

READABLE = frozenset(
    {AttachmentKind.PHOTO, AttachmentKind.VOICE, AttachmentKind.AUDIO, AttachmentKind.DOCUMENT}
)
MAX_IMAGES = 4  # per message: each is ~1-2k tokens, and a paid upstream call


@dataclass(frozen=True, slots=True)
class Prepared:
    """The message for the agent: its text (caption, transcript, document) and images."""

    text: str
    images: tuple[ImageInput, ...]


def readable_files(turn: Turn) -> tuple[FileRef, ...]:
    """The files of this message the bot can fetch and read (none if the adapter cannot)."""
    if not isinstance(turn.messenger, FileSource):
        return ()
    return tuple(f for f in turn.event.files if f.kind in READABLE)


async def prepare(turn: Turn, tenant: TenantView, *, managed: bool) -> Prepared:
    """Download and read the message's files; raises ``Refusal`` with what to do instead."""
    event = turn.event
    files = readable_files(turn)
    dropped = [k for k in event.attachments if k not in {f.kind for f in files}]
    if dropped:
        # A sticker or video beside the text: the person must not think the agent saw it.
        await turn.say(texts.MEDIA_DROPPED.format(what=texts.media_names(dropped)))
    if not files:
        return Prepared(event.text, ())
    source = turn.messenger
    assert isinstance(source, FileSource)  # noqa: S101 - readable_files checked it
    if not managed and not any(
        k.status is KeyStatus.ACTIVE for k in await turn.services.credentials.list(tenant.id)
    ):
        # No agent to read it: say so before downloading anything.
        raise Refusal(texts.AGENT_UNAVAILABLE["no_key"])
    limits = turn.services.config.media
    text = event.text
    images: list[ImageInput] = []
    photos = [f for f in files if f.kind is AttachmentKind.PHOTO]
    if photos:
        _check_images(turn, tenant, managed=managed)
        if len(photos) > MAX_IMAGES:
            raise Refusal(texts.MEDIA_TOO_MANY_IMAGES.format(limit=MAX_IMAGES))
        for photo in photos:
            data = await _download(source, photo, limits.max_image_bytes)
            try:
                images.append(image_input(data))
            except MediaRefused as exc:
                raise Refusal(_refused(exc)) from None
    for audio in (f for f in files if f.kind in (AttachmentKind.VOICE, AttachmentKind.AUDIO)):
        heard = await _transcribe(turn, tenant, source, audio, managed=managed)
        await turn.say(texts.MEDIA_TRANSCRIPT.format(text=heard))
        text = f"{text}\n\n{heard}".strip() if text.strip() else heard
    for doc in (f for f in files if f.kind is AttachmentKind.DOCUMENT):
        data = await _download(source, doc, limits.max_document_bytes)
        try:
            body = await document_text(doc.name, doc.mime, data, limits)
        except MediaRefused as exc:
            raise Refusal(_refused(exc)) from None
        text = document_prompt(doc.name, body, text)
    return Prepared(text, tuple(images))


def _check_images(turn: Turn, tenant: TenantView, *, managed: bool) -> None:
    """A managed model the curated catalog marks ``images = false`` gets no image."""
    if not managed:
        return  # a BYOK model the provider does not let read images says so itself
    plan = turn.services.plans.get(tenant.plan)
    model = managed_model(plan, tenant)
    route = turn.services.config.proxy.models.get(model)
    if route is not None and not route.images:
        raise Refusal(texts.MEDIA_NO_IMAGES.format(model=model))


async def _download(source: FileSource, file: FileRef, limit: int) -> bytes:
    try:
        return await source.download(file, limit)
    except FileTooLarge as exc:
        what = texts.MEDIA_NAMES[file.kind]
        raise Refusal(
            texts.MEDIA_TOO_LARGE.format(what=what, size=_mib(exc.size), limit=_mib(limit))
        ) from None
    except FileUnavailable:
        raise Refusal(texts.MEDIA_UNAVAILABLE) from None


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / (1024 * 1024):.1f} MB"


def _refused(exc: MediaRefused) -> str:
    return texts.MEDIA_REFUSED[exc.reason].format(**exc.details)


async def _transcriber(turn: Turn, tenant: TenantView) -> tuple[str, Secret] | None:
    """The tenant's OpenAI-compatible key and its base URL (the provider named openai first)."""
    s = turn.services
    candidates = []
    for key in await s.credentials.list(tenant.id):
        provider = s.config.providers.get(key.provider)
        if key.status is KeyStatus.ACTIVE and provider and provider.kind == "openai-compatible":
            candidates.append(provider)
    candidates.sort(key=lambda p: p.id != "openai")
    for provider in candidates:
        revealed = await s.credentials.reveal(tenant.id, provider.id)
        if revealed is not None:
            return provider.base_url, revealed[1]
    return None


async def _transcribe(
    turn: Turn, tenant: TenantView, source: FileSource, audio: FileRef, *, managed: bool
) -> str:
    if managed:
        return await _transcribe_managed(turn, tenant, source, audio)
    found = await _transcriber(turn, tenant)
    if found is None:
        raise Refusal(texts.MEDIA_VOICE_NEEDS_KEY)
    limits = turn.services.config.media
    data = await _download(source, audio, limits.max_audio_bytes)
    base_url, key = found
    await turn.messenger.typing(turn.chat)
    try:
        return await transcribe(
            base_url,
            key,
            data,
            filename=audio.name or "voice.ogg",
            mime=audio.mime,
            model=limits.transcription_model,
            seconds=limits.transcription_timeout,
        )
    except TranscriptionFailed as exc:
        raise Refusal(texts.MEDIA_TRANSCRIPTION_FAILED[exc.reason]) from None


async def _transcribe_managed(
    turn: Turn, tenant: TenantView, source: FileSource, audio: FileRef
) -> str:
    """Through the metering proxy, with the tenant's scoped token: metered and capped there.

    The proxy reserves the voice note's cost before the upstream hears it; over the cap it
    answers 402 and nothing reaches the upstream. Its other failures are the platform's.
    """
    s = turn.services
    if s.proxy_access is None:
        raise Refusal(texts.MEDIA_VOICE_MANAGED)
    try:
        base_url, token = await s.proxy_access.transcription(tenant.id)
    except AgentUnavailable:
        raise Refusal(texts.MEDIA_VOICE_MANAGED) from None
    limits = s.config.media
    data = await _download(source, audio, limits.max_audio_bytes)
    await turn.messenger.typing(turn.chat)
    try:
        text, duration = await transcribe_timed(
            base_url,
            token,
            data,
            filename=audio.name or "voice.ogg",
            mime=audio.mime,
            model=limits.transcription_model,
            seconds=limits.transcription_timeout,
            claimed_seconds=audio.seconds,
        )
    except TranscriptionFailed as exc:
        if exc.reason == "invalid_key":
            # A revoked or stale token: the next message gets a fresh one.
            s.proxy_access.forget(tenant.id)
        if exc.reason == "cap_reached":
            cap = await s.billing.trial_cap(tenant) if s.billing is not None else None
            if cap is not None:
                raise await trial_cap_refusal(
                    s.budget, tenant, cap, longest_reply=s.config.agent.max_reply_tokens
                ) from None
            raise Refusal(texts.AGENT_UNAVAILABLE["cap_reached"]) from None
        raise Refusal(texts.MEDIA_TRANSCRIPTION_FAILED_MANAGED[exc.reason]) from None
    route = s.config.proxy.transcription
    if route is not None and duration is not None:
        # For /usage's voice line; the proxy's budget is what meters and caps it.
        await s.usage.record_voice(tenant.id, route.model, route.cost_of(duration)[0])
    return text
