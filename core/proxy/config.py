"""The ``[proxy]`` table: where the metering proxy listens, its upstreams, models and prices.

Upstream base URLs come from this table only (never from a request), and the platform's
provider keys come from the environment variables it names, read once in the proxy process.
Errors use the same wording as ``core.config``: ``config.toml: [proxy] port must be …``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from core.config import PROVIDER_KINDS, PlanSettings, TableReader
from core.errors import ConfigError
from core.secret import Secret


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """``[proxy.upstreams.<id>]``: a provider endpoint and the env variable holding its key."""

    id: str
    kind: str
    base_url: str
    key_env: str


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """``[proxy.models."<model>"]``: which upstream serves a curated model, and its price."""

    model: str
    upstream: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    upstream_model: str = ""
    tools: bool = True  # whether the model takes tool calls (the agent offers none otherwise)
    images: bool = True  # whether it takes image input (a photo is refused with a clear answer)
    # Anthropic prompt caching: writes and reads of the cache, per million tokens. Unset, they
    # are priced as input (writes cost more at the provider: set them from its price list).
    cache_write_usd_per_mtok: float | None = None
    cache_read_usd_per_mtok: float | None = None

    @property
    def wire_model(self) -> str:
        """The model id sent upstream (defaults to the curated name)."""
        return self.upstream_model or self.model

    @property
    def cache_write_price(self) -> float:
        w = self.cache_write_usd_per_mtok
        return self.input_usd_per_mtok if w is None else w

    @property
    def cache_read_price(self) -> float:
        r = self.cache_read_usd_per_mtok
        return self.input_usd_per_mtok if r is None else r

    @property
    def max_input_usd_per_mtok(self) -> float:
        """What a reservation prices each prompt token at: the dearest kind of input."""
        return max(self.input_usd_per_mtok, self.cache_write_price, self.cache_read_price)


@dataclass(frozen=True, slots=True)
class TranscriptionRoute:
    """``[proxy.transcription]``: where managed voice notes are transcribed, and their price.

    Billed by the audio's duration, rounded up to the whole second (as OpenAI bills
    ``whisper-1``): ``usd_per_minute`` in dollars, and ``tokens_per_minute`` against a plan's
    token cap (a minute of audio is about 600 tokens to OpenAI's audio models: 10 per second),
    so a plan capped in tokens only still bounds its voice notes. A reservation covers
    ``max(the client's x-audio-seconds, bytes / min_bytes_per_second)``; the settlement is the
    upstream's ``duration``, never more than was reserved.
    """

    upstream: str
    model: str = "whisper-1"
    usd_per_minute: float = 0.006
    tokens_per_minute: int = 600
    # Opus voice notes run at 16-32 kbit/s (2-4 kB/s); 500 B/s bounds anything above 4 kbit/s.
    min_bytes_per_second: int = 500

    def cost_of(self, seconds: float) -> tuple[int, int, int]:
        """``(seconds billed, tokens, micro-dollars)`` of ``seconds`` of audio, rounded up."""
        billed = max(0, math.ceil(round(seconds, 6)))
        tokens = math.ceil(billed * self.tokens_per_minute / 60)
        micros = math.ceil(round(billed * self.usd_per_minute * 1_000_000 / 60, 6))
        return billed, tokens, micros


def _default_upstreams() -> dict[str, UpstreamSettings]:
    return {
        "anthropic": UpstreamSettings(
            "anthropic", "anthropic", "https://api.anthropic.com", "BYOKBOT_PROXY_ANTHROPIC_KEY"
        ),
        "openai": UpstreamSettings(
            "openai", "openai-compatible", "https://api.openai.com/v1", "BYOKBOT_PROXY_OPENAI_KEY"
        ),
    }


def _default_models() -> dict[str, ModelRoute]:
    return {
        "claude-sonnet-4-5": ModelRoute("claude-sonnet-4-5", "anthropic", 3.0, 15.0),
        "gpt-4.1-mini": ModelRoute("gpt-4.1-mini", "openai", 0.4, 1.6),
    }


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The whole ``[proxy]`` table, with the documented defaults (``docs/config-proxy.toml``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8788
    public_url: str = ""
    default_max_tokens: int = 4096
    estimate_bytes_per_token: int = 2
    reservation_ttl_seconds: int = 900
    lease_requests: int = 32
    sweep_interval_seconds: int = 60
    tokens_kept: int = 3
    token_cache_seconds: int = 5
    upstream_timeout_seconds: int = 120
    max_body_bytes: int = 4_000_000
    max_connections: int = 1000
    upstreams: Mapping[str, UpstreamSettings] = field(
        default_factory=lambda: MappingProxyType(_default_upstreams())
    )
    models: Mapping[str, ModelRoute] = field(
        default_factory=lambda: MappingProxyType(_default_models())
    )

    # Voice notes of managed tenants (``POST /v1/audio/transcriptions``); None: not offered.
    transcription: TranscriptionRoute | None = field(
        default_factory=lambda: TranscriptionRoute("openai")
    )
    # The largest audio file the transcription route takes ([media] max_audio_bytes).
    max_audio_bytes: int = 20 * 1024 * 1024

    @property
    def url(self) -> str:
        """Where agents reach the proxy: ``public_url``, else ``http://host:port``."""
        return self.public_url or f"http://{self.host}:{self.port}"


def parse_proxy(
    data: Mapping[str, Any] | None,
    *,
    source: str,
    plans: Mapping[str, PlanSettings] | None = None,
) -> ProxySettings:
    """Validate the ``[proxy]`` table; with ``plans``, every managed plan's model must be routed."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [proxy] must be a table")
    t = TableReader(source, "proxy", data)
    d = ProxySettings()
    port = t.get("port", int, d.port)
    if not 0 < port < 65536:
        raise t.fail("port", "must be between 1 and 65535")
    public_url = t.get("public_url", str, d.public_url)
    if public_url:
        public_url = t.url("public_url", d.public_url, hint="; name an environment variable")
    upstreams = (
        _parse_upstreams(source, t.get("upstreams", dict, {}))
        if "upstreams" in data
        else _default_upstreams()
    )
    models = (
        _parse_models(source, t.get("models", dict, {}), upstreams)
        if "models" in data
        else _default_models()
    )
    transcription = _parse_transcription(source, data.get("transcription"), upstreams, models)
    t.used.add("transcription")
    out = ProxySettings(
        transcription=transcription,
        enabled=t.get("enabled", bool, d.enabled),
        host=t.get("host", str, d.host),
        port=port,
        public_url=public_url,
        default_max_tokens=t.positive_int("default_max_tokens", d.default_max_tokens),
        estimate_bytes_per_token=t.positive_int(
            "estimate_bytes_per_token", d.estimate_bytes_per_token
        ),
        reservation_ttl_seconds=t.positive_int(
            "reservation_ttl_seconds", d.reservation_ttl_seconds
        ),
        lease_requests=t.get("lease_requests", int, d.lease_requests),
        sweep_interval_seconds=t.positive_int("sweep_interval_seconds", d.sweep_interval_seconds),
        tokens_kept=t.positive_int("tokens_kept", d.tokens_kept),
        token_cache_seconds=t.get("token_cache_seconds", int, d.token_cache_seconds),
        upstream_timeout_seconds=t.positive_int(
            "upstream_timeout_seconds", d.upstream_timeout_seconds
        ),
        max_body_bytes=t.positive_int("max_body_bytes", d.max_body_bytes),
        max_connections=t.positive_int("max_connections", d.max_connections),
        upstreams=MappingProxyType(upstreams),
        models=MappingProxyType(models),
    )
    t.finish()
    if out.lease_requests < 0:
        raise t.fail("lease_requests", "must not be negative (0 reserves every request alone)")
    if out.token_cache_seconds < 0:
        raise t.fail("token_cache_seconds", "must not be negative (0 turns the cache off)")
    if out.reservation_ttl_seconds <= out.upstream_timeout_seconds:
        # A reservation must outlive the longest request, or the sweeper frees a live one.
        raise t.fail("reservation_ttl_seconds", "must be longer than upstream_timeout_seconds")
    for model, route in models.items():
        if route.upstream not in upstreams:
            raise ConfigError(
                f'{source}: [proxy.models."{model}"] upstream must name a [proxy.upstreams] '
                f"entry (got {route.upstream!r})"
            )
    for plan in (plans or {}).values():
        if plan.byok:
            continue
        for model in plan.models:
            if model not in models:
                raise ConfigError(
                    f"{source}: [plans.{plan.id}] models lists {model!r}, which has no "
                    f'[proxy.models."{model}"] entry (upstream and prices)'
                )
    return out


def _parse_transcription(
    source: str,
    data: Any,
    upstreams: Mapping[str, UpstreamSettings],
    models: Mapping[str, ModelRoute],
) -> TranscriptionRoute | None:
    """The table, or by default the ``openai`` upstream when a curated model already uses it."""
    if data is None:
        up = upstreams.get("openai")
        used = any(r.upstream == "openai" for r in models.values())
        if up is None or up.kind != "openai-compatible" or not used:
            return None
        return TranscriptionRoute("openai")
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [proxy.transcription] must be a table")
    t = TableReader(source, "proxy.transcription", data)
    d = TranscriptionRoute("openai")
    enabled = t.boolean("enabled", True)
    route = TranscriptionRoute(
        upstream=t.string("upstream", d.upstream, non_empty=True),
        model=t.string("model", d.model, non_empty=True),
        usd_per_minute=t.number("usd_per_minute", d.usd_per_minute, minimum=0),
        tokens_per_minute=t.integer("tokens_per_minute", d.tokens_per_minute, minimum=0),
        min_bytes_per_second=t.positive_int("min_bytes_per_second", d.min_bytes_per_second),
    )
    t.finish()
    if not enabled:
        return None
    up = upstreams.get(route.upstream)
    if up is None:
        raise t.fail("upstream", f"must name a [proxy.upstreams] entry (got {route.upstream!r})")
    if up.kind != "openai-compatible":
        raise t.fail(
            "upstream", "must be an openai-compatible upstream (it serves /audio/transcriptions)"
        )
    if route.usd_per_minute == 0 and route.tokens_per_minute == 0:
        raise t.fail(
            "usd_per_minute", "and tokens_per_minute must not both be 0 (voice would be unmetered)"
        )
    return route


def _parse_upstreams(source: str, data: Mapping[str, Any]) -> dict[str, UpstreamSettings]:
    out: dict[str, UpstreamSettings] = {}
    for uid, raw in data.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: [proxy.upstreams.{uid}] must be a table")
        t = TableReader(source, f"proxy.upstreams.{uid}", raw)
        if "base_url" not in raw:
            raise t.fail("base_url", "is required")
        if "key_env" not in raw:
            raise t.fail("key_env", "is required (the environment variable holding the key)")
        key_env = t.get("key_env", str, "")
        if not key_env or not key_env.replace("_", "").isalnum():
            raise t.fail("key_env", "must be an environment variable name")
        base_url = t.url("base_url", "", hint="; name an environment variable")
        try:
            parts = urlsplit(base_url)
            has_host = bool(parts.hostname)
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            has_host = False
        if not has_host:
            raise t.fail("base_url", "must name a host (and a port from 1 to 65535, if any)")
        out[uid] = UpstreamSettings(
            id=uid,
            kind=t.choice("kind", PROVIDER_KINDS, "openai-compatible"),
            base_url=base_url,
            key_env=key_env,
        )
        t.finish()
    if not out:
        raise ConfigError(f"{source}: [proxy.upstreams] must define at least one upstream")
    return out


def _parse_models(
    source: str, data: Mapping[str, Any], upstreams: Mapping[str, UpstreamSettings]
) -> dict[str, ModelRoute]:
    out: dict[str, ModelRoute] = {}
    for model, raw in data.items():
        if not isinstance(raw, dict):
            raise ConfigError(f'{source}: [proxy.models."{model}"] must be a table')
        t = TableReader(source, f'proxy.models."{model}"', raw)
        for required in ("upstream", "input_usd_per_mtok", "output_usd_per_mtok"):
            if required not in raw:
                raise t.fail(required, "is required")
        prices = []
        for key in ("input_usd_per_mtok", "output_usd_per_mtok"):
            price = t.get(key, float, 0.0)
            if price < 0:
                raise t.fail(key, "must not be negative")
            prices.append(price)
        cache: list[float | None] = []
        for key in ("cache_write_usd_per_mtok", "cache_read_usd_per_mtok"):
            if key not in raw:
                cache.append(None)
                continue
            price = t.get(key, float, 0.0)
            if price < 0:
                raise t.fail(key, "must not be negative")
            cache.append(price)
        out[model] = ModelRoute(
            model=model,
            upstream=t.get("upstream", str, ""),
            input_usd_per_mtok=prices[0],
            output_usd_per_mtok=prices[1],
            upstream_model=t.get("upstream_model", str, ""),
            tools=t.boolean("tools", True),
            images=t.boolean("images", True),
            cache_write_usd_per_mtok=cache[0],
            cache_read_usd_per_mtok=cache[1],
        )
        t.finish()
    if not out:
        raise ConfigError(f"{source}: [proxy.models] must define at least one model")
    return out


def load_upstream_keys(
    settings: ProxySettings, env: Mapping[str, str], *, source: str = "config.toml"
) -> dict[str, Secret]:
    """The platform keys of every upstream a model uses, from the environment, as ``Secret``."""
    keys: dict[str, Secret] = {}
    used = {r.upstream for r in settings.models.values()}
    if settings.transcription is not None:
        used.add(settings.transcription.upstream)
    for uid in sorted(used):
        up = settings.upstreams[uid]
        value = env.get(up.key_env, "").strip()
        if not value:
            raise ConfigError(
                f"{source}: [proxy.upstreams.{uid}] key_env names {up.key_env}, "
                "which is not set in the environment"
            )
        keys[uid] = Secret(value)
    return keys
