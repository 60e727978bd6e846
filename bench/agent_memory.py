"""Memory per agent (USS/PSS via psutil) and how many live agents fit, from a run of N agents.

Starts N tenants' agents through the real supervisor against the loopback fake provider,
measures each worker's unique (USS) and proportional (PSS) memory when idle after a reply and
while actively streaming (several conversations held mid-reply), and extrapolates how many
live agents fit in 24 GiB. Baseline in the same run: a fresh interpreter that imported the
worker (what an agent would cost without the template). Targets (PERFORMANCE.md): idle USS
<= 5 MiB, active <= 30 MiB, >= 500 live agents on 24 GiB.

The "as shipped" row runs a second supervisor with the default reply-timed recycle and
measures its agents once that delay has passed since their reply (no idle job).

Tools are enabled as in production (web_fetch and the note tools offered with every request).
Two extra rows show what using them costs: idle after a reply that ran a tool step (recall),
and idle after a web_fetch, which loads trafilatura (lazily, so only agents that fetched pay).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from multiprocessing import forkserver
from pathlib import Path

import psutil
from _common import ROOT, machine, median, pct, table

from core.config import AgentSettings
from core.runtime import protocol, sandbox
from core.runtime.launch import ForkserverLauncher
from core.runtime.ports import (
    AgentProfile,
    InMemoryKeyHealth,
    InMemoryMemory,
    InMemoryNotes,
    InMemoryProfiles,
    InMemoryUsage,
)
from core.runtime.supervisor import AgentSupervisor
from core.secret import Secret
from tests.fakes.llm_server import FakeCall, FakeLLMServer, ToolStep, tool_rounds
from tests.fakes.web_site import FakeWebSite

TOOLS = ("web_fetch", "remember", "recall", "forget")

MIB = 1024 * 1024
BUDGET_GIB = 24


def mem(pid: int) -> tuple[float, float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.uss / MIB, info.pss / MIB, info.rss / MIB


def baseline() -> tuple[float, float, float]:
    code = "import core.runtime.template, sys; print('x', flush=True); sys.stdin.readline()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdin is not None
    proc.stdout.readline()
    try:
        return mem(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait()


async def run(
    n: int, active_n: int, workdir: Path, mode: str
) -> dict[str, list[tuple[float, float, float]]]:
    out: dict[str, list[tuple[float, float, float]]] = {}
    parent = psutil.Process()
    async with FakeLLMServer() as fake, FakeWebSite() as site:

        def script(kind: str, messages: list[dict[str, object]]) -> ToolStep | None:
            said = str(messages[-1].get("content"))
            if tool_rounds(messages):  # type: ignore[arg-type]
                return None
            if said.startswith("recall"):
                return ToolStep([FakeCall("recall", {})])
            if said.startswith("fetch"):
                return ToolStep([FakeCall("web_fetch", {"url": f"{site.url}/page"})])
            return None

        fake.tool_script = script  # type: ignore[assignment]
        profiles = InMemoryProfiles()
        launcher = ForkserverLauncher()
        await launcher.warm()
        # The rows up to "recycled" measure agents before the reply-timed recycle (5 s by
        # default) replaces them; the "recycled" row then drives it explicitly.
        settings = AgentSettings(
            max_live_agents=n + 10, sandbox=mode, recycle_after_idle_seconds=120
        )
        report = sandbox.report_for(settings)
        sup = AgentSupervisor(
            profiles,
            InMemoryMemory(),
            InMemoryUsage(),
            InMemoryKeyHealth(),
            settings,
            runtime_dir=workdir / "rt",
            launcher=launcher,
            tools=protocol.ToolConfig(allow_networks=(f"{site.host}/32",)),
            notes=InMemoryNotes(),
        )
        # Fresh: started and configured (hardened, client built), no message yet.
        fresh = []
        for i in range(min(n, 10)):
            wd = workdir / f"fresh{i}"
            spec = sandbox.spec_for(settings, report, f"f{i}", fake.anthropic_url, wd)
            handle = await launcher.launch(wd, None if mode == "off" else spec)
            handle.writer.write(
                protocol.encode(
                    protocol.Configure(
                        "anthropic",
                        fake.anthropic_url,
                        Secret("sk-f"),
                        str(workdir / f"fresh{i}"),
                        30.0,
                        512,
                        256,
                    )
                )
            )
            await handle.writer.drain()
            assert isinstance(protocol.decode(await handle.reader.readline()), protocol.Ready)
            fresh.append(handle)
        out["fresh"] = [mem(h.pid) for h in fresh]
        for h in fresh:
            h.writer.close()
            await h.wait()
        rss_before = parent.memory_info().rss
        for i in range(n):
            tid = f"t{i}"
            profiles.set(
                AgentProfile(
                    tid,
                    "anthropic",
                    fake.anthropic_url,
                    Secret(f"sk-{i}"),
                    "k",
                    "m",
                    "be brief",
                    200,
                    8000,
                    tools=TOOLS,
                )
            )
            async for _ in sup.reply(tid, "c", "hello " * 50):
                pass
        out["parent"] = [((parent.memory_info().rss - rss_before) / MIB / n, 0.0, 0.0)]
        pids = {s.tenant_id: s.pid for s in sup.status()}
        out["idle"] = [mem(pid) for pid in pids.values()]
        # Active: hold 4 conversations mid-stream in each of the first active_n agents.
        fake.gate = asyncio.Event()
        streams = []
        for i in range(active_n):
            for c in range(4):
                stream = sup.reply(f"t{i}", f"c{c}", "tell me more " * 200)
                await anext(stream)
                streams.append(stream)
        out["active"] = [mem(pids[f"t{i}"]) for i in range(active_n)]
        fake.gate.set()
        for stream in streams:
            async for _ in stream:
                pass
        tooled = [f"t{i}" for i in range(min(n, 10))]
        for tid in tooled:
            async for _ in sup.reply(tid, "tools", "recall what you know"):
                pass
        out["tool"] = [mem(pids[t]) for t in tooled]
        fetched = tooled[:3]
        for tid in fetched:
            async for _ in sup.reply(tid, "fetch", "fetch the page"):
                pass
        out["fetch"] = [mem(pids[t]) for t in fetched]
        # What an idle agent settles at: the idle job recycles one idle for
        # recycle_after_idle_seconds after a reply into a fresh fork (same key, same tenant).
        later = time.monotonic() + settings.recycle_after_idle_seconds + 1
        while _recyclable(sup, pids):
            await sup.stop_idle(now=later)  # up to RECYCLE_PER_TICK a tick
        fresh_pids = {s.tenant_id: s.pid for s in sup.status() if s.pid not in pids.values()}
        out["recycled"] = [mem(pid) for pid in fresh_pids.values()]
        template_pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        out["template"] = [mem(template_pid)] if template_pid else []
        out["live"] = [(float(len(sup.status())), 0.0, 0.0)]
        await sup.aclose()
        # As shipped: the default recycle delay, timed from each reply (no idle job runs).
        # Agents measured once that delay has passed since their reply.
        shipped = AgentSettings(max_live_agents=n + 10, sandbox=mode)
        sup = AgentSupervisor(
            profiles,
            InMemoryMemory(),
            InMemoryUsage(),
            InMemoryKeyHealth(),
            shipped,
            runtime_dir=workdir / "rt-shipped",
            launcher=ForkserverLauncher(),
            tools=protocol.ToolConfig(allow_networks=(f"{site.host}/32",)),
            notes=InMemoryNotes(),
        )
        used = {}
        for tid in tooled:
            async for _ in sup.reply(tid, "c", "hello " * 50):
                pass
            used[tid] = next(s.pid for s in sup.status() if s.tenant_id == tid)
        await asyncio.sleep(shipped.recycle_after_idle_seconds + 1.5)
        settled = [s.pid for s in sup.status() if not s.draining]
        out["settled"] = [mem(pid) for pid in settled if pid not in used.values()]
        out["settled_n"] = [(float(len(out["settled"])), float(len(used)), 0.0)]
        await sup.aclose()
    return out


def _recyclable(sup: AgentSupervisor, pids: dict[str, int]) -> bool:
    """Whether an agent that answered in this run is still the live one of its tenant."""
    live = {s.tenant_id: s.pid for s in sup.status() if not s.draining}
    return any(live.get(t) == pid for t, pid in pids.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 agents instead of 100 (CI)")
    parser.add_argument("--agents", type=int, default=None)
    args = parser.parse_args()
    n = args.agents or (20 if args.quick else 100)
    active_n = min(n, 5 if args.quick else 20)
    print(f"machine: {machine()}")
    base = baseline()
    with tempfile.TemporaryDirectory() as tmp:
        off = asyncio.run(run(n, active_n, Path(tmp) / "off", "off"))
        res = asyncio.run(run(n, active_n, Path(tmp) / "on", "strict"))
    print(f"sandbox: {sandbox.report_for(AgentSettings()).line()}")
    for key, what in (("fresh", "idle, before any message"), ("idle", "idle after one reply")):
        on_uss = median([x[0] for x in res[key]])
        off_uss = median([x[0] for x in off[key]])
        print(
            f"USS p50 {what}: sandbox off {off_uss:.2f} MiB, on {on_uss:.2f} MiB, "
            f"added {on_uss - off_uss:+.2f} MiB (target <= 0.5)"
        )
    rows = [
        (
            "fresh interpreter importing the worker [baseline]",
            1,
            f"{base[0]:.2f}",
            "",
            f"{base[1]:.2f}",
            f"{base[2]:.1f}",
            "1.000",
        )
    ]
    for name, key in (
        ("agent idle, configured, before any message", "fresh"),
        ("agent idle after one reply (tools offered)", "idle"),
        ("agent idle after a reply with a tool step (recall)", "tool"),
        ("agent idle after a web_fetch (trafilatura loaded)", "fetch"),
        ("agent idle after replies, recycled (the idle job)", "recycled"),
        ("agent idle 5 s after one reply, as shipped (reply-timed recycle)", "settled"),
        ("agent active (4 streams mid-reply)", "active"),
        ("template (fork server), once", "template"),
    ):
        xs = res[key]
        uss = [x[0] for x in xs]
        rows.append(
            (
                name,
                len(xs),
                f"{median(uss):.2f}",
                f"{pct(uss, 99):.2f}",
                f"{median([x[1] for x in xs]):.2f}",
                f"{median([x[2] for x in xs]):.1f}",
                f"{median(uss) / base[0]:.3f}",
            )
        )
    print(
        table(
            (
                "what",
                "n",
                "USS p50 MiB",
                "USS p99 MiB",
                "PSS p50 MiB",
                "RSS p50 MiB",
                "USS / baseline",
            ),
            rows,
        )
    )
    idle_uss = median([x[0] for x in res["idle"]])
    idle_pss = median([x[1] for x in res["idle"]])
    act_uss = median([x[0] for x in res["active"]])
    per_parent = res["parent"][0][0]
    live = int(res["live"][0][0])
    fit_uss = int(BUDGET_GIB * 1024 / (idle_uss + per_parent))
    fit_pss = int(BUDGET_GIB * 1024 / (idle_pss + per_parent))
    print(
        f"live agents held in this run: {live}; supervisor-side growth per agent: "
        f"{per_parent:.3f} MiB"
    )
    print(
        f"extrapolated live idle agents in {BUDGET_GIB} GiB: {fit_uss} (by USS), "
        f"{fit_pss} (by PSS)  [target >= 500]"
    )
    fresh_uss = median([x[0] for x in res["fresh"]])
    recycled_uss = median([x[0] for x in res["recycled"]])
    settled_uss = median([x[0] for x in res["settled"]])
    settled_n, used_n = (int(x) for x in res["settled_n"][0][:2])
    print(
        f"targets: idle USS <= 5 MiB -> {fresh_uss:.2f} before any message "
        f"({'ok' if fresh_uss <= 5 else 'MISSED'}), {idle_uss:.2f} right after replying "
        f"({'ok' if idle_uss <= 5 else 'MISSED'}), {recycled_uss:.2f} once recycled "
        f"({'ok' if recycled_uss <= 5 else 'MISSED'}), {settled_uss:.2f} 5 s after a reply as "
        f"shipped ({'ok' if settled_uss <= 5 else 'MISSED'}; {settled_n} of {used_n} recycled), "
        f"{median([x[0] for x in res['tool']]):.2f} after a tool step; "
        f"active USS <= 30 MiB -> {act_uss:.2f} ({'ok' if act_uss <= 30 else 'MISSED'})"
    )


if __name__ == "__main__":
    main()
