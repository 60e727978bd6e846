"""The proxy's voice-note route: reserved from the file's size, settled from its duration.

``POST /v1/audio/transcriptions`` against the fake provider, on SQLite and PostgreSQL: what
a voice note costs (seconds rounded up, ``usd_per_minute`` and ``tokens_per_minute``), that the
reservation bounds what is charged, that the cap holds under concurrency, and that upstream
failures give the reservation back.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from core.errors import ConfigError
from core.proxy import parse_proxy
from core.proxy.config import TranscriptionRoute
from tests.test_proxy_server import World, spend_directly, start_world

VOICE = b"OggS" + bytes(1996)  # 2,000 bytes: at most 4 s at 500 B/s


async def post_voice(
    w: World, token: str, data: bytes = VOICE, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await w.http.post(
        f"{w.url}/v1/audio/transcriptions",
        files={"file": ("voice.ogg", data, "audio/ogg")},
        data={"model": "whisper-1"},
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    )


def test_a_voice_note_costs_its_seconds_rounded_up() -> None:
    route = TranscriptionRoute("openai")
    assert route.cost_of(2.4) == (3, 30, 300)  # $0.006/min = 100 micro-dollars a second
    assert route.cost_of(60.0) == (60, 600, 6000)
    assert route.cost_of(0.0) == (0, 0, 0)
    assert TranscriptionRoute("o", usd_per_minute=0.5, tokens_per_minute=7).cost_of(1.01) == (
        2,
        1,
        16667,
    )


async def test_a_voice_note_is_settled_to_the_upstreams_duration(
    tmp_path: Path, db_url: str
) -> None:
    async with start_world(tmp_path, db_url) as w:
        token = await w.token()
        w.fake.transcript_seconds = 2.4
        r = await post_voice(w, token)
        assert (r.status_code, r.json()) == (200, {"text": w.fake.transcript})
        after = await w.settled()
        assert (after.spent.tokens, round(after.spent.usd * 1e6)) == (30, 300)
        heard = [x for x in w.fake.requests if x.kind == "transcription"]
        assert [x.key for x in heard] == [w.platform_keys["PX_OPENAI_KEY"]]
        assert heard[0].body["model"] == "whisper-1"


async def test_longer_than_reserved_is_charged_the_reservation_only(
    tmp_path: Path, db_url: str
) -> None:
    async with start_world(tmp_path, db_url) as w:
        token = await w.token()
        w.fake.transcript_seconds = 600.0  # a 2 kB file claiming ten minutes
        assert (await post_voice(w, token)).status_code == 200
        after = await w.settled()
        assert (after.spent.tokens, round(after.spent.usd * 1e6)) == (40, 400)


async def test_over_the_cap_is_402_and_the_upstream_hears_nothing(tmp_path: Path) -> None:
    async with start_world(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'v.db'}", token_cap=1_000
    ) as w:
        token = await w.token()
        await spend_directly(w, 1_000 - 39)  # 39 left: the note reserves 40
        r = await post_voice(w, token)
        assert r.status_code == 402
        assert r.json()["error"]["code"] == "usage_cap_reached"
        assert w.fake.transcriptions == []
        assert [x for x in w.fake.requests if x.kind == "transcription"] == []


async def test_the_clients_duration_can_only_raise_the_reservation(tmp_path: Path) -> None:
    async with start_world(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'h.db'}", token_cap=1_000
    ) as w:
        token = await w.token()
        await spend_directly(w, 500)
        r = await post_voice(w, token, headers={"x-audio-seconds": "120"})  # 1,200 tokens
        assert r.status_code == 402
        r = await post_voice(w, token, headers={"x-audio-seconds": "0.5"})  # the 4 s bound holds
        assert r.status_code == 200
        r = await post_voice(w, token, headers={"x-audio-seconds": "soon"})
        assert (r.status_code, r.json()["error"]["message"]) == (
            400,
            "x-audio-seconds: must be a number of seconds",
        )
        assert len(w.fake.transcriptions) == 1


async def test_concurrent_voice_notes_never_pass_the_cap(tmp_path: Path, db_url: str) -> None:
    async with start_world(tmp_path, db_url, token_cap=10_000) as w:
        token = await w.token()
        await spend_directly(w, 10_000 - 200)  # room for 5 notes of 40 tokens reserved
        w.fake.gate = asyncio.Event()
        tasks = [asyncio.create_task(post_voice(w, token)) for _ in range(40)]
        for _ in range(1000):
            if sum(t.done() for t in tasks) == 35:
                break
            await asyncio.sleep(0.01)
        held = await w.summary()
        assert held.tokens_reserved == 200
        w.fake.gate.set()
        codes = [r.status_code for r in await asyncio.gather(*tasks)]
        assert (codes.count(200), codes.count(402)) == (5, 35)
        after = await w.settled()
        assert after.spent.tokens == 10_000 - 200 + 5 * 30  # each settled to its 2.4 s
        assert len(w.fake.transcriptions) == 5


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, 500), (401, 502), (429, 429)],
)
async def test_upstream_failures_release_the_reservation(
    tmp_path: Path, status: int, expected: int
) -> None:
    async with start_world(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'f.db'}") as w:
        token = await w.token()
        w.fake.fail(status)
        r = await post_voice(w, token)
        assert r.status_code == expected, r.text
        after = await w.settled()
        assert (after.spent.tokens, after.spent.usd) == (0, 0)
        if status == 401:
            assert r.json()["error"]["message"] == "upstream provider refused the platform's key"
        assert w.platform_keys["PX_OPENAI_KEY"] not in r.text


UPSTREAMS = {
    "openai": {"kind": "openai-compatible", "base_url": "https://o.example", "key_env": "K_O"},
    "claude": {"kind": "anthropic", "base_url": "https://a.example", "key_env": "K_A"},
}
MODELS = {
    "gpt": {"upstream": "openai", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0},
    "sonnet": {"upstream": "claude", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0},
}


def test_transcription_defaults_to_the_openai_upstream_when_a_model_uses_it() -> None:
    on = parse_proxy({"upstreams": UPSTREAMS, "models": MODELS}, source="c.toml")
    assert on.transcription == TranscriptionRoute("openai")
    only_claude = {"sonnet": MODELS["sonnet"]}
    off = parse_proxy({"upstreams": UPSTREAMS, "models": only_claude}, source="c.toml")
    assert off.transcription is None
    table = {"upstreams": UPSTREAMS, "models": MODELS, "transcription": {"enabled": False}}
    assert parse_proxy(table, source="c.toml").transcription is None
    table["transcription"] = {"model": "gpt-4o-transcribe", "usd_per_minute": 0.006}
    assert parse_proxy(table, source="c.toml").transcription == TranscriptionRoute(
        "openai", model="gpt-4o-transcribe"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"upstream": "nowhere"},
            "c.toml: [proxy.transcription] upstream must name a [proxy.upstreams] entry "
            "(got 'nowhere')",
        ),
        (
            {"upstream": "claude"},
            "c.toml: [proxy.transcription] upstream must be an openai-compatible upstream "
            "(it serves /audio/transcriptions)",
        ),
        (
            {"usd_per_minute": 0, "tokens_per_minute": 0},
            "c.toml: [proxy.transcription] usd_per_minute and tokens_per_minute must not both "
            "be 0 (voice would be unmetered)",
        ),
        ({"usd_per_minute": -1}, "c.toml: [proxy.transcription] usd_per_minute must be at least 0"),
        ({"price": 1}, "c.toml: [proxy.transcription] price is not a known setting"),
    ],
)
def test_bad_transcription_tables_are_one_clear_line(
    table: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_proxy(
            {"upstreams": UPSTREAMS, "models": MODELS, "transcription": table}, source="c.toml"
        )
    assert str(err.value).startswith(message), str(err.value)
