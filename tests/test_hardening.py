"""core.hardening and Config.secret_env_names: the parts the bot-process system tests rely on."""

from __future__ import annotations

import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.discord.config import DiscordConfig
from adapters.slack.config import SlackConfig
from adapters.telegram.config import TelegramConfig
from core.config import PLATFORM_SECRET_ENV_DEFAULTS, parse_config
from core.hardening import secure_storage, sqlite_files


@pytest.mark.parametrize("settings", [TelegramConfig, DiscordConfig, SlackConfig])
def test_every_adapter_default_secret_variable_is_taken_out(settings: type) -> None:
    defaults = {
        f.default
        for f in dataclasses.fields(settings)
        if f.name.endswith("_env") and isinstance(f.default, str) and f.default
    }
    assert defaults, settings
    assert defaults <= set(PLATFORM_SECRET_ENV_DEFAULTS)


def test_secret_names_follow_the_configuration(tmp_path: Path) -> None:
    config = parse_config(
        {
            "core": {"master_key_env": "MY_MASTER"},
            "telegram": {"enabled": True, "token_env": "MY_TG", "webhook_secret_env": "MY_HOOK"},
            "proxy": {
                "upstreams": {
                    "up": {"kind": "anthropic", "base_url": "http://x", "key_env": "MY_UP"}
                },
                "models": {
                    name: {"upstream": "up", "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 1.0}
                    for name in ("claude-sonnet-4-5", "gpt-4.1-mini")
                },
            },
        },
        source="t.toml",
        base_dir=tmp_path,
    )
    names = config.secret_env_names()
    assert {"MY_MASTER", "MY_TG", "MY_HOOK", "MY_UP", "TELEGRAM_BOT_TOKEN"} <= names
    assert "PATH" not in names


SCRUB = """
import os, sys
from core.hardening import take_secrets, is_dumpable, protect_process
protect_process()
env = take_secrets(["CANARY_SECRET", "UNSET_ONE"])
assert env["CANARY_SECRET"] == "s3cr3t-value", env
assert "CANARY_SECRET" not in os.environ
assert not is_dumpable()
with open("/proc/self/environ", "rb") as f:
    block = f.read()
assert b"s3cr3t-value" not in block, block
assert b"KEEP_ME=visible" in block
import subprocess
child = subprocess.run(["/usr/bin/env"], capture_output=True, text=True).stdout
assert "CANARY_SECRET" not in child and "KEEP_ME=visible" in child, child
print("ok", oct(os.umask(0)))
"""


def test_take_secrets_clears_environ_and_the_kernel_copy() -> None:
    env = {**os.environ, "CANARY_SECRET": "s3cr3t-value", "KEEP_ME": "visible"}
    out = subprocess.run(
        [sys.executable, "-c", SCRUB], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok", "0o77"]


def test_secure_storage_tightens_ours_and_leaves_shared_dirs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    db = data / "x.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    fresh = tmp_path / "new"
    secure_storage(data_dirs=[data, shared, fresh], files=sqlite_files(db))
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777  # sticky: never ours alone
    assert stat.S_IMODE(fresh.stat().st_mode) & 0o077 == 0


def test_a_database_outside_the_config_folder_does_not_close_its_folder(tmp_path: Path) -> None:
    from core.hardening import secure_config_storage

    shared = tmp_path / "var-lib"
    shared.mkdir()
    shared.chmod(0o755)
    base = tmp_path / "etc"
    base.mkdir()
    config = parse_config(
        {"core": {"database_url": f"sqlite+aiosqlite:///{shared / 'bot.db'}"}},
        source="t.toml",
        base_dir=base,
    )
    secure_config_storage(config, key_from_file=True)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE((shared / "bot.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((base / "data").stat().st_mode) == 0o700
