"""Which of a provider's model ids the agent can talk with.

``GET /v1/models`` on OpenAI (and many compatible servers) lists every model the key reaches:
embeddings, speech, transcription, images, moderation, realtime and legacy completion models
next to the chat models. The agent speaks chat completions (or Anthropic Messages) only, so
choosing one of the others would fail on the first message. The list carries no capability
field, so the families are told apart by their well-known names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

_NOT_CHAT: Final = re.compile(
    r"""
    embed                         # text-embedding-3-small, nomic-embed-text
    | \btts\b | -tts | speech     # tts-1, gpt-4o-mini-tts
    | whisper | transcribe        # whisper-1, gpt-4o-transcribe
    | dall-e | image | sora        # dall-e-3, gpt-image-1, sora-2
    | moderation                  # omni-moderation-latest, text-moderation-stable
    | realtime | audio            # gpt-4o-realtime-preview, gpt-4o-audio-preview
    | ^(babbage|davinci|curie|ada)\b | ^gpt-3\.5-turbo-instruct  # legacy completions
    | ^(text|code)-search         # legacy search embeddings
    | computer-use | codex | deep-research | -pro\b  # the Responses API only
    """,
    re.IGNORECASE | re.VERBOSE,
)


def is_chat_model(model_id: str) -> bool:
    """Whether ``model_id`` names a model that answers chat requests."""
    return bool(model_id) and _NOT_CHAT.search(model_id) is None


def chat_models(model_ids: Iterable[str]) -> list[str]:
    """The chat models among ``model_ids``, in their order, each once."""
    return [m for m in dict.fromkeys(model_ids) if is_chat_model(m)]
