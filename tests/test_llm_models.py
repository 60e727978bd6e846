"""Which model ids from ``/v1/models`` the agent can chat with."""

from __future__ import annotations

from core.llm.models import chat_models, is_chat_model

# OpenAI's list for a project key (Dec 2025, trimmed), as the API sorts it.
OPENAI = [
    "babbage-002",
    "chatgpt-4o-latest",
    "codex-mini-latest",
    "computer-use-preview",
    "dall-e-2",
    "dall-e-3",
    "davinci-002",
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-instruct",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4o",
    "gpt-4o-audio-preview",
    "gpt-4o-mini",
    "gpt-4o-mini-transcribe",
    "gpt-4o-mini-tts",
    "gpt-4o-realtime-preview",
    "gpt-4o-transcribe",
    "gpt-5",
    "gpt-5-pro",
    "gpt-image-1",
    "o1",
    "o1-pro",
    "o3",
    "o3-deep-research",
    "o3-mini",
    "o4-mini",
    "omni-moderation-latest",
    "sora-2",
    "text-embedding-3-large",
    "text-embedding-3-small",
    "text-embedding-ada-002",
    "tts-1",
    "tts-1-hd",
    "whisper-1",
]


def test_openai_list_keeps_only_chat_models_in_order() -> None:
    assert chat_models(OPENAI) == [
        "chatgpt-4o-latest",
        "gpt-3.5-turbo",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-5",
        "o1",
        "o3",
        "o3-mini",
        "o4-mini",
    ]


def test_compatible_servers_and_anthropic_models_stay() -> None:
    kept = [
        "claude-sonnet-4-5",
        "meta-llama/Llama-3-8B-Instruct",
        "mistral-7b-instruct",
        "ft:gpt-4o-mini:acme::abc123",
        "adamant-7b",
    ]
    assert chat_models([*kept, "nomic-embed-text", *kept]) == kept
    assert not is_chat_model("")
