"""Two ``byokbot run`` replicas in Telegram webhook mode behind a local nginx, on PostgreSQL.

``Telegram`` here is the fake Bot API plus a pusher that does what Telegram does in webhook
mode: POST each update to the public URL (nginx, round-robin over the replicas) with the
secret token, again and again until one answers 200. nginx passes a failed or refused request
on to the other replica, as a load balancer in front of replicas would.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegramServer
from tests.system.conftest import TELEGRAM_TOKEN_ENV, base_tables, telegram_tables
from tests.system.harness import BotProcess, CanaryScan, Workspace
from tests.system.managed_support import free_port

PG_ENV = "BYOKBOT_TEST_PG_URL"
WEBHOOK_SECRET_ENV = "TELEGRAM_WEBHOOK_SECRET"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WEBHOOK_SERVING = r"telegram: serving @\w+ by webhook"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database for this test."""
    admin = os.environ.get(PG_ENV)
    if not admin:
        pytest.skip(f"{PG_ENV} is not set (.ci/run starts a throwaway PostgreSQL and sets it)")
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:16]}"
    plain = admin.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, _ = admin.rpartition("/")
    yield f"{base}/{name}"
    conn = await asyncpg.connect(plain)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


_NGINX_CONF = """
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream replicas {{
        server 127.0.0.1:{a} max_fails=0;
        server 127.0.0.1:{b} max_fails=0;
    }}
    server {{
        listen 127.0.0.1:{port};
        location /telegram {{
            proxy_pass http://replicas;
            proxy_connect_timeout 2s;
            proxy_read_timeout 10s;
            # A replica that is down or not ready: the update goes to the other one.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """nginx in the foreground, balancing ``/telegram`` over two local ports."""

    root: Path
    ports: tuple[int, int]
    port: int = 0
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        if not os.path.exists(NGINX):
            pytest.fail("nginx is not installed (.ci/run installs Debian's nginx package)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = self.root / "nginx.conf"
        conf.write_text(
            _NGINX_CONF.format(root=self.root, a=self.ports[0], b=self.ports[1], port=self.port)
        )
        self.proc = await asyncio.create_subprocess_exec(
            NGINX,
            "-c",
            str(conf),
            "-p",
            str(self.root),
            "-e",
            str(self.root / "error.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            if self.proc.returncode is not None:
                log = (self.root / "error.log").read_text(errors="replace")
                pytest.fail(f"nginx exited: {log[-2000:]}")
            await asyncio.sleep(0.05)
        pytest.fail("nginx did not start listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/telegram"

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGQUIT)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


@dataclass
class WebhookPusher:
    """Telegram's side of webhook mode: every pushed update POSTed until it gets a 200."""

    telegram: FakeTelegramServer
    url: str
    secret: str
    served_by: dict[int, str] = field(default_factory=dict)  # update_id -> replica address
    attempts: dict[int, int] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        sent = 0
        while True:
            due = sorted(u for u in self.telegram.pushed if u > sent)
            if not due:
                await asyncio.sleep(0.02)
                continue
            for update_id in due:
                await self._deliver(update_id)
                sent = update_id

    async def _deliver(self, update_id: int) -> None:
        assert self._session is not None
        body = self.telegram.pushed[update_id]
        headers = {"X-Telegram-Bot-Api-Secret-Token": self.secret}
        while True:
            self.attempts[update_id] = self.attempts.get(update_id, 0) + 1
            try:
                async with self._session.post(self.url, json=body, headers=headers) as resp:
                    if resp.status == 200:
                        self.served_by[update_id] = resp.headers.get("X-Upstream", "")
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)  # Telegram backs off longer; a test has no minutes

    def delivered(self, update_id: int) -> bool:
        return update_id in self.served_by

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()


@dataclass
class Replicas:
    """Two work dirs with one master key, one database and one Telegram bot."""

    spaces: list[Workspace]
    ports: list[int]
    bots: list[BotProcess] = field(default_factory=list)

    async def start(self) -> list[BotProcess]:
        self.bots = list(await asyncio.gather(*(ws.start("run") for ws in self.spaces)))
        await asyncio.gather(*(b.wait_output(WEBHOOK_SERVING, within=60) for b in self.bots))
        return self.bots

    def by_address(self, address: str) -> int:
        """Which replica (0 or 1) an nginx upstream address is (the last one nginx tried)."""
        last = address.split(",")[-1].strip()
        port = int(last.rsplit(":", 1)[1])
        return self.ports.index(port)


def replica_spaces(
    tmp_path: Path,
    llm: FakeLLMServer,
    telegram: FakeTelegramServer,
    pg_url: str,
    canaries: CanaryScan,
    secret: str,
    extra: dict[str, dict[str, object]] | None = None,
) -> Replicas:
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    canaries.add(master)
    spaces: list[Workspace] = []
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        root = tmp_path / f"replica{i}"
        root.mkdir()
        ws = Workspace(root)
        ws.configure(base_tables(root, llm))
        ws.configure(telegram_tables(telegram))
        ws.configure(
            {
                "core": {"database_url": pg_url},
                "telegram": {
                    "mode": "webhook",
                    "webhook_listen": "127.0.0.1",
                    "webhook_port": port,
                    "webhook_path": "telegram",
                    "webhook_public_url": "https://bot.example.org/telegram",
                },
            }
        )
        if extra:
            ws.configure(extra)
        ws.env[TELEGRAM_TOKEN_ENV] = telegram.token
        ws.env[WEBHOOK_SECRET_ENV] = secret
        ws.env["BYOKBOT_MASTER_KEY"] = master
        canaries.watch_workspace(ws)
        spaces.append(ws)
    return Replicas(spaces, ports)
