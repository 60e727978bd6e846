"""The composition root: builds storage, vault, services, router, adapters and jobs, and runs them.

This is the only module that imports ``adapters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from adapters.console import ConsoleAdapter
from bot.alerts import DirectMessageAlerts
from bot.flows.base import LiveKeyCheck, Services
from bot.router import Router
from core.agent_data import DatabaseKeyHealth, DatabaseMemory, DatabaseProfiles, ProxyAccess
from core.budget import Budget
from core.chat import Platform
from core.config import Config
from core.credentials import Credentials
from core.db import Database, upgrade
from core.dedup import DatabaseDeduplicator
from core.errors import ConfigError
from core.flowstate import FlowStates
from core.intake import Intake
from core.livechecks import LiveChecks
from core.plans import PlanCatalog
from core.ports import Agents, ChatAdapter, Clock, Messenger, SystemClock, UnavailableAgents
from core.proxy import ProxyServer
from core.proxy_tokens import ProxyTokens
from core.runtime import AgentSupervisor
from core.scheduler import Job, Scheduler, expire_intake_sessions
from core.tenants import Tenants
from core.usage import UsageLedger
from core.vault import MasterKeyRing, Vault

log = logging.getLogger("byokbot.app")

PLATFORM_MODULES: Mapping[str, str] = {
    "telegram": "adapters.telegram",
    "discord": "adapters.discord",
    "slack": "adapters.slack",
}


def load_master_keys(config: Config, env: Mapping[str, str], *, create: bool) -> MasterKeyRing:
    """The master key ring from the environment variable, else the key file (made if allowed)."""
    return MasterKeyRing.load(
        env_value=env.get(config.core.master_key_env),
        env_name=config.core.master_key_env,
        file=config.resolve_path(config.core.master_key_file),
        create=create,
    )


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
    console_fallback: bool = False

    db: Database = field(init=False)
    vault: Vault = field(init=False)
    services: Services = field(init=False)
    router: Router = field(init=False)
    adapters: list[ChatAdapter] = field(init=False, default_factory=list)
    scheduler: Scheduler = field(init=False)
    supervisor: AgentSupervisor | None = field(init=False, default=None)
    proxy_server: ProxyServer | None = field(init=False, default=None)
    budget: Budget = field(init=False)
    proxy_tokens: ProxyTokens = field(init=False)
    proxy_access: ProxyAccess = field(init=False)
    dedup: DatabaseDeduplicator = field(init=False)

    async def open(self) -> None:
        """Storage, vault and services, without any adapter (the CLI's admin commands use this)."""
        ring = load_master_keys(self.config, self.env, create=True)
        url = self.config.database_url
        await upgrade(url)
        self.db = Database(url)
        # Redeliveries are recognised across restarts and replicas (issue 12 item 10).
        self.dedup = DatabaseDeduplicator(self.db, self.clock)
        credentials = Credentials(self.db, Vault(ring), self.clock)
        credentials.vault = Vault(ring, wrap_counts=await credentials.load_wrap_counts())
        self.vault = credentials.vault
        plans = PlanCatalog(self.config.plans)
        messengers: dict[Platform, Messenger] = {}
        tenants = Tenants(self.db, credentials, plans, self.clock)
        usage = UsageLedger(self.db, self.clock)
        proxy = self.config.proxy
        self.proxy_tokens = ProxyTokens(
            self.db, self.clock, keep=proxy.tokens_kept, cache_seconds=proxy.token_cache_seconds
        )
        self.proxy_access = ProxyAccess(proxy, self.proxy_tokens)
        tenants.revoke_access = self._revoke_proxy_access
        if self.agents is None and self.agent_runtime:
            self.supervisor = AgentSupervisor(
                DatabaseProfiles(
                    self.config, plans, tenants, credentials, managed=self.proxy_access
                ),
                DatabaseMemory(self.db, credentials, self.clock),
                usage,
                DatabaseKeyHealth(credentials, proxy=self.proxy_access),
                self.config.agent,
                runtime_dir=self.config.resolve_path("data/agents"),
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
        )
        self.services.budget = self.budget
        self.router = Router(self.services)

    async def start_proxy(self) -> None:
        """The managed plan's metering proxy, in this process, sharing budget and tokens."""
        self.proxy_server = ProxyServer(
            self.config.proxy,
            self.db,
            plans=self.config.plans,
            env=self.env,
            clock=self.clock,
            budget=self.budget,
            tokens=self.proxy_tokens,
        )
        await self.proxy_server.start()
        log.info("metering proxy listening on %s", self.config.proxy.url)

    async def _revoke_proxy_access(self, tenant_id: str, actor: str) -> None:
        await self.proxy_access.revoke(tenant_id, actor=actor)

    @property
    def _key_from_file(self) -> bool:
        return self.env.get(self.config.core.master_key_env) is None

    async def _rotate_master_key(self) -> tuple[int, int]:
        """New primary master key in the key file, then rewrap every data key under it."""
        path = self.config.resolve_path(self.config.core.master_key_file)
        ring, version = self.vault.ring.with_new_primary()
        MasterKeyRing.write_file(path, ring)
        self.vault.set_ring(ring)
        count = await self.services.credentials.rewrap_all()
        return version, count

    def _build_adapters(self) -> list[ChatAdapter]:
        built: list[ChatAdapter] = []
        if self.platforms:
            for name, settings in self.config.platforms.items():
                if not settings.enabled:
                    continue
                module = importlib.import_module(PLATFORM_MODULES[name])
                adapter = module.build(settings, self.env, config=self.config, dedup=self.dedup)
                if adapter is not None:
                    built.append(adapter)
        built.extend(self.extra_adapters)
        if self.console is not None:
            built.append(self.console)
        return built

    async def start(self) -> None:
        """Open everything, start the adapters and the scheduler."""
        await self.open()
        self.adapters = self._build_adapters()
        if not self.adapters and self.console_fallback:
            # Platforms enabled but none has its token: a platform without a token is simply
            # off (SPEC), and the operator still gets a working bot in the terminal.
            log.warning("no platform could start; opening the console instead")
            self.console = ConsoleAdapter()
            self.adapters = [self.console]
        if not self.adapters:
            raise ConfigError(
                f"{self.config.source}: no platform is enabled and configured, and no console"
            )
        messengers = self.services.messengers
        assert isinstance(messengers, dict)  # noqa: S101 - built as a dict in open()
        for adapter in self.adapters:
            messengers[adapter.platform] = adapter.messenger
        services = self.services
        self.scheduler = Scheduler(
            [
                Job(
                    "expire-intake",
                    30,
                    lambda: expire_intake_sessions(services.intake, services.flow_states),
                ),
            ]
        )
        self.scheduler.start()
        for adapter in self.adapters:
            await adapter.start(self.router.dispatch)
            log.info("%s adapter started", adapter.platform.value)

    async def stop(self) -> None:
        """Stop adapters and jobs and close storage; safe to call more than once."""
        for adapter in reversed(self.adapters):
            try:
                await adapter.stop()
            except Exception:
                log.exception("stopping the %s adapter failed", adapter.platform.value)
        self.adapters = []
        with contextlib.suppress(AttributeError):
            self.scheduler.stop()
        if self.supervisor is not None:
            await self.supervisor.aclose()
        if self.proxy_server is not None:
            await self.proxy_server.stop()
            self.proxy_server = None
        with contextlib.suppress(AttributeError):
            await self.db.dispose()

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set (a signal) or the console reaches end of input."""
        waiters = [asyncio.create_task(stop.wait())]
        if self.console is not None:
            waiters.append(asyncio.create_task(self.console.finished.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
