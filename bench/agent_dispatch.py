"""What the agent layer adds to a reply: supervisor + pipe + worker, against a direct call.

For each message: time from ``AgentSupervisor.reply()`` to the fake provider receiving the
request ("dispatch"), and to the first chunk back in the caller ("first chunk"). Baseline in
the same run: the same streamed request made directly from this process with the same client
code (no supervisor, no agent process). Run at concurrency 1 and with many chats at once
spread over several tenants. The router's own share of PERFORMANCE.md's "event in -> request
to the agent out" budget is the lead's to measure; this is the part below it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from _common import machine, median, pct, table

from core.config import AgentSettings
from core.llm import ChatMessage, make_client, new_http_client
from core.runtime.launch import ForkserverLauncher
from core.runtime.ports import (
    AgentProfile,
    InMemoryKeyHealth,
    InMemoryMemory,
    InMemoryProfiles,
    InMemoryUsage,
)
from core.runtime.supervisor import AgentSupervisor
from core.secret import Secret
from tests.fakes.llm_server import FakeLLMServer


class Stamps:
    """Records when the fake received each request, keyed by the message text."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def reply(self, messages: list[dict[str, object]]) -> str:
        text = str(messages[-1]["content"])
        self.at[text] = time.perf_counter()
        return "ok " + text


async def direct(
    fake: FakeLLMServer, stamps: Stamps, n: int, conc: int
) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    async with new_http_client(timeout=30) as http:
        client = make_client("anthropic", fake.anthropic_url, Secret("sk-direct"), http=http)

        async def one(i: int) -> None:
            text = f"direct {conc} {i}"
            t = time.perf_counter()
            async for _ in client.stream(
                [ChatMessage("user", text)], model="m", system="", max_tokens=9
            ):
                out.append((stamps.at[text] - t, time.perf_counter() - t))
                break

        await _run(one, n, conc)
    return out


async def via_agents(
    sup: AgentSupervisor, stamps: Stamps, tenants: int, n: int, conc: int
) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []

    async def one(i: int) -> None:
        text = f"agent {conc} {i}"
        t = time.perf_counter()
        async for _ in sup.reply(f"t{i % tenants}", f"c{i % conc}", text):
            out.append((stamps.at[text] - t, time.perf_counter() - t))
            break

    await _run(one, n, conc)
    return out


async def _run(one, n: int, conc: int) -> None:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(conc)

    async def guarded(i: int) -> None:
        async with sem:
            await one(i)

    await asyncio.gather(*(guarded(i) for i in range(n)))


async def main_async(quick: bool) -> list[tuple[str, list[tuple[float, float]]]]:
    # Concurrency stays within one httpx pool (100 connections) so the direct baseline is not
    # just queueing for connections. The fake provider runs in this process: both sides
    # share the machine's cores with it.
    n1, nc, conc, tenants = (100, 400, 50, 10) if quick else (300, 2000, 100, 20)
    stamps = Stamps()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        async with FakeLLMServer(reply=stamps.reply) as fake:
            profiles = InMemoryProfiles()
            for t in range(tenants):
                profiles.set(
                    AgentProfile(
                        f"t{t}",
                        "anthropic",
                        fake.anthropic_url,
                        Secret(f"sk-{t}"),
                        "k",
                        "m",
                        "",
                        9,
                        100000,
                    )
                )
            launcher = ForkserverLauncher()
            await launcher.warm()
            sup = AgentSupervisor(
                profiles,
                InMemoryMemory(),
                InMemoryUsage(),
                InMemoryKeyHealth(),
                AgentSettings(),
                runtime_dir=Path(tmp),
                launcher=launcher,
            )
            await via_agents(sup, stamps, tenants, tenants * 2, 1)  # start every agent first
            await direct(fake, stamps, 20, 1)
            results.append(
                ("direct client, 1 at a time [baseline]", await direct(fake, stamps, n1, 1))
            )
            results.append(
                ("via agent process, 1 at a time", await via_agents(sup, stamps, tenants, n1, 1))
            )
            results.append(
                (f"direct client, {conc} at once [baseline]", await direct(fake, stamps, nc, conc))
            )
            results.append(
                (
                    f"via agents, {conc} chats at once / {tenants} tenants",
                    await via_agents(sup, stamps, tenants, nc, conc),
                )
            )
            await sup.aclose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer messages (CI)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    results = asyncio.run(main_async(args.quick))
    rows = []
    for i, (name, xs) in enumerate(results):
        base = results[i - i % 2][1]
        d = [x[0] for x in xs]
        f = [x[1] for x in xs]
        rows.append(
            (
                name,
                len(xs),
                f"{median(d) * 1e3:.3f}",
                f"{pct(d, 99) * 1e3:.3f}",
                f"{median(f) * 1e3:.3f}",
                f"{pct(f, 99) * 1e3:.3f}",
                f"{median(f) / median([x[1] for x in base]):.2f}",
            )
        )
    print(
        table(
            (
                "what",
                "n",
                "dispatch p50 ms",
                "dispatch p99 ms",
                "first chunk p50 ms",
                "first chunk p99 ms",
                "first chunk / baseline",
            ),
            rows,
        )
    )
    for i in (1, 3):
        name, xs = results[i]
        base = results[i - 1][1]
        extra = median([x[0] for x in xs]) - median([x[0] for x in base])
        print(f"agent layer adds {extra * 1e3:.3f} ms p50 to dispatch ({name})")


if __name__ == "__main__":
    main()
