"""The agent sandbox's policy pieces: config, ports, uids, the report, strict refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.config import AgentSettings, ConfigError, _parse_agent
from core.runtime import sandbox
from core.runtime.errors import ReplyFailed
from tests.fakes.agents import rig


def test_agent_table_reads_the_sandbox_keys() -> None:
    got = _parse_agent(
        "c.toml",
        {
            "sandbox": "best-effort",
            "uid_range": [5000, 5999],
            "extra_connect_ports": [80, 443],
            "read_paths": ["/opt/agent"],
            "cpu_seconds": 60,
            "max_processes": 8,
        },
    )
    assert (got.sandbox, got.uid_range, got.extra_connect_ports) == (
        "best-effort",
        (5000, 5999),
        (80, 443),
    )
    assert (got.read_paths, got.cpu_seconds, got.max_processes) == (("/opt/agent",), 60, 8)
    assert _parse_agent("c.toml", {"uid_range": []}).uid_range is None
    assert AgentSettings().sandbox == "strict"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sandbox", "paranoid", "sandbox"),
        ("uid_range", [10, 5], "uid_range must be two uids"),
        ("uid_range", [0, 5], "uid_range must be two uids"),
        ("extra_connect_ports", [0], "extra_connect_ports must be a list of TCP ports"),
        ("extra_connect_ports", ["80"], "extra_connect_ports must be a list of TCP ports"),
    ],
)
def test_bad_sandbox_settings_are_refused(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse_agent("c.toml", {key: value})


def test_connect_ports_come_from_the_url_plus_extras() -> None:
    assert sandbox.connect_ports("https://api.anthropic.com", [80]) == (80, 443)
    assert sandbox.connect_ports("http://127.0.0.1:8787/v1", []) == (8787,)
    assert sandbox.connect_ports("http://proxy", [80]) == (80,)


def test_tenant_uids_are_stable_and_in_range() -> None:
    uids = {sandbox.tenant_uid(f"t{i}", (5000, 5099)) for i in range(200)}
    assert min(uids) >= 5000 and max(uids) <= 5099 and len(uids) > 50
    assert sandbox.tenant_uid("t1", (5000, 5099)) == sandbox.tenant_uid("t1", (5000, 5099))


def test_report_line_names_what_is_missing() -> None:
    report = sandbox.Report("strict", ("no-new-privs",), {"seccomp": "no libseccomp"})
    assert report.refused
    assert report.line() == (
        "agent sandbox: strict; in force: no-new-privs; missing: seccomp (no libseccomp); "
        "agents will not start"
    )
    assert not sandbox.Report("best-effort", (), {"seccomp": "x"}).refused
    assert "off" in sandbox.Report("off", (), {}).line()


async def test_strict_refuses_to_start_an_agent_when_a_layer_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "seccomp_available", lambda: False)
    async with rig(tmp_path, settings=AgentSettings()) as r:
        r.tenant("t1", "sk-ant-test-key")
        with pytest.raises(ReplyFailed) as refused:
            await r.say("t1", "hi")
        assert refused.value.reason == "sandbox"
        assert r.sup.status() == []
