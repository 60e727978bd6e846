"""The composition root: builds storage, vault, services, router, adapters and jobs, and runs them.

This is the only module that imports ``adapters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from adapters.console import ConsoleAdapter
from bot.alerts import DirectMessageAlerts
from bot.flows.base import LiveKeyCheck, Services
from bot.flows.billing import DirectMessageNotices
from bot.recovery import Recovery
from bot.router import Router
from bot.tasks import BotTasks
from core import changes, proxy_tokens
from core.access import Access
from core.agent_data import (
    DatabaseKeyHealth,
    DatabaseMemory,
    DatabaseNotes,
    DatabaseProfiles,
    ProxyAccess,
)
from core.billing import Billing
from core.bookkeeping import DeferredMemory, DeferredUsage, WriteBehind
from core.budget import Budget
from core.changes import ChangeFeed, JobLeases
from core.chat import Platform
from core.config import Config
from core.conversations import DatabaseThreads
from core.credentials import Credentials
from core.db import Database, upgrade
from core.db.instance import InstanceLock, wait_shared
from core.dedup import DatabaseDeduplicator, LateDeduplicator
from core.errors import ConfigError, KeyRetiredError, MasterKeyError, StartupError
from core.flowstate import FlowStates
from core.hardening import secure_config_storage
from core.inbox import DatabaseInbox, LateInbox
from core.intake import Intake
from core.livechecks import LiveChecks
from core.llm import warm_http
from core.mcp_servers import McpServers
from core.plans import PlanCatalog
from core.ports import (
    Agents,
    ChatAdapter,
    Clock,
    FailingAdapter,
    Messenger,
    SendOnlyAdapter,
    SystemClock,
    UnavailableAgents,
)
from core.proxy_tokens import ProxyTokens
from core.runtime import AgentSupervisor
from core.runtime.protocol import ToolConfig
from core.scheduler import Job, Scheduler, expire_intake_sessions
from core.secret import Secret
from core.tasks import DatabaseTasks
from core.tenants import Tenants
from core.usage import UsageLedger
from core.vault import MasterKeyRing, Vault

if TYPE_CHECKING:
    # Loaded when enabled (both bring aiohttp's server): a bot without them starts lighter.
    from core.health import HealthServer
    from core.proxy.server import ProxyServer

log = logging.getLogger("byokbot.app")

PLATFORM_MODULES: Mapping[str, str] = {
    "telegram": "adapters.telegram",
    "discord": "adapters.discord",
    "slack": "adapters.slack",
}


# The root of each platform adapter's errors, and the one that means "the token was refused"
# (a configuration problem, exit 2, rather than a runtime one, exit 1).
PLATFORM_ERRORS: Mapping[str, tuple[str, str]] = {
    "telegram": ("TelegramAdapterError", "TelegramLoginError"),
    "discord": ("DiscordError", "DiscordLoginError"),
    "slack": ("SlackAdapterError", "SlackStartError"),
}


def load_master_keys(config: Config, env: Mapping[str, str], *, create: bool) -> MasterKeyRing:
    """The master key ring from the environment variable, else the key file (made if allowed)."""
    return MasterKeyRing.load(
        env_value=env.get(config.core.master_key_env),
        env_name=config.core.master_key_env,
        file=config.resolve_path(config.core.master_key_file),
        create=create,
    )


def master_key_source(config: Config, env: Mapping[str, str]) -> str:
    """Where the ring comes from, as error messages name it."""
    name = config.core.master_key_env
    return (
        name if env.get(name) is not None else str(config.resolve_path(config.core.master_key_file))
    )


def tool_config(config: Config, env: Mapping[str, str]) -> ToolConfig:
    """The agent tools' settings for ``configure``, the search key read from its variable."""
    t = config.tools
    search = t.web_search
    key = env.get(search.key_env) if search.key_env else None
    if search.backend and search.key_env and not key:
        raise StartupError(
            f"{config.source}: [tools.web_search] key_env names {search.key_env}, which is not set"
        )
    return ToolConfig(
        max_steps=config.agent.max_tool_steps,
        fetch_max_bytes=t.web_fetch.max_bytes,
        fetch_timeout=t.web_fetch.timeout_seconds,
        fetch_max_redirects=t.web_fetch.max_redirects,
        fetch_max_chars=t.web_fetch.max_chars,
        allow_networks=t.web_fetch.allow_networks,
        search_backend=search.backend,
        search_url=search.url,
        search_key=Secret(key) if key else None,
        search_max_results=search.max_results,
        max_notes=t.notes.max_notes,
        max_note_chars=t.notes.max_note_chars,
    )


async def open_master_keys(config: Config, env: Mapping[str, str], db: Database) -> MasterKeyRing:
    """The ring, refused unless it opens the data keys the database already holds.

    A key file is created only for an empty database: a missing file beside stored data keys
    means a lost or misplaced key, and a new one would make every tenant unreadable.

    Raises:
        MasterKeyError: one line naming the variable or file, and what to do.
    """
    probe = Credentials(db, Vault(MasterKeyRing({1: bytes(32)}, primary=1)), SystemClock())
    counts = await probe.kek_versions_in_use()
    stored = sum(counts.values())
    path = config.resolve_path(config.core.master_key_file)
    from_env = env.get(config.core.master_key_env) is not None
    if stored and not from_env and not path.exists():
        raise MasterKeyError(
            f"{path}: master key file not found, but the database holds {stored} data key(s) "
            f"wrapped by it; restore the file from your backup (or set "
            f"{config.core.master_key_env}) — a new key would open none of them"
        )
    ring = load_master_keys(config, env, create=not stored)
    probe.vault = Vault(ring)
    problem = await probe.master_key_problem()
    if problem is not None:
        version, count, error = problem
        source = master_key_source(config, env)
        if isinstance(error, KeyRetiredError):
            raise MasterKeyError(
                f"{source}: {count} stored data key(s) are wrapped by master key v{version}, "
                f"which is not loaded (loaded: {', '.join(f'v{v}' for v in ring.versions)}); "
                f"add v{version} back"
            )
        raise MasterKeyError(
            f"{source}: master key v{version} does not open the {count} data key(s) stored "
            "under it; this is not the key they were wrapped with — restore the right one"
        )
    return ring


@dataclass
class App:
    """A running byokbot: call ``start`` then ``stop``; ``router.dispatch`` takes events."""

    config: Config
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    clock: Clock = field(default_factory=SystemClock)
    console: ConsoleAdapter | None = None
    agents: Agents | None = None
    extra_adapters: list[ChatAdapter] = field(default_factory=list)
    platforms: bool = True
    agent_runtime: bool = True
    # ``byokbot run`` starts the agent template with these: once serving (a database with
    # tenants), or at the first sign-up (a new one, while the person picks a plan and pastes a
    # key), rather than at the first message.
    on_serving: Callable[[], None] | None = None
    on_first_tenant: Callable[[], None] | None = None
    # The process is this bot's own (``byokbot run``): what start-up made is frozen out of the
    # cyclic collector before the first chat (see ``start``).
    freeze_heap: bool = False

    db: Database = field(init=False)
    vault: Vault = field(init=False)
    services: Services = field(init=False)
    router: Router = field(init=False)
    adapters: list[ChatAdapter] = field(init=False, default_factory=list)
    scheduler: Scheduler = field(init=False)
    tasks: BotTasks = field(init=False)
    supervisor: AgentSupervisor | None = field(init=False, default=None)
    proxy_server: ProxyServer | None = field(init=False, default=None)
    budget: Budget = field(init=False)
    proxy_tokens: ProxyTokens = field(init=False)
    proxy_access: ProxyAccess = field(init=False)
    billing: Billing = field(init=False)
    stripe: Any = field(init=False, default=None)  # adapters.stripe.StripeGateway when enabled
    # Built with the adapters, before the database; open() points it at the database.
    dedup: LateDeduplicator = field(init=False, default_factory=LateDeduplicator)
    # Likewise the durable inbox (issue 13): adapters record deliveries in it before confirming.
    inbox_port: LateInbox = field(init=False, default_factory=LateInbox)
    inbox: DatabaseInbox = field(init=False)
    recovery: Recovery = field(init=False)
    # Usage, memory and inbox marks are written here, after the reply and with retries.
    bookkeeping: WriteBehind = field(init=False)
    _instance: InstanceLock | None = field(init=False, default=None)
    _recovering: asyncio.Task[None] | None = field(init=False, default=None)
    health: HealthServer | None = field(init=False, default=None)
    # PostgreSQL only: other replicas' changes (core.changes) and the jobs' leases.
    changes: ChangeFeed | None = field(init=False, default=None)
    leases: JobLeases | None = field(init=False, default=None)
    # The agents' profiles, cached per tenant (dropped by every change, here or announced).
    profiles: DatabaseProfiles = field(init=False)
    # Set once every adapter has started; cleared when one reports a failure.
    _serving: bool = field(init=False, default=False)

    async def open(self) -> None:
        """Storage, vault and services, without any adapter (the CLI's admin commands use this).

        Raises:
            StartupError: the database cannot be reached.
            MasterKeyError: the master key is missing, malformed, or does not open the data
                keys already stored.
        """
        url = self.config.database_url
        # Before anything reads or creates them: private data dir, database and key files.
        secure_config_storage(self.config, key_from_file=self._key_from_file)
        await upgrade(url)
        self.db = Database(url)
        ring = await open_master_keys(self.config, self.env, self.db)
        # Redeliveries are recognised across restarts and replicas (issue 12 item 10).
        self.dedup.target = DatabaseDeduplicator(self.db, self.clock)
        credentials = Credentials(self.db, Vault(ring), self.clock)
        credentials.vault = Vault(ring, wrap_counts=await credentials.load_wrap_counts())
        self.vault = credentials.vault
        self.bookkeeping = WriteBehind()
        inbox = self.config.inbox
        self.inbox = DatabaseInbox(
            self.db,
            self.clock,
            lambda: self.vault.ring,
            self.bookkeeping,
            lease_seconds=inbox.lease_seconds,
            retention_seconds=inbox.retention_hours * 3600.0,
        )
        self.inbox_port.target = self.inbox
        if self._key_from_file:
            credentials.reload_ring = self._reload_ring
        plans = PlanCatalog(self.config.plans)
        messengers: dict[Platform, Messenger] = {}
        tenants = Tenants(self.db, credentials, plans, self.clock)
        usage = UsageLedger(self.db, self.clock)
        usage.pending_writes = self.bookkeeping.drained
        deferred_usage = DeferredUsage(usage, self.bookkeeping)
        proxy = self.config.proxy
        self.proxy_tokens = ProxyTokens(
            self.db, self.clock, keep=proxy.tokens_kept, cache_seconds=proxy.token_cache_seconds
        )
        self.proxy_access = ProxyAccess(proxy, self.proxy_tokens)
        tenants.revoke_access = self._revoke_proxy_access
        if self.on_first_tenant is not None:
            first = self.on_first_tenant
            self.on_first_tenant = None
            tenants.signed_up = first
        notes = DatabaseNotes(
            self.db, credentials, self.clock, limit=self.config.tools.notes.max_notes
        )
        self.tasks = BotTasks(
            DatabaseTasks(self.db, credentials, self.clock), tenants, plans, messengers
        )
        mcp_servers = McpServers(self.db, credentials, self.clock)
        memory = DeferredMemory(DatabaseMemory(self.db, credentials, self.clock), self.bookkeeping)
        threads = DatabaseThreads(self.db, memory, self.clock)
        self.profiles = DatabaseProfiles(
            self.config, plans, tenants, credentials, managed=self.proxy_access, mcp=mcp_servers
        )
        if self.agents is None and self.agent_runtime:
            self.supervisor = AgentSupervisor(
                self.profiles,
                memory,
                deferred_usage,
                DatabaseKeyHealth(credentials, proxy=self.proxy_access),
                self.config.agent,
                runtime_dir=self.config.resolve_path("data/agents"),
                tools=tool_config(self.config, self.env),
                notes=notes,
                tasks=self.tasks,
                confirm_timeout=self.config.mcp.confirm_timeout_seconds,
                conversations=self.config.conversations,
                threads=threads,
            )
            self.agents = self.supervisor
        self.services = Services(
            config=self.config,
            db=self.db,
            plans=plans,
            tenants=tenants,
            credentials=credentials,
            intake=Intake(
                self.db,
                self.clock,
                ttl_seconds=self.config.core.intake_ttl_seconds,
                max_attempts=self.config.core.intake_max_attempts,
            ),
            flow_states=FlowStates(self.db, self.clock),
            agents=self.agents or UnavailableAgents(),
            notes=notes,
            tasks=self.tasks.store,
            mcp=mcp_servers,
            conversations=threads,
            proxy_access=self.proxy_access,
            clock=self.clock,
            messengers=messengers,
            usage=usage,
            verify_key=LiveKeyCheck(self.config) if self.config.core.verify_keys_live else None,
            rotate_master_key=self._rotate_master_key if self._key_from_file else None,
            live_checks=LiveChecks(
                self.db,
                self.clock,
                per_identity=self.config.core.live_checks_per_hour,
                platform=self.config.core.live_checks_per_hour_total,
            ),
        )
        self.budget = Budget(
            self.db,
            self.config.plans,
            self.clock,
            sink=DirectMessageAlerts(self.services),
            reservation_ttl=timedelta(seconds=proxy.reservation_ttl_seconds),
            lease_requests=proxy.lease_requests,
        )
        self.services.budget = self.budget
        self.billing = Billing(
            self.db,
            tenants,
            self.config,
            self.clock,
            agents=self.services.agents,
            notices=DirectMessageNotices(self.services),
        )
        self.services.billing = self.billing
        self.services.access = Access(self.db, self.clock)
        if self.config.billing.stripe.enabled:
            from adapters.stripe import StripeGateway

            self.stripe = StripeGateway(self.config.billing.stripe, self.env, self.billing)
            self.services.checkout = self.stripe
            self.billing.cards = self.stripe
        self.router = Router(self.services)
        self.recovery = Recovery(
            self.inbox,
            messengers,
            self.router.dispatch,
            resume_attempts=inbox.resume_attempts,
            platforms=lambda: [a.platform for a in self.adapters],
        )

    async def start_proxy(self) -> None:
        """The managed plan's metering proxy, in this process, sharing budget and tokens."""
        from core.proxy.server import ProxyServer

        self.proxy_server = ProxyServer(
            self.config.proxy,
            self.db,
            plans=self.config.plans,
            env=self.env,
            clock=self.clock,
            budget=self.budget,
            tokens=self.proxy_tokens,
            trial_caps=self.config.billing.trial_caps,
        )
        settings = self.config.proxy
        try:
            await self.proxy_server.start()
        except OSError as exc:
            self.proxy_server = None
            raise ConfigError(
                f"{self.config.source}: [proxy] cannot listen on {settings.host}:{settings.port}"
                f" ({exc.strerror or type(exc).__name__})"
            ) from None
        log.info("metering proxy listening on %s", settings.url)

    async def _revoke_proxy_access(self, tenant_id: str, actor: str) -> None:
        await self.proxy_access.revoke(tenant_id, actor=actor)

    @property
    def _key_from_file(self) -> bool:
        return self.env.get(self.config.core.master_key_env) is None

    def _reload_ring(self) -> bool:
        """Adopt the key file's ring if it holds versions this process has not loaded.

        Another bot process may have rotated (``/admin rotate-master-key``): its data keys are
        then wrapped by a version only the file knows. Versions are never dropped here.
        """
        path = self.config.resolve_path(self.config.core.master_key_file)
        try:
            ring = MasterKeyRing.load(env_value=None, file=path, create=False)
        except MasterKeyError as exc:
            log.warning("master key file could not be re-read: %s", exc)
            return False
        current = self.vault.ring
        if set(ring.versions) <= set(current.versions):
            return False
        if any(v in ring.versions and ring.key(v) != current.key(v) for v in current.versions):
            log.warning("master key file %s changed keys this process uses; not adopted", path)
            return False
        self.vault.set_ring(ring)
        log.info("master key v%s loaded from %s", ring.primary_version, path)
        return True

    async def _rotate_master_key(self) -> tuple[int, int]:
        """New primary master key in the key file, then rewrap every data key under it."""
        path = self.config.resolve_path(self.config.core.master_key_file)
        ring, version = self.vault.ring.with_new_primary()
        MasterKeyRing.write_file(path, ring)
        self.vault.set_ring(ring)
        count = await self.services.credentials.rewrap_all()
        return version, count

    def build_adapters(self) -> list[ChatAdapter]:
        """Every enabled platform's adapter, unstarted (``byokbot config check`` uses this).

        Raises:
            ConfigError: a bad ``[<platform>]`` setting, or a token variable that is not set.
        """
        return self._build_adapters()

    def _build_adapters(self) -> list[ChatAdapter]:
        built: list[ChatAdapter] = []
        if self.platforms:
            for name, settings in self.config.platforms.items():
                if not settings.enabled:
                    continue
                module = importlib.import_module(PLATFORM_MODULES[name])
                built.append(
                    module.build(
                        settings,
                        self.env,
                        config=self.config,
                        dedup=self.dedup,
                        inbox=self.inbox_port,
                    )
                )
        built.extend(self.extra_adapters)
        if self.console is not None:
            built.append(self.console)
        return built

    async def start(self) -> None:
        """Open everything, start the adapters and the scheduler.

        Every failure stops start-up with one line (see ``bot.cli``): an enabled platform that
        cannot start is never skipped, since a bot serving nothing looks like success to a
        service manager.

        Raises:
            ConfigError: a bad setting or unset token (checked before anything is opened).
            StartupError: a platform or the database cannot be reached, or another process
                polls the same Telegram bot.
            MasterKeyError: see ``open``.
        """
        adapters = self._build_adapters()
        if not adapters:
            raise ConfigError(
                f"{self.config.source}: no platform is enabled and configured, and no console"
            )
        # Off the loop while the database opens; awaited before any chat is served.
        warming = asyncio.create_task(asyncio.to_thread(warm_http))
        await self.open()
        from core import metrics

        metrics.watch_sdk_retries()
        if self.supervisor is not None:
            supervisor = self.supervisor
            metrics.watch_agents(lambda: [a.pid for a in supervisor.status()])
        if self.config.health.enabled:
            # Early: a liveness probe answers during start-up, readiness once all is up.
            await self._start_health()
        self._instance = InstanceLock(self.db)
        if not await wait_shared(self._instance):
            raise StartupError(
                "a master key rotation holds the database; start again when it has finished"
            )
        if self.config.proxy.enabled and self.proxy_server is None:
            # Before any adapter: a managed tenant's first message needs it listening.
            await self.start_proxy()
        self.adapters = adapters
        messengers = self.services.messengers
        assert isinstance(messengers, dict)  # noqa: S101 - built as a dict in open()
        for adapter in self.adapters:
            messengers[adapter.platform] = adapter.messenger
        if self.config.billing.stars:
            stars = next((a for a in self.adapters if hasattr(a, "stars_invoice_link")), None)
            if stars is None:
                raise ConfigError(
                    f"{self.config.source}: [billing] stars = true needs [telegram] enabled"
                )
            self.services.stars = stars  # type: ignore[assignment]
        if self.stripe is not None:
            await self.stripe.start()
        if not self.db.is_sqlite:
            await self._listen_for_changes()
            self.leases = JobLeases(self.db.session, f"{socket.gethostname()}:{os.getpid()}")
        self.scheduler = Scheduler(self.jobs(), leases=self.leases)
        self.scheduler.start()
        await warming
        if self.freeze_heap:
            # Start-up leaves ~160k objects that live as long as the process, and every full
            # collection walked them all: 100-500 ms with every chat waiting, measured in the
            # first seconds of serving. Collected once here, then out of the collector's reach.
            gc.collect()
            gc.freeze()
        for adapter in self.adapters:
            await self._start_adapter(adapter)
            log.info("%s adapter started", adapter.platform.value)
        # Turns a previous process left unfinished (their leases may have run out already).
        self._recovering = asyncio.create_task(self._recover_safely())
        self._serving = True
        if self.on_serving is not None:
            self.on_serving()

    async def _listen_for_changes(self) -> None:
        """Other replicas' writes drop this one's caches and swap its agents within a second."""
        services = self.services
        feed = ChangeFeed(self.db.url)

        def tenant_changed(tenant_id: str) -> Awaitable[None] | None:
            services.tenants.changed()
            proxy_tokens.forget_everywhere(tenant_id)
            self.proxy_access.forget(tenant_id)
            return self._swap_agent(tenant_id)

        def everything_changed() -> None:
            services.tenants.changed()
            services.flow_states.changed()
            if services.billing is not None:
                services.billing.changed()

        def billing_changed(tenant_id: str) -> None:
            if services.billing is not None:
                services.billing.changed(tenant_id)

        def keys_changed(tenant_id: str) -> Awaitable[None] | None:
            self.profiles.forget(tenant_id)  # before the swap re-reads it
            return self._swap_agent(tenant_id)

        feed.on(changes.TENANT, tenant_changed)
        feed.on(changes.KEYS, keys_changed)
        feed.on(changes.FLOW, services.flow_states.changed)
        feed.on(changes.BILLING, billing_changed)
        feed.on_gap(everything_changed)
        # Caches are kept longer while every change is heard (core.cache.LISTENING_SECONDS).
        self.profiles.listening = feed.connected.is_set
        services.tenants.listening = feed.connected.is_set
        services.flow_states.listening = feed.connected.is_set
        await feed.start()
        self.changes = feed

    def _swap_agent(self, tenant_id: str) -> Awaitable[None] | None:
        # A rotated, revoked or suspended tenant's agent here restarts on the new key or
        # stops (a replica not hosting it has nothing to do).
        if self.supervisor is None:
            return None
        return self.supervisor.reconfigure(tenant_id)

    async def _recover_safely(self) -> None:
        try:
            await self.recovery.run()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("inbox: looking for unfinished turns failed (%s); retrying", exc)
        except Exception:
            log.exception("inbox: recovering unfinished turns failed; the job tries again")

    async def _start_health(self) -> None:
        from bot.readiness import readiness_checks
        from core.health import HealthServer

        settings = self.config.health
        self.health = HealthServer(settings.host, settings.port, readiness_checks(self))
        try:
            port = await self.health.start()
        except OSError as exc:
            self.health = None
            raise ConfigError(
                f"{self.config.source}: [health] cannot listen on {settings.listen}"
                f" ({exc.strerror or type(exc).__name__})"
            ) from None
        log.info("health listener on %s:%s (/healthz /readyz /metrics)", settings.host, port)

    @property
    def serving(self) -> bool:
        """Every adapter started and none has reported a failure since."""
        return self._serving

    async def _start_adapter(self, adapter: ChatAdapter) -> None:
        await self._guarded(adapter, adapter.start(self.router.dispatch))

    async def _guarded(self, adapter: ChatAdapter, starting: Awaitable[None]) -> None:
        """Await ``starting``, turning the platform's errors into one line for the operator."""
        name = adapter.platform.value
        errors = PLATFORM_ERRORS.get(name)
        if errors is None:
            await starting
            return
        module = importlib.import_module(PLATFORM_MODULES[name])
        root, login = (getattr(module, n) for n in errors)
        try:
            await starting
        except login as exc:
            raise ConfigError(f"{name}: {exc}") from None
        except root as exc:
            raise StartupError(f"{name}: {exc}") from None

    async def open_senders(self) -> list[Platform]:
        """Log every enabled platform in to send only, for notices from ``byokbot admin``.

        No polling, gateway or listener starts, so this is safe beside a running bot. Returns
        the enabled platforms that cannot send this way. ``stop`` closes them again.

        Raises:
            ConfigError: a bad setting, an unset token, or a token the platform refused.
            StartupError: a platform cannot be reached.
        """
        cannot: list[Platform] = []
        messengers = self.services.messengers
        assert isinstance(messengers, dict)  # noqa: S101 - built as a dict in open()
        for name, settings in self.config.platforms.items():
            if not settings.enabled:
                continue
            module = importlib.import_module(PLATFORM_MODULES[name])
            adapter: ChatAdapter = module.build(settings, self.env, config=self.config)
            if not isinstance(adapter, SendOnlyAdapter):
                cannot.append(adapter.platform)
                continue
            self.adapters.append(adapter)
            await self._guarded(adapter, adapter.open_for_sending())
            messengers[adapter.platform] = adapter.messenger
        return cannot

    def jobs(self) -> list[Job]:
        """The recurring jobs of a running bot; each is awaited in this event loop."""
        services, config = self.services, self.config

        async def expire_intake() -> None:
            await expire_intake_sessions(services.intake, services.flow_states)

        sweep = config.core.intake_sweep_interval_seconds
        jobs = [Job("expire-intake", sweep, expire_intake, once=True)]
        lease = config.inbox.lease_seconds
        jobs.append(Job("inbox-renew", max(lease / 3, 0.3), self._renew_inbox))
        jobs.append(Job("inbox-recover", max(lease / 2, 0.5), self._recover_safely))
        jobs.append(Job("inbox-sweep", 3600, self._sweep_inbox, once=True))
        # Trials and periods end, grace runs out, reminders fall due (issue 15).
        jobs.append(
            Job("billing", config.billing.check_interval_seconds, self.billing.tick, once=True)
        )
        if self.supervisor is not None:
            jobs.append(
                Job(
                    "stop-idle-agents",
                    config.agent.idle_check_interval_seconds,
                    self.supervisor.idle_job,
                )
            )
        if self.supervisor is not None:
            self.tasks.agents = self.services.agents
            every_task = config.tools.tasks.interval_seconds
            jobs.append(Job("run-tasks", every_task, self.tasks.run_due, once=True))
        if self.proxy_server is not None:
            # The same jobs ``byokbot proxy`` runs on its own (both are idempotent).
            every = config.proxy.sweep_interval_seconds
            jobs.append(Job("sweep-reservations", every, self.budget.sweep_orphans, once=True))
            jobs.append(Job("roll-budget-month", every, self.budget.reset_month, once=True))
        # inbox-renew/-recover and stop-idle-agents stay on every replica: each renews its own
        # leases, takes over turns whose lease ran out, and stops its own idle agents.
        return jobs

    async def _sweep_inbox(self) -> None:
        try:
            await self.inbox.sweep()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("inbox: sweeping old deliveries failed (%s); next hour then", exc)

    async def _renew_inbox(self) -> None:
        try:
            await self.inbox.renew()
        except (SQLAlchemyError, OSError) as exc:
            # A locked or restarting database: the lease has two more renewals to go.
            log.warning("inbox: renewing this process's leases failed (%s)", type(exc).__name__)

    async def stop(self) -> None:
        """Stop adapters and jobs and close storage; safe to call more than once."""
        self._serving = False
        if self.health is not None:
            await self.health.stop()
            self.health = None
        for adapter in reversed(self.adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping the %s adapter failed", adapter.platform.value)
        self.adapters = []
        if self._recovering is not None:
            # Awaited before the database closes: a query cut off by a closed pool never ends.
            self._recovering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recovering
            self._recovering = None
        with contextlib.suppress(AttributeError):
            await self.recovery.aclose()
        with contextlib.suppress(AttributeError):
            self.scheduler.stop()
        if self.changes is not None:
            await self.changes.stop()
            self.changes = None
        if self.stripe is not None:
            await self.stripe.stop()
        if self.supervisor is not None:
            await self.supervisor.aclose()
        with contextlib.suppress(AttributeError):
            # Usage and memory of the last replies; a locked database gets a few seconds.
            await self.bookkeeping.close()
        if self.proxy_server is not None:
            await self.proxy_server.stop()
            self.proxy_server = None
        if self._instance is not None:
            await self._instance.release()
            self._instance = None
        with contextlib.suppress(AttributeError):
            await self.db.dispose()

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (a signal) or the console reaches end of input."""
        waiters: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
        if self.console is not None:
            waiters.append(asyncio.create_task(self.console.finished.wait()))
        failures: dict[asyncio.Task[object], str] = {}
        for adapter in self.adapters:
            if isinstance(adapter, FailingAdapter):
                task: asyncio.Task[object] = asyncio.create_task(adapter.failure())
                failures[task] = adapter.platform.value
                waiters.append(task)
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        for task in done:
            if task in failures:
                self._serving = False
                raise StartupError(f"{failures[task]}: {task.result()}")
