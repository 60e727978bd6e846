"""Configuration: defaults, precise errors, secrets only by environment variable name."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import Config, load_config, parse_config
from core.errors import ConfigError


def _parse(data: dict[str, object], tmp_path: Path) -> Config:
    return parse_config(data, source="config.toml", base_dir=tmp_path)


def test_defaults_run_on_sqlite_with_both_plans(tmp_path: Path) -> None:
    config = _parse({}, tmp_path)
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path}/data/byokbot.db"
    assert [(p.id, p.price_usd, p.byok) for p in config.plans.values()] == [
        ("byok", 15.0, True),
        ("managed", 39.0, False),
    ]
    assert list(config.providers) == ["anthropic", "openai", "moonshot"]
    assert not any(p.enabled for p in config.platforms.values())


def test_example_file_is_valid_and_documents_every_section() -> None:
    example = Path(__file__).parent.parent / "config.example.toml"
    config = load_config(example)
    assert config.core.intake_ttl_seconds == 600
    assert config.core.intake_sweep_interval_seconds == 30
    assert config.agent.idle_check_interval_seconds == 60
    text = example.read_text()
    for section in (
        "[core]",
        "[plans.byok]",
        "[plans.managed]",
        "[providers.anthropic]",
        "[agent]",
        "[telegram]",
        "[discord]",
        "[slack]",
    ):
        assert section in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"plans": {"managed": {"monthly_token_cap": -1}}},
            "config.toml: [plans.managed] monthly_token_cap must be a positive integer",
        ),
        (
            {"plans": {"managed": {"monthly_token_cap": "lots"}}},
            "config.toml: [plans.managed] monthly_token_cap must be an integer",
        ),
        (
            {"core": {"intake_ttl_seconds": 0}},
            "config.toml: [core] intake_ttl_seconds must be a positive integer",
        ),
        (
            {"core": {"intake_sweep_interval_seconds": 0}},
            "config.toml: [core] intake_sweep_interval_seconds must be a positive integer",
        ),
        (
            {"agent": {"idle_check_interval_seconds": "often"}},
            "config.toml: [agent] idle_check_interval_seconds must be an integer",
        ),
        (
            {"agent": {"idle_check_interval_seconds": -5}},
            "config.toml: [agent] idle_check_interval_seconds must be a positive integer",
        ),
        (
            {"core": {"admins": ["alice"]}},
            "config.toml: [core] admins entries must look like \"telegram:12345\" (got 'alice')",
        ),
        (
            {"core": {"database_url": "mysql://x"}},
            "config.toml: [core] database_url must start with sqlite+aiosqlite:// or postgresql+asyncpg://",
        ),
        ({"core": {"colour": "blue"}}, "config.toml: [core] colour is not a known setting"),
        ({"weather": {}}, "config.toml: [weather] is not a known section"),
        (
            {"providers": {"acme": {"kind": "openai-compatible"}}},
            "config.toml: [providers.acme] base_url is required for a provider byokbot does not know",
        ),
        (
            {"providers": {"openai": {"kind": "grpc"}}},
            "config.toml: [providers.openai] kind must be one of anthropic, openai-compatible (got 'grpc')",
        ),
        (
            {"providers": {"openai": {"base_url": "https://user:pw@api.example.com/v1"}}},
            "config.toml: [providers.openai] base_url must not carry credentials; name an environment variable",
        ),
        (
            {"plans": {"gold": {"byok": False, "models": []}}},
            "config.toml: [plans.gold] models must list at least one model for a managed plan",
        ),
        (
            {"agent": {"verify_keys_live": True}},
            "config.toml: [agent] verify_keys_live is not a known setting",
        ),
        ({"telegram": {"enabled": "yes"}}, "config.toml: [telegram] enabled must be true or false"),
    ],
)
def test_precise_errors(data: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        _parse(data, tmp_path)
    assert str(exc.value) == message


def test_file_selection_and_bad_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = tmp_path / "byok.toml"
    good.write_text('[core]\nintake_ttl_seconds = 120\nadmins = ["slack:U1"]\n')
    monkeypatch.setenv("BYOKBOT_CONFIG", str(good))
    config = load_config()
    assert config.core.intake_ttl_seconds == 120
    assert config.core.admins == ("slack:U1",)
    bad = tmp_path / "bad.toml"
    bad.write_text("[core\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML \(Expected"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load_config(tmp_path / "missing.toml")


def test_platform_sections_keep_their_own_options(tmp_path: Path) -> None:
    config = _parse({"telegram": {"enabled": True, "token_env": "TG", "mode": "webhook"}}, tmp_path)
    tg = config.platforms["telegram"]
    assert tg.enabled is True
    assert dict(tg.options) == {"token_env": "TG", "mode": "webhook"}


def test_managed_plans_are_offered_only_with_the_metering_proxy_on() -> None:
    off = parse_config({}, source="config.toml", base_dir=Path.cwd())
    assert [p.id for p in off.offered_plans] == ["byok"]
    on = parse_config({"proxy": {"enabled": True}}, source="config.toml", base_dir=Path.cwd())
    assert [p.id for p in on.offered_plans] == ["byok", "managed"]
