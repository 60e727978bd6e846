"""The agent's own time per tool-loop step: parse the call, run the tool, feed the result back.

A reply with K tool steps makes K + 1 upstream calls. Both sides run in this process against a
loopback stub that answers instantly with canned streams (so the provider costs nothing):

- tool loop: ``run_loop`` (the worker's own loop) answers a request whose first K steps each
  call ``recall`` (a tool that does no I/O), emitting every protocol line it would send;
- baseline, same run: K + 1 plain streamed requests with the same client, no loop, no tools.

Overhead per step = (loop - baseline) / K, per reply; reported as p50/p99 over many replies,
for both provider APIs. Target (issue 14): p50 <= 2 ms. The network fetch inside a real tool
is the tool's own time, not the loop's, so it is left out on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import machine, median, pct, table

from core.llm import ChatMessage, make_client, new_http_client
from core.runtime import protocol
from core.runtime.tools import ToolContext, builtin
from core.runtime.tools.loop import offered, run_loop
from core.runtime.worker import _REHEARSAL, _REHEARSAL_TOOL
from core.secret import Secret

TOOLS = ("web_fetch", "remember", "recall", "forget")


async def stub(steps: int) -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            done = body.count(b'"tool_use_id"') + body.count(b'"tool_call_id"')
            tooled = b'"tools"' in body and done < steps
            writer.write(_REHEARSAL_TOOL if tooled else _REHEARSAL)
            await writer.drain()
            break
        writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", 0)


async def measure(kind: str, steps: int, replies: int) -> tuple[list[float], list[float]]:
    server = await stub(steps)
    port = server.sockets[0].getsockname()[1]
    base = f"http://127.0.0.1:{port}" + ("/v1" if kind == "openai-compatible" else "")
    loop_t: list[float] = []
    direct_t: list[float] = []
    lines: list[bytes] = []

    async def emit(msg: protocol.FromAgent) -> None:
        lines.append(protocol.encode(msg))  # what the worker writes to its pipe

    cfg = protocol.ToolConfig(max_steps=steps)
    tools = offered(TOOLS, builtin(), cfg)
    messages = (ChatMessage("user", "what do you remember about me? " * 20),)
    async with server, new_http_client(timeout=30) as http:
        client = make_client(kind, base, Secret("sk-bench"), http=http)
        for i in range(replies + 5):  # the first 5 warm up
            req = protocol.Request(f"r{i}", messages, "m", "", 64, TOOLS)
            ctx = ToolContext(cfg, http, [protocol.Note("n1", "likes tea")], emit, req.id)
            t0 = time.perf_counter()
            await run_loop(client, req, tools, ctx, emit, max_steps=steps)
            t1 = time.perf_counter()
            for _ in range(steps + 1):
                async for _item in client.stream(messages, model="m", system="", max_tokens=64):
                    pass
            t2 = time.perf_counter()
            lines.clear()
            if i >= 5:
                loop_t.append(t1 - t0)
                direct_t.append(t2 - t1)
    return loop_t, direct_t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer replies (CI)")
    parser.add_argument("--steps", type=int, default=3, help="tool steps per reply")
    args = parser.parse_args()
    replies = 30 if args.quick else 300
    print(f"machine: {machine()}")
    print(f"{replies} replies per API, {args.steps} tool steps each ({args.steps + 1} calls)")
    rows = []
    for kind in ("anthropic", "openai-compatible"):
        loop_t, direct_t = asyncio.run(measure(kind, args.steps, replies))
        per_step = [(a - b) / args.steps * 1000 for a, b in zip(loop_t, direct_t, strict=True)]
        rows.append(
            (
                kind,
                f"{median(direct_t) * 1000:.2f}",
                f"{median(loop_t) * 1000:.2f}",
                f"{median(loop_t) / median(direct_t):.3f}",
                f"{median(per_step):.3f}",
                f"{pct(per_step, 99):.3f}",
                "ok" if median(per_step) <= 2.0 else "MISSED",
            )
        )
    print(
        table(
            (
                "API",
                "baseline: K+1 plain calls p50 ms",
                "tool loop reply p50 ms",
                "ratio",
                "overhead/step p50 ms",
                "p99 ms",
                "target p50 <= 2 ms",
            ),
            rows,
        )
    )


if __name__ == "__main__":
    main()
