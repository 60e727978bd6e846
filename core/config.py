"""Typed, frozen configuration loaded from TOML and validated at start.

Secrets never live in the file: it names the environment variables that hold them
(``token_env = "TELEGRAM_BOT_TOKEN"``). ``BYOKBOT_CONFIG`` selects the file; without one the
defaults below apply, which run the bot on SQLite with a locally generated master key.
Every error names the file, the table and the setting; ``TableReader`` words them, here and
in each adapter's ``config.py``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeVar, Unpack

from core.errors import ConfigError

if TYPE_CHECKING:
    from core.billing_config import AccessSettings, BillingSettings
    from core.proxy.config import ProxySettings

T = TypeVar("T")
N = TypeVar("N", int, float)

PROVIDER_KINDS: Final = ("anthropic", "openai-compatible")
KEY_SHAPES: Final = ("anthropic", "openai", "moonshot", "generic")
PLATFORM_SECTIONS: Final = ("telegram", "discord", "slack")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# The adapters' default secret variables (tests/test_hardening.py keeps this list in step with
# their ``*_env`` defaults): removed from the environment even when a table does not name them.
PLATFORM_SECRET_ENV_DEFAULTS: Final = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "DISCORD_BOT_TOKEN",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
)


@dataclass(frozen=True, slots=True)
class CoreSettings:
    """``[core]``: storage, master key, operators and chat limits."""

    database_url: str = "sqlite+aiosqlite:///data/byokbot.db"
    master_key_file: str = "data/master.key"
    master_key_env: str = "BYOKBOT_MASTER_KEY"
    admins: tuple[str, ...] = ()
    intake_ttl_seconds: int = 600
    intake_sweep_interval_seconds: int = 30
    intake_max_attempts: int = 3
    verify_keys_live: bool = True
    live_checks_per_hour: int = 10
    live_checks_per_hour_total: int = 300
    messages_per_minute: int = 30
    max_message_chars: int = 8000
    log_level: str = "INFO"


@dataclass(frozen=True, slots=True)
class ToolSwitches:
    """``[plans.<id>.tools]``: which of the agent's built-in tools a plan offers."""

    web_fetch: bool = True
    web_search: bool = True
    notes: bool = True
    tasks: bool = True
    mcp: bool = True  # the tenant's own MCP servers (offered as ``mcp:<name>``)

    def names(self) -> tuple[str, ...]:
        """The protocol's tool names these switches turn on (``TOOL_NAMES``)."""
        return tuple(n for s, names in TOOL_NAMES.items() if getattr(self, s) for n in names)


TOOL_NAMES: Final[Mapping[str, tuple[str, ...]]] = {
    "web_fetch": ("web_fetch",),
    "web_search": ("web_search",),
    "notes": ("remember", "recall", "forget"),
    "tasks": ("schedule_task",),
    "mcp": (),  # per server: ``core.agent_data.offered_tools``
}
"""Each switch of ``ToolSwitches`` and the agent tools it enables."""


@dataclass(frozen=True, slots=True)
class WebFetchSettings:
    """``[tools.web_fetch]``: the bounds of one fetch.

    ``allow_networks`` lists CIDRs that may be fetched although they are not public; keep it
    empty in production (it exists so tests can serve a site on loopback).
    """

    max_bytes: int = 2_000_000
    timeout_seconds: float = 15.0
    max_redirects: int = 5
    max_chars: int = 20_000
    allow_networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebSearchSettings:
    """``[tools.web_search]``: the search backend; without ``backend`` no search is offered."""

    backend: str = ""  # "" | "searxng" | "brave"
    url: str = ""
    key_env: str = ""
    max_results: int = 5


@dataclass(frozen=True, slots=True)
class NotesSettings:
    """``[tools.notes]``: bounds of the long-term notes per person."""

    max_notes: int = 100
    max_note_chars: int = 500


@dataclass(frozen=True, slots=True)
class TasksSettings:
    """``[tools.tasks]``: how often due scheduled tasks are looked for."""

    interval_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class ToolsSettings:
    """``[tools]``: the agent's built-in tools (per-plan switches are in ``[plans.<id>.tools]``)."""

    web_fetch: WebFetchSettings = field(default_factory=WebFetchSettings)
    web_search: WebSearchSettings = field(default_factory=WebSearchSettings)
    notes: NotesSettings = field(default_factory=NotesSettings)
    tasks: TasksSettings = field(default_factory=TasksSettings)


@dataclass(frozen=True, slots=True)
class McpSettings:
    """``[mcp]``: tenants' remote MCP servers (``/mcp``).

    An MCP server's address is checked like web_fetch's (public addresses only, plus
    ``[tools.web_fetch] allow_networks``). ``confirm_timeout_seconds``: how long the Allow /
    Deny question for a tool that is not read-only waits; no answer is a Deny.
    """

    max_servers: int = 5
    confirm_timeout_seconds: float = 120.0


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """``[plans.<id>]``: one plan of the catalog."""

    id: str
    name: str
    price_usd: float
    byok: bool
    models: tuple[str, ...] = ()
    requests_per_minute: int = 30
    monthly_token_cap: int | None = None
    monthly_usd_cap: float | None = None
    description: str = ""
    tools: ToolSwitches = field(default_factory=ToolSwitches)
    max_tasks: int = 10  # scheduled tasks a tenant of this plan may keep


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """``[providers.<id>]``: an LLM provider the operator allows."""

    id: str
    name: str
    kind: str
    base_url: str
    key_shape: str
    default_model: str
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """``[agent]``: the per-tenant agent processes."""

    idle_timeout_seconds: int = 900
    idle_check_interval_seconds: int = 60
    max_live_agents: int = 500
    memory_limit_mb: int = 512
    max_open_files: int = 256
    request_timeout_seconds: int = 120
    context_tokens: int = 32000
    max_reply_tokens: int = 1024
    command: tuple[str, ...] = ()
    max_tool_steps: int = 8
    # The agent sandbox (core/runtime/sandbox.py; README "Agent sandbox").
    sandbox: str = "strict"
    uid_range: tuple[int, int] | None = (3_000_000, 3_065_535)
    extra_connect_ports: tuple[int, ...] = ()
    read_paths: tuple[str, ...] = ()
    cpu_seconds: int = 3600
    max_processes: int = 64
    max_reply_chars: int = 32000
    """A reply longer than this is cut (with a note) and its agent recycled: a flood guard."""
    recycle_after_idle_seconds: int = 5
    """An agent idle this long since a reply is replaced by a fresh fork of the template,
    which gives back the memory the reply touched (0: never). Timed from the reply; 5 s is the
    HTTP client's keep-alive expiry, so no pooled provider connection is lost. See README
    "Agents"."""


@dataclass(frozen=True, slots=True)
class ConversationSettings:
    """``[conversations]``: long conversations and the ones kept after ``/new``.

    The context budget is ``[agent] context_tokens`` (estimated, ~4 characters a token) less
    the reply and the persona; when a message would overflow it, the older turns are
    summarised by the tenant's model and replaced by the summary, keeping the newest
    ``keep_recent_tokens`` (0: half the budget) as they are.
    """

    compaction: bool = True
    keep_recent_tokens: int = 0
    summary_max_tokens: int = 512
    history_listed: int = 5
    """How many conversations ``/history`` lists."""


@dataclass(frozen=True, slots=True)
class InboxSettings:
    """``[inbox]``: the durable inbox of platform deliveries.

    A turn whose process died is taken over once its lease (renewed every third of it by the
    live owner) runs out; it is run again ``resume_attempts`` times at most, after that the
    person is told to resend. Done deliveries are remembered ``retention_hours`` to recognise
    a redelivery.
    """

    lease_seconds: float = 30.0
    resume_attempts: int = 1
    retention_hours: int = 48


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """``[health]``: the ``/healthz``, ``/readyz`` and ``/metrics`` listener of ``byokbot run``.

    Off unless ``listen`` is set ("127.0.0.1:9464"): an open port is the operator's choice.
    """

    listen: str = ""
    host: str = ""
    port: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.listen)


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``[logging]``: ``format = "text"`` (default) or ``"json"`` (one object per line)."""

    format: str = "text"


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """``[telegram]``, ``[discord]``, ``[slack]``: common switches plus the adapter's own table.

    Each adapter's ``config.py`` reads ``options`` with a ``TableReader``.
    """

    name: str
    enabled: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def _default_plans() -> dict[str, PlanSettings]:
    return {
        "byok": PlanSettings(
            id="byok",
            name="BYOK",
            price_usd=15.0,
            byok=True,
            requests_per_minute=30,
            description="Your own Anthropic, OpenAI or Moonshot key; you pay the provider.",
        ),
        "managed": PlanSettings(
            id="managed",
            name="Managed",
            price_usd=39.0,
            byok=False,
            models=("claude-sonnet-4-5", "gpt-4.1-mini"),
            requests_per_minute=20,
            monthly_token_cap=5_000_000,
            monthly_usd_cap=30.0,
            description="Curated models through our metered proxy; no key needed.",
        ),
    }


def _default_providers() -> dict[str, ProviderSettings]:
    return {
        "anthropic": ProviderSettings(
            id="anthropic",
            name="Anthropic",
            kind="anthropic",
            base_url="https://api.anthropic.com",
            key_shape="anthropic",
            default_model="claude-sonnet-4-5",
        ),
        "openai": ProviderSettings(
            id="openai",
            name="OpenAI",
            kind="openai-compatible",
            base_url="https://api.openai.com/v1",
            key_shape="openai",
            default_model="gpt-4.1-mini",
        ),
        "moonshot": ProviderSettings(
            id="moonshot",
            name="Moonshot",
            kind="openai-compatible",
            base_url="https://api.moonshot.ai/v1",
            key_shape="moonshot",
            default_model="kimi-k2-0905-preview",
        ),
    }


@dataclass(frozen=True, slots=True)
class MediaSettings:
    """``[media]``: what the bot accepts of photos, voice notes and documents people send.

    Files are downloaded by the bot (with the platform token, which agents never see) up to
    these sizes; an image goes to the model, a voice note is transcribed with the tenant's
    OpenAI-compatible key (``transcription_model``), a document's text is given as context.
    """

    max_image_bytes: int = 5 * 1024 * 1024  # Anthropic's limit per image
    max_audio_bytes: int = 20 * 1024 * 1024
    max_document_bytes: int = 10 * 1024 * 1024
    max_document_pages: int = 50
    max_document_chars: int = 60_000
    transcription_model: str = "whisper-1"
    transcription_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration. ``source`` is the file it came from (for error messages)."""

    core: CoreSettings = field(default_factory=CoreSettings)
    plans: Mapping[str, PlanSettings] = field(default_factory=_default_plans)
    providers: Mapping[str, ProviderSettings] = field(default_factory=_default_providers)
    agent: AgentSettings = field(default_factory=AgentSettings)
    platforms: Mapping[str, PlatformSettings] = field(
        default_factory=lambda: {n: PlatformSettings(name=n) for n in PLATFORM_SECTIONS}
    )
    proxy: ProxySettings = field(default_factory=lambda: _default_proxy())
    tools: ToolsSettings = field(default_factory=ToolsSettings)
    inbox: InboxSettings = field(default_factory=InboxSettings)
    conversations: ConversationSettings = field(default_factory=ConversationSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    billing: BillingSettings = field(default_factory=lambda: _default_billing())
    access: AccessSettings = field(default_factory=lambda: _default_access())
    media: MediaSettings = field(default_factory=MediaSettings)
    mcp: McpSettings = field(default_factory=McpSettings)
    source: str = "(defaults)"
    base_dir: Path = field(default_factory=Path.cwd)

    def resolve_path(self, value: str) -> Path:
        """A path from the file, relative to the file's folder (or the working directory)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    @property
    def database_url(self) -> str:
        """The database URL with a relative SQLite path resolved against ``base_dir``."""
        url = self.core.database_url
        prefix = "sqlite+aiosqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            return prefix + str(self.resolve_path(url[len(prefix) :]))
        return url

    def secret_env_names(self) -> frozenset[str]:
        """Every environment variable this configuration reads a secret from.

        The master key variable, each platform table's ``*_env`` settings (and the adapters'
        defaults), and every proxy upstream's ``key_env``. ``bot.cli`` takes them out of the
        environment at start (``core.hardening.take_secrets``).
        """
        names = {self.core.master_key_env, *PLATFORM_SECRET_ENV_DEFAULTS}
        for platform in self.platforms.values():
            names |= {
                v
                for k, v in platform.options.items()
                if k.endswith("_env") and isinstance(v, str) and v
            }
        names |= {up.key_env for up in self.proxy.upstreams.values()}
        if self.tools.web_search.key_env:
            names.add(self.tools.web_search.key_env)
        return frozenset(names)

    @property
    def offered_plans(self) -> tuple[PlanSettings, ...]:
        """The plans people may choose: a managed plan only while the metering proxy is on."""
        return tuple(p for p in self.plans.values() if p.byok or self.proxy.enabled)


class Limits(TypedDict, total=False):
    """Bounds and wording for ``TableReader.integer`` and ``TableReader.number``.

    ``minimum`` and ``maximum`` are inclusive, ``above`` exclusive. Out of bounds the error
    reads ``must be between 0 and 50 (got 90)`` (or ``more than 0 and at most 2.5``, as the
    bounds given), or ``must <out_of_range> (got 90)``. ``must`` and ``show_got`` word the
    type error as for ``TableReader.get``.
    """

    minimum: float
    above: float
    maximum: float
    must: str
    show_got: bool
    out_of_range: str


class TableReader:
    """Reads one TOML table with typed, precise errors and rejects unknown settings.

    Every error reads ``<source>: [<table>] <key> must ...``. Each read marks its key as
    known; ``finish`` then rejects whatever the table holds beyond those keys. The wording
    of an error can be adjusted per read: ``must`` replaces what follows "must" in a type
    error (default "be an integer" and so on), ``show_got`` appends `` (got <value>)`` to it.

    Example:
        ``r = TableReader("config.toml", "slack", options)``, then
        ``r.integer("listen_port", 3000, minimum=0, maximum=65535)`` and ``r.finish()``.
    """

    def __init__(self, source: str, table: str, data: Mapping[str, Any]) -> None:
        self.source, self.table, self.data = source, table, data
        self.used: set[str] = set()

    def fail(self, key: str, what: str) -> ConfigError:
        """An error naming the file, the table and ``key``; ``what`` is the rest of the sentence."""
        return ConfigError(f"{self.source}: [{self.table}] {key} {what}")

    def get(
        self,
        key: str,
        kind: type[T],
        default: T,
        *,
        must: str | None = None,
        show_got: bool = False,
    ) -> T:
        """The value of ``key`` (``default`` when absent) if it is a ``kind``.

        An integer is accepted where a float is asked for; a boolean is never a number.
        """
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if (kind is not bool and isinstance(value, bool)) or not isinstance(value, kind):
            got = f" (got {value!r})" if show_got else ""
            raise self.fail(key, f"must {must or 'be ' + _kind_name(kind)}{got}")
        return value

    def string(
        self, key: str, default: str, *, non_empty: bool = False, show_got: bool = False
    ) -> str:
        """A string; with ``non_empty``, an empty one fails like a value of the wrong type."""
        must = "be a non-empty string" if non_empty else None
        value = self.get(key, str, default, must=must, show_got=show_got)
        if non_empty and not value:
            raise self.fail(key, f"must {must}")
        return value

    def boolean(self, key: str, default: bool, *, show_got: bool = False) -> bool:
        """``true`` or ``false``."""
        return self.get(key, bool, default, show_got=show_got)

    def integer(self, key: str, default: int, **limits: Unpack[Limits]) -> int:
        """An integer within ``limits``; see ``Limits`` for the bounds and the wording."""
        return self._bounded(key, int, default, limits)

    def number(self, key: str, default: float, **limits: Unpack[Limits]) -> float:
        """A number (an integer is accepted) within ``limits``, as for ``integer``."""
        return self._bounded(key, float, default, limits)

    def _bounded(self, key: str, kind: type[N], default: N, limits: Limits) -> N:
        value = self.get(
            key, kind, default, must=limits.get("must"), show_got=limits.get("show_got", False)
        )
        minimum, above, maximum = limits.get("minimum"), limits.get("above"), limits.get("maximum")
        if (
            (minimum is None or value >= minimum)
            and (above is None or value > above)
            and (maximum is None or value <= maximum)
        ):
            return value
        out_of_range = limits.get("out_of_range")
        if out_of_range is None:
            if minimum is not None and maximum is not None and above is None:
                out_of_range = f"be between {minimum!r} and {maximum!r}"
            else:
                parts = [f"more than {above!r}"] if above is not None else []
                parts += [f"at least {minimum!r}"] if minimum is not None else []
                parts += [f"at most {maximum!r}"] if maximum is not None else []
                out_of_range = "be " + " and ".join(parts)
        # The value as written in the file (7, not 7.0), not as converted.
        raise self.fail(key, f"must {out_of_range} (got {self.data.get(key, default)!r})")

    def positive_int(self, key: str, default: int) -> int:
        """An integer above zero."""
        value = self.get(key, int, default)
        if value <= 0:
            raise self.fail(key, "must be a positive integer")
        return value

    def optional_positive(self, key: str, kind: type[T]) -> T | None:
        """A positive ``int`` or ``float``, or None when the table does not set it."""
        if key not in self.data:
            self.used.add(key)
            return None
        value = self.get(key, kind, kind())
        if not isinstance(value, int | float) or value <= 0:
            noun = "integer" if kind is int else "number"
            raise self.fail(key, f"must be a positive {noun}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A list of non-empty strings."""
        value = self.get(key, list, list(default))
        if not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, "must be a list of non-empty strings")
        return tuple(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """One of ``choices``."""
        value = self.get(key, str, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)} (got {value!r})")
        return value

    def env_name(self, key: str, default: str, *, optional: bool = False) -> str:
        """The name of an environment variable (never its value); ``optional`` allows ""."""
        value = self.get(key, str, default)
        if optional and not value:
            return value
        if not _ENV_NAME.fullmatch(value):
            raise self.fail(key, f"must name an environment variable (got {value!r})")
        return value

    def url(
        self,
        key: str,
        default: str,
        *,
        schemes: tuple[str, ...] = ("http://", "https://"),
        must: str | None = None,
        show_got: bool = False,
        hint: str = "",
        optional: bool = False,
    ) -> str:
        """A URL with one of ``schemes`` and no credentials, without its trailing slash.

        A wrong scheme fails with ``must be an http:// or https:// URL`` (or ``must <must>``),
        credentials with ``must not carry credentials<hint>``; ``optional`` allows "".
        """
        value = self.get(key, str, default)
        if optional and not value:
            return value
        if not value.startswith(schemes):
            must = must or f"be an {' or '.join(schemes)} URL"
            got = f" (got {value!r})" if show_got else ""
            raise self.fail(key, f"must {must}{got}")
        if "@" in value.split("://", 1)[1].split("/", 1)[0]:
            raise self.fail(key, f"must not carry credentials{hint}")
        return value.rstrip("/")

    def finish(self) -> None:
        """Reject the first (alphabetically) setting no read asked for."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.fail(unknown[0], "is not a known setting")


def _kind_name(kind: type[Any]) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(kind, kind.__name__)


def _parse_core(src: str, data: Mapping[str, Any]) -> CoreSettings:
    t = TableReader(src, "core", data)
    d = CoreSettings()
    admins = t.strings("admins", d.admins)
    for a in admins:
        platform, _, uid = a.partition(":")
        if platform not in ("console", *PLATFORM_SECTIONS) or not uid:
            raise t.fail("admins", f'entries must look like "telegram:12345" (got {a!r})')
    level = t.choice("log_level", ("DEBUG", "INFO", "WARNING", "ERROR"), d.log_level)
    db = t.string("database_url", d.database_url)
    if not db.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise t.fail("database_url", "must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    out = CoreSettings(
        database_url=db,
        master_key_file=t.string("master_key_file", d.master_key_file),
        master_key_env=t.string("master_key_env", d.master_key_env),
        admins=admins,
        intake_ttl_seconds=t.positive_int("intake_ttl_seconds", d.intake_ttl_seconds),
        intake_sweep_interval_seconds=t.positive_int(
            "intake_sweep_interval_seconds", d.intake_sweep_interval_seconds
        ),
        intake_max_attempts=t.positive_int("intake_max_attempts", d.intake_max_attempts),
        verify_keys_live=t.boolean("verify_keys_live", d.verify_keys_live),
        live_checks_per_hour=t.positive_int("live_checks_per_hour", d.live_checks_per_hour),
        live_checks_per_hour_total=t.positive_int(
            "live_checks_per_hour_total", d.live_checks_per_hour_total
        ),
        messages_per_minute=t.positive_int("messages_per_minute", d.messages_per_minute),
        max_message_chars=t.positive_int("max_message_chars", d.max_message_chars),
        log_level=level,
    )
    t.finish()
    return out


def _parse_plans(src: str, data: Mapping[str, Any]) -> dict[str, PlanSettings]:
    plans: dict[str, PlanSettings] = {}
    defaults = _default_plans()
    for pid, raw in data.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{src}: [plans.{pid}] must be a table")
        t = TableReader(src, f"plans.{pid}", raw)
        d = defaults.get(pid) or PlanSettings(id=pid, name=pid, price_usd=0.0, byok=True)
        price = t.get("price_usd", float, d.price_usd)
        if price < 0:
            raise t.fail("price_usd", "must not be negative")
        byok = t.boolean("byok", d.byok)
        plan = PlanSettings(
            id=pid,
            name=t.string("name", d.name),
            price_usd=price,
            byok=byok,
            models=t.strings("models", d.models),
            requests_per_minute=t.positive_int("requests_per_minute", d.requests_per_minute),
            monthly_token_cap=(
                t.optional_positive("monthly_token_cap", int)
                if "monthly_token_cap" in raw
                else d.monthly_token_cap
            ),
            monthly_usd_cap=(
                t.optional_positive("monthly_usd_cap", float)
                if "monthly_usd_cap" in raw
                else d.monthly_usd_cap
            ),
            description=t.string("description", d.description),
            tools=_parse_switches(src, pid, t, d.tools),
            max_tasks=t.integer("max_tasks", d.max_tasks, minimum=0, maximum=1000),
        )
        if not byok and not plan.models:
            raise t.fail("models", "must list at least one model for a managed plan")
        t.finish()
        plans[pid] = plan
    if not plans:
        raise ConfigError(f"{src}: [plans] must define at least one plan")
    return plans


def _parse_switches(src: str, pid: str, t: TableReader, d: ToolSwitches) -> ToolSwitches:
    raw = t.get("tools", dict, {})
    r = TableReader(src, f"plans.{pid}.tools", raw)
    out = ToolSwitches(**{name: r.boolean(name, getattr(d, name)) for name in TOOL_NAMES})
    r.finish()
    return out


def _parse_tools(src: str, data: Mapping[str, Any]) -> ToolsSettings:
    t = TableReader(src, "tools", data)
    sub: dict[str, TableReader] = {}
    for name in ("web_fetch", "web_search", "notes", "tasks"):
        sub[name] = TableReader(src, f"tools.{name}", t.get(name, dict, {}))
    t.finish()
    f, df = sub["web_fetch"], WebFetchSettings()
    nets = f.strings("allow_networks", df.allow_networks)
    for net in nets:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise f.fail(
                "allow_networks", f"entries must be CIDRs like 127.0.0.1/32 (got {net!r})"
            ) from None
    fetch = WebFetchSettings(
        max_bytes=f.integer("max_bytes", df.max_bytes, minimum=1024, maximum=50_000_000),
        timeout_seconds=f.number("timeout_seconds", df.timeout_seconds, above=0, maximum=300),
        max_redirects=f.integer("max_redirects", df.max_redirects, minimum=0, maximum=20),
        max_chars=f.integer("max_chars", df.max_chars, minimum=100, maximum=1_000_000),
        allow_networks=nets,
    )
    f.finish()
    w, dw = sub["web_search"], WebSearchSettings()
    backend = w.choice("backend", ("", "searxng", "brave"), dw.backend)
    search = WebSearchSettings(
        backend=backend,
        url=w.url("url", dw.url, optional=True),
        key_env=w.env_name("key_env", dw.key_env, optional=True),
        max_results=w.integer("max_results", dw.max_results, minimum=1, maximum=20),
    )
    if backend and not search.url:
        raise w.fail("url", f"is required with backend = {backend!r}")
    if backend == "brave" and not search.key_env:
        raise w.fail("key_env", "is required with backend = 'brave' (the API key's variable)")
    w.finish()
    n, dn = sub["notes"], NotesSettings()
    notes = NotesSettings(
        max_notes=n.integer("max_notes", dn.max_notes, minimum=1, maximum=1000),
        max_note_chars=n.integer("max_note_chars", dn.max_note_chars, minimum=20, maximum=4000),
    )
    n.finish()
    k = sub["tasks"]
    tasks = TasksSettings(
        interval_seconds=k.number(
            "interval_seconds", TasksSettings().interval_seconds, above=0, maximum=3600
        )
    )
    k.finish()
    return ToolsSettings(web_fetch=fetch, web_search=search, notes=notes, tasks=tasks)


def _parse_providers(src: str, data: Mapping[str, Any]) -> dict[str, ProviderSettings]:
    providers: dict[str, ProviderSettings] = {}
    defaults = _default_providers()
    for pid, raw in data.items():
        if not isinstance(raw, dict):
            raise ConfigError(f"{src}: [providers.{pid}] must be a table")
        t = TableReader(src, f"providers.{pid}", raw)
        d = defaults.get(pid)
        if d is None and "base_url" not in raw:
            raise t.fail("base_url", "is required for a provider byokbot does not know")
        if d is None and "default_model" not in raw:
            raise t.fail("default_model", "is required for a provider byokbot does not know")
        kind_default = d.kind if d else "openai-compatible"
        p = ProviderSettings(
            id=pid,
            name=t.string("name", d.name if d else pid),
            kind=t.choice("kind", PROVIDER_KINDS, kind_default),
            base_url=t.url(
                "base_url", d.base_url if d else "", hint="; name an environment variable"
            ),
            key_shape=t.choice("key_shape", KEY_SHAPES, d.key_shape if d else "generic"),
            default_model=t.string("default_model", d.default_model if d else ""),
            models=t.strings("models", d.models if d else ()),
        )
        t.finish()
        providers[pid] = p
    if not providers:
        raise ConfigError(f"{src}: [providers] must define at least one provider")
    return providers


def _parse_agent(src: str, data: Mapping[str, Any]) -> AgentSettings:
    t = TableReader(src, "agent", data)
    d = AgentSettings()
    out = AgentSettings(
        idle_timeout_seconds=t.positive_int("idle_timeout_seconds", d.idle_timeout_seconds),
        idle_check_interval_seconds=t.positive_int(
            "idle_check_interval_seconds", d.idle_check_interval_seconds
        ),
        max_live_agents=t.positive_int("max_live_agents", d.max_live_agents),
        memory_limit_mb=t.positive_int("memory_limit_mb", d.memory_limit_mb),
        max_open_files=t.positive_int("max_open_files", d.max_open_files),
        request_timeout_seconds=t.positive_int(
            "request_timeout_seconds", d.request_timeout_seconds
        ),
        context_tokens=t.positive_int("context_tokens", d.context_tokens),
        max_reply_tokens=t.positive_int("max_reply_tokens", d.max_reply_tokens),
        command=t.strings("command", d.command),
        max_tool_steps=t.integer("max_tool_steps", d.max_tool_steps, minimum=0, maximum=50),
        sandbox=t.choice("sandbox", ("strict", "best-effort", "off"), d.sandbox),
        uid_range=_uid_range(t, d.uid_range),
        extra_connect_ports=_ports(t, "extra_connect_ports"),
        read_paths=t.strings("read_paths", d.read_paths),
        cpu_seconds=t.positive_int("cpu_seconds", d.cpu_seconds),
        max_processes=t.positive_int("max_processes", d.max_processes),
        max_reply_chars=t.integer(
            "max_reply_chars", d.max_reply_chars, minimum=100, maximum=10_000_000
        ),
        recycle_after_idle_seconds=t.integer(
            "recycle_after_idle_seconds", d.recycle_after_idle_seconds, minimum=0, maximum=86_400
        ),
    )
    t.finish()
    return out


def _uid_range(t: TableReader, default: tuple[int, int] | None) -> tuple[int, int] | None:
    value = t.get("uid_range", list, list(default or ()))
    if not value:
        return None  # as root, strict then refuses to start agents
    ok = len(value) == 2 and all(type(v) is int for v in value)
    if not ok or not 0 < value[0] <= value[1] < 2**32 - 1:
        raise t.fail("uid_range", "must be two uids [first, last] with 0 < first <= last")
    return (value[0], value[1])


def _ports(t: TableReader, key: str) -> tuple[int, ...]:
    value = t.get(key, list, [])
    if not all(type(v) is int and 0 < v < 65536 for v in value):
        raise t.fail(key, "must be a list of TCP ports (1-65535)")
    return tuple(value)


def _parse_platform(src: str, name: str, data: Mapping[str, Any]) -> PlatformSettings:
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: [{name}] must be a table")
    t = TableReader(src, name, data)
    enabled = t.boolean("enabled", False)
    options = {k: v for k, v in data.items() if k != "enabled"}
    return PlatformSettings(name=name, enabled=enabled, options=MappingProxyType(options))


_TOP_LEVEL: Final = (
    "mcp",
    "core",
    "media",
    "plans",
    "providers",
    "agent",
    "proxy",
    "tools",
    "inbox",
    "conversations",
    "health",
    "logging",
    "billing",
    "access",
    *PLATFORM_SECTIONS,
)


def _parse_conversations(src: str, data: Mapping[str, Any]) -> ConversationSettings:
    t = TableReader(src, "conversations", data)
    d = ConversationSettings()
    out = ConversationSettings(
        compaction=t.boolean("compaction", d.compaction),
        keep_recent_tokens=t.integer("keep_recent_tokens", d.keep_recent_tokens, minimum=0),
        summary_max_tokens=t.positive_int("summary_max_tokens", d.summary_max_tokens),
        history_listed=t.positive_int("history_listed", d.history_listed),
    )
    t.finish()
    return out


def _parse_inbox(src: str, data: Mapping[str, Any]) -> InboxSettings:
    t = TableReader(src, "inbox", data)
    d = InboxSettings()
    out = InboxSettings(
        lease_seconds=t.number("lease_seconds", d.lease_seconds, minimum=1.0),
        resume_attempts=t.integer("resume_attempts", d.resume_attempts, minimum=0),
        retention_hours=t.positive_int("retention_hours", d.retention_hours),
    )
    t.finish()
    return out


def _parse_health(src: str, data: Mapping[str, Any]) -> HealthSettings:
    t = TableReader(src, "health", data)
    listen = t.string("listen", "").strip()
    t.finish()
    if not listen:
        return HealthSettings()
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9464
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise t.fail("listen", f'must look like "127.0.0.1:9464" (got {listen!r})')
    return HealthSettings(listen=listen, host=host, port=int(port))


def _parse_logging(src: str, data: Mapping[str, Any]) -> LoggingSettings:
    t = TableReader(src, "logging", data)
    out = LoggingSettings(format=t.choice("format", ("text", "json"), "text"))
    t.finish()
    return out


def _default_billing() -> BillingSettings:
    # [billing] and [access] are parsed in core.billing_config (imported at call time, as
    # [proxy] is).
    from core.billing_config import BillingSettings

    return BillingSettings()


def _default_access() -> AccessSettings:
    from core.billing_config import AccessSettings

    return AccessSettings()


def _default_proxy() -> ProxySettings:
    # The [proxy] table's parser lives with the proxy (core.proxy.config) and builds on this
    # module's TableReader, hence the import at call time.
    from core.proxy.config import ProxySettings

    return ProxySettings()


def parse_config(data: Mapping[str, Any], *, source: str, base_dir: Path) -> Config:
    """Validate parsed TOML into a ``Config``; raises ``ConfigError`` naming the setting."""
    for key, value in data.items():
        if key not in _TOP_LEVEL:
            raise ConfigError(f"{source}: [{key}] is not a known section")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{key}] must be a table")
    plans = _parse_plans(source, data["plans"]) if "plans" in data else _default_plans()
    providers = (
        _parse_providers(source, data["providers"]) if "providers" in data else _default_providers()
    )
    for plan in plans.values():
        if plan.byok:
            continue
        if plan.monthly_token_cap is None and plan.monthly_usd_cap is None:
            raise ConfigError(
                f"{source}: [plans.{plan.id}] a managed plan needs monthly_token_cap "
                "or monthly_usd_cap"
            )
    media = _parse_media(source, data.get("media", {}))
    proxy = _parse_proxy_table(data.get("proxy"), source=source, plans=plans)
    # The transcription route takes the same largest audio file as the bot downloads.
    proxy = dataclasses.replace(proxy, max_audio_bytes=media.max_audio_bytes)
    return Config(
        core=_parse_core(source, data.get("core", {})),
        plans=MappingProxyType(plans),
        providers=MappingProxyType(providers),
        agent=_parse_agent(source, data.get("agent", {})),
        platforms=MappingProxyType(
            {n: _parse_platform(source, n, data.get(n, {})) for n in PLATFORM_SECTIONS}
        ),
        proxy=proxy,
        tools=_parse_tools(source, data.get("tools", {})),
        inbox=_parse_inbox(source, data.get("inbox", {})),
        conversations=_parse_conversations(source, data.get("conversations", {})),
        health=_parse_health(source, data.get("health", {})),
        logging=_parse_logging(source, data.get("logging", {})),
        billing=_parse_billing_table(data.get("billing"), source=source, plans=plans),
        access=_parse_access_table(data.get("access"), source=source),
        media=media,
        mcp=_parse_mcp(source, data.get("mcp", {})),
        source=source,
        base_dir=base_dir,
    )


def _parse_media(src: str, data: Mapping[str, Any]) -> MediaSettings:
    t, d = TableReader(src, "media", data), MediaSettings()
    mib = 1024 * 1024
    out = MediaSettings(
        max_image_bytes=t.integer(
            "max_image_bytes", d.max_image_bytes, minimum=1, maximum=20 * mib
        ),
        max_audio_bytes=t.integer(
            "max_audio_bytes", d.max_audio_bytes, minimum=1, maximum=25 * mib
        ),
        max_document_bytes=t.integer(
            "max_document_bytes", d.max_document_bytes, minimum=1, maximum=100 * mib
        ),
        max_document_pages=t.integer(
            "max_document_pages", d.max_document_pages, minimum=1, maximum=2000
        ),
        max_document_chars=t.integer(
            "max_document_chars", d.max_document_chars, minimum=100, maximum=2_000_000
        ),
        transcription_model=t.string("transcription_model", d.transcription_model),
        transcription_timeout=t.number(
            "transcription_timeout", d.transcription_timeout, above=0, maximum=600
        ),
    )
    t.finish()
    return out


def _parse_mcp(src: str, data: Mapping[str, Any]) -> McpSettings:
    t, d = TableReader(src, "mcp", data), McpSettings()
    out = McpSettings(
        max_servers=t.integer("max_servers", d.max_servers, minimum=0, maximum=50),
        confirm_timeout_seconds=t.number(
            "confirm_timeout_seconds", d.confirm_timeout_seconds, above=0, maximum=3600
        ),
    )
    t.finish()
    return out


def _parse_proxy_table(
    data: Mapping[str, Any] | None, *, source: str, plans: Mapping[str, PlanSettings]
) -> ProxySettings:
    from core.proxy.config import parse_proxy

    return parse_proxy(data, source=source, plans=plans)


def _parse_billing_table(
    data: Mapping[str, Any] | None, *, source: str, plans: Mapping[str, PlanSettings]
) -> BillingSettings:
    from core.billing_config import parse_billing

    return parse_billing(data, source=source, plans=plans)


def _parse_access_table(data: Mapping[str, Any] | None, *, source: str) -> AccessSettings:
    from core.billing_config import parse_access

    return parse_access(data, source=source)


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the file named by ``path``, else ``$BYOKBOT_CONFIG``, else ``./config.toml`` if present.

    With no file at all the defaults apply, rooted in the working directory.
    """
    chosen = path or os.environ.get("BYOKBOT_CONFIG") or None
    if chosen is None:
        if not Path("config.toml").exists():
            return Config()
        chosen = "config.toml"
    file = Path(chosen)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the configuration file ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    return parse_config(data, source=file.name, base_dir=file.resolve().parent)
