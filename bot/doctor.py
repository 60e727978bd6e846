"""``byokbot doctor``: check an installation end to end, one line per check.

It changes nothing: no migration, no key file, no webhook. Each line reads
``ok    <check>: <detail>``, ``FAIL  <check>: <detail>`` or ``info  <check>: <detail>``
(info never fails the run). The exit code is 1 when any check failed.
"""

# A one-shot CLI command with nothing else on its event loop: blocking file calls are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.config import Config
from core.db import Database
from core.db.migrate import safe_url
from core.db.status import migration_problem, ping
from core.errors import ConfigError, CoreError

TIMEOUT = httpx.Timeout(10.0)


@dataclass(frozen=True, slots=True)
class Line:
    """One check's result: ``status`` is ok, FAIL or info."""

    status: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<5} {self.check}: {self.detail}"


def ok(check: str, detail: str) -> Line:
    return Line("ok", check, detail)


def fail(check: str, detail: str) -> Line:
    return Line("FAIL", check, detail)


def info(check: str, detail: str) -> Line:
    return Line("info", check, detail)


# Further sandbox layers may be added here (the agent sandbox reports what it needs).
SandboxProbe = Callable[[], Line]


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _landlock() -> Line:
    lsm = _read("/sys/kernel/security/lsm")
    if "landlock" in lsm.split(","):
        return info("sandbox landlock", "available (enabled LSMs: " + lsm + ")")
    detail = f"enabled LSMs: {lsm}" if lsm else "/sys/kernel/security/lsm not readable"
    return info("sandbox landlock", f"not available ({detail})")


def _seccomp() -> Line:
    status = _read("/proc/self/status")
    line = next((x for x in status.splitlines() if x.startswith("Seccomp:")), "")
    if not line:
        return info("sandbox seccomp", "not available (no Seccomp field in /proc/self/status)")
    mode = line.split()[1]
    nested = "this process is already filtered" if mode != "0" else "no filter on this process"
    return info("sandbox seccomp", f"available ({nested})")


def _userns() -> Line:
    limit = _read("/proc/sys/user/max_user_namespaces")
    unpriv = _read("/proc/sys/kernel/unprivileged_userns_clone")
    if limit in ("", "0"):
        return info("sandbox user namespaces", "not available (user.max_user_namespaces = 0)")
    extra = "; unprivileged ones disabled" if unpriv == "0" else ""
    return info("sandbox user namespaces", f"available (max {limit}{extra})")


def _pidns() -> Line:
    if os.path.exists("/proc/self/ns/pid"):
        return info("sandbox pid namespaces", "available")
    return info("sandbox pid namespaces", "not available")


SANDBOX_PROBES: list[SandboxProbe] = [_landlock, _seccomp, _userns, _pidns]


class Doctor:
    """Runs every check against ``config`` and ``env``; ``lines`` collects the results."""

    def __init__(self, config: Config, env: Mapping[str, str]) -> None:
        self.config, self.env = config, env
        self.lines: list[Line] = []

    def add(self, line: Line) -> None:
        self.lines.append(line)
        print(line, flush=True)

    @property
    def failed(self) -> bool:
        return any(line.status == "FAIL" for line in self.lines)

    async def run(self) -> int:
        self.add(ok("config", f"{self.config.source} parses"))
        await self._storage()
        await self._platforms()
        self._proxy()
        for probe in SANDBOX_PROBES:
            self.add(probe())
        return 1 if self.failed else 0

    # ----- storage -----------------------------------------------------------------------

    async def _storage(self) -> None:
        config = self.config
        url = config.database_url
        shown = safe_url(url)
        if url.startswith("sqlite+aiosqlite:///") and ":memory:" not in url:
            path = Path(url.removeprefix("sqlite+aiosqlite:///"))
            if not path.exists():
                self.add(fail("database", f"{path} does not exist (run byokbot db upgrade)"))
                self.add(fail("migrations", "no database"))
                self.add(self._key_without_db())
                return
        db = Database(url)
        try:
            try:
                await ping(db)
            except Exception as exc:  # noqa: BLE001 - any failure to connect is the answer
                self.add(fail("database", f"{shown} unreachable ({_reason(exc)})"))
                self.add(fail("migrations", "database unreachable"))
                self.add(self._key_without_db())
                return
            self.add(ok("database", f"{shown} reachable"))
            problem = await migration_problem(db)
            if problem is None:
                self.add(ok("migrations", "at the latest revision"))
                self.add(await self._master_key(db))
            else:
                self.add(fail("migrations", problem))
                self.add(self._key_without_db())
        finally:
            await db.dispose()

    def _key_without_db(self) -> Line:
        path = self.config.resolve_path(self.config.core.master_key_file)
        if self.env.get(self.config.core.master_key_env) is None and not path.exists():
            return info("master key", f"none yet ({path} is made at the first start)")
        try:
            self._load_ring()
        except CoreError as exc:
            return fail("master key", str(exc))
        return info("master key", "loads; not checked against the data (no usable database)")

    def _load_ring(self) -> Any:
        from bot.app import load_master_keys

        return load_master_keys(self.config, self.env, create=False)

    async def _master_key(self, db: Database) -> Line:
        from bot.app import master_key_source, open_master_keys
        from core.credentials import Credentials
        from core.ports import SystemClock
        from core.vault import MasterKeyRing, Vault

        probe = Credentials(db, Vault(MasterKeyRing({1: bytes(32)}, primary=1)), SystemClock())
        stored = sum((await probe.kek_versions_in_use()).values())
        source = master_key_source(self.config, self.env)
        path = self.config.resolve_path(self.config.core.master_key_file)
        name = self.config.core.master_key_env
        if self.env.get(name) is None and not path.exists():
            if stored:
                return fail("master key", f"{path} not found, but {stored} data key(s) need it")
            return ok("master key", f"none yet ({path} is made at the first start)")
        try:
            await open_master_keys(self.config, self.env, db)
        except CoreError as exc:
            return fail("master key", str(exc))
        return ok("master key", f"{source} opens all {stored} stored data key(s)")

    # ----- platforms ---------------------------------------------------------------------

    async def _platforms(self) -> None:
        enabled = [n for n, p in self.config.platforms.items() if p.enabled]
        if not enabled:
            self.add(info("platforms", "none enabled (byokbot run serves the console)"))
            return
        async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as http:
            for name in enabled:
                check: Callable[[httpx.AsyncClient], Awaitable[None]] = getattr(self, f"_{name}")
                try:
                    await check(http)
                except ConfigError as exc:
                    self.add(fail(f"{name} token", str(exc)))

    async def _call(
        self, http: httpx.AsyncClient, check: str, method: str, url: str, **kw: Any
    ) -> tuple[int, Any] | None:
        """One API call; a network failure becomes a FAIL line (and None)."""
        try:
            response = await http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            self.add(fail(check, f"{_host(url)} unreachable ({type(exc).__name__})"))
            return None
        try:
            body = response.json()
        except ValueError:
            body = None
        return response.status_code, body

    async def _telegram(self, http: httpx.AsyncClient) -> None:
        from adapters.telegram.config import parse

        cfg = parse(self.config.platforms["telegram"], self.env, source=self.config.source)
        if cfg.token is None:
            self.add(fail("telegram token", f"{cfg.token_env} is not set"))
            return
        base = f"{cfg.api_base_url}{cfg.token.reveal()}"
        got = await self._call(http, "telegram token", "POST", f"{base}/getMe")
        if got is None:
            return
        status, body = got
        if status != 200 or not isinstance(body, dict) or not body.get("ok"):
            self.add(fail("telegram token", f"Telegram answered {status} ({_tg_reason(body)})"))
            return
        username = body.get("result", {}).get("username", "?")
        self.add(ok("telegram token", f"valid for @{username}"))
        if cfg.mode != "webhook":
            self.add(info("telegram webhook", "not used (polling)"))
            return
        got = await self._call(http, "telegram webhook", "POST", f"{base}/getWebhookInfo")
        if got is None:
            return
        status, body = got
        result = body.get("result") if isinstance(body, dict) else None
        if status != 200 or not isinstance(result, dict):
            self.add(fail("telegram webhook", f"Telegram answered {status} ({_tg_reason(body)})"))
            return
        url = result.get("url", "")
        if url != cfg.webhook_public_url:
            shown = url or "none"
            self.add(
                fail(
                    "telegram webhook",
                    f"set to {shown}, not {cfg.webhook_public_url} (byokbot run sets it)",
                )
            )
            return
        error = result.get("last_error_message")
        if error:
            self.add(fail("telegram webhook", f"{url} set, but Telegram cannot reach it: {error}"))
            return
        pending = result.get("pending_update_count", 0)
        self.add(ok("telegram webhook", f"{url} set and reached ({pending} pending)"))

    async def _discord(self, http: httpx.AsyncClient) -> None:
        from adapters.discord.config import parse

        settings = self.config.platforms["discord"]
        cfg = parse(settings, self.env, source=self.config.source)
        if cfg is None:
            env = settings.options.get("token_env", "DISCORD_BOT_TOKEN")
            self.add(fail("discord token", f"{env} is not set"))
            return
        got = await self._call(
            http,
            "discord token",
            "GET",
            f"{cfg.api_base_url}/users/@me",
            headers={"Authorization": f"Bot {cfg.token.reveal()}"},
        )
        if got is None:
            return
        status, body = got
        if status != 200 or not isinstance(body, dict):
            self.add(fail("discord token", f"Discord answered {status}"))
            return
        self.add(ok("discord token", f"valid for {body.get('username', '?')}"))

    async def _slack(self, http: httpx.AsyncClient) -> None:
        from adapters.slack.config import parse

        cfg = parse(self.config.platforms["slack"], self.env, source=self.config.source)
        if cfg.bot_token is None:
            self.add(fail("slack token", f"{cfg.bot_token_env} is not set"))
            return
        got = await self._call(
            http,
            "slack token",
            "POST",
            f"{cfg.api_base_url}auth.test",
            headers={"Authorization": f"Bearer {cfg.bot_token.reveal()}"},
        )
        if got is None:
            return
        status, body = got
        if status != 200 or not isinstance(body, dict) or not body.get("ok"):
            error = body.get("error", "?") if isinstance(body, dict) else "?"
            self.add(fail("slack token", f"Slack answered {status} ({error})"))
            return
        self.add(ok("slack token", f"valid for {body.get('user', '?')} in {body.get('team', '?')}"))
        if cfg.mode == "http":
            self.add(
                info(
                    "slack request url",
                    f"Slack posts to your Request URL; byokbot listens on "
                    f"{cfg.listen_host}:{cfg.listen_port}{cfg.path} behind your TLS proxy",
                )
            )

    # ----- proxy -------------------------------------------------------------------------

    def _proxy(self) -> None:
        settings = self.config.proxy
        if not settings.enabled:
            self.add(info("proxy upstream keys", "the metering proxy is off"))
            return
        from core.proxy.config import load_upstream_keys

        try:
            keys = load_upstream_keys(settings, self.env, source=self.config.source)
        except ConfigError as exc:
            self.add(fail("proxy upstream keys", str(exc)))
            return
        self.add(ok("proxy upstream keys", f"{len(keys)} upstream key(s) set"))


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    if isinstance(orig, BaseException):
        exc = orig
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0]}" if first else type(exc).__name__


def _host(url: str) -> str:
    return httpx.URL(url).host or "the API"


def _tg_reason(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("description"), str):
        return str(body["description"])[:200]
    return "no description"


async def doctor(config: Config, env: Mapping[str, str]) -> int:
    """Print one line per check; 0 when none failed, else 1."""
    return await Doctor(config, env).run()
