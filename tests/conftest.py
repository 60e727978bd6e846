"""Shared fixtures: databases (SQLite always, PostgreSQL when .ci/run provides one), the app."""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from core.config import Config, parse_config

PG_ENV = "BYOKBOT_TEST_PG_URL"

for _var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
    os.environ.pop(_var, None)


def _pg_admin_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database of each kind (PostgreSQL: a new database per test)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'byokbot.db'}"
        return
    admin = _pg_admin_url()
    if admin is None:
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


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'byokbot.db'}"


@pytest.fixture
def master_key_env() -> Iterator[dict[str, str]]:
    return {"BYOKBOT_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}


MANAGED_TRIAL: dict[str, object] = {"plans": {"managed": {"trial_days": 30}}}


def make_config(
    url: str,
    tmp_path: Path,
    *,
    proxy: dict[str, object] | None = None,
    billing: dict[str, object] | None = MANAGED_TRIAL,
    **core: object,
) -> Config:
    """A config rooted in tmp_path, with an admin on every platform for admin tests.

    ``proxy`` is the ``[proxy]`` table; a managed plan is offered only with it enabled.
    ``billing`` is the ``[billing]`` table: by default a 30-day managed trial, so tests written
    before billing (a managed plan was free then) sign up for it as they did.
    """
    data: dict[str, object] = {
        "core": {
            "database_url": url,
            "master_key_file": str(tmp_path / "master.key"),
            "admins": ["telegram:900", "console:local"],
            "verify_keys_live": False,
            **core,
        }
    }
    if proxy is not None:
        data["proxy"] = proxy
    if billing is not None:
        data["billing"] = billing
    return parse_config(data, source="test.toml", base_dir=tmp_path)


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proxy_on() -> tuple[dict[str, object], dict[str, str]]:
    """``[proxy]`` enabled on a free port, and the platform keys it reads from the environment."""
    from tests.canaries import anthropic_key, openai_key

    env = {"BYOKBOT_PROXY_ANTHROPIC_KEY": anthropic_key(), "BYOKBOT_PROXY_OPENAI_KEY": openai_key()}
    return {"enabled": True, "port": free_port()}, env


@pytest.fixture(autouse=True)
def _restore_process_state() -> Iterator[None]:
    """A test that hardens its own process (``protect_process``: umask 077, not dumpable) must
    not leave the worker so for the next tests, whose files a bot of another user could then
    not read. (Its RLIMIT_CORE 0 cannot be undone: such tests patch it out.)"""
    from core.hardening import is_dumpable, set_dumpable

    umask, dumpable = os.umask(0o022), is_dumpable()
    os.umask(umask)
    yield
    os.umask(umask)
    if dumpable != is_dumpable():
        set_dumpable(dumpable)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``configure_logging`` (called by the CLI) changes process-wide state; undo it per test."""
    import logging
    import sys
    import threading
    import warnings

    root = logging.getLogger()
    saved = (
        list(root.handlers),
        root.level,
        sys.excepthook,
        threading.excepthook,
        warnings.showwarning,
    )
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    sys.excepthook, threading.excepthook, warnings.showwarning = saved[2], saved[3], saved[4]
    logging.captureWarnings(False)
