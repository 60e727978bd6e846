"""Which of an agent's pages its first reply makes unique, and what wrote them (diagnosis).

Not a benchmark with a target: the tool behind the figures in bench/agent_memory.py's
"idle after one reply" row. Needs root (page frame numbers in /proc/<pid>/pagemap and
/proc/kpagecount). One agent is forked from the template and configured; its resident pages
are read before and after one reply (tools offered), and every page that became unique is
sorted by mapping and by whether it is a copy of a template page. Each copied page is
compared word by word with the template's; then a sibling forked from the same template (so
with the same addresses) names the objects at the words that differ. A copied page with no
differing word was written and restored: reference counts taken and dropped again.

    sudo .venv/bin/python bench/agent_pages.py [--sandbox strict|off]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import gc
import json
import struct
import sys
import tempfile
from multiprocessing import forkserver
from pathlib import Path

from _common import machine

from core.config import AgentSettings
from core.llm import ChatMessage
from core.runtime import protocol, sandbox
from core.runtime.launch import ForkserverLauncher
from core.secret import Secret
from tests.fakes.llm_server import FakeLLMServer

PAGE = 4096
TOOLS = ("web_fetch", "remember", "recall", "forget")


def resident(pid: int) -> dict[int, tuple[int, int, str]]:
    """Resident pages: address -> (frame number, how many map it, mapping name)."""
    out: dict[int, tuple[int, int, str]] = {}
    with (
        open(f"/proc/{pid}/maps") as maps,
        open(f"/proc/{pid}/pagemap", "rb") as pm,
        open("/proc/kpagecount", "rb") as kc,
    ):
        for line in maps:
            parts = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in parts[0].split("-"))
            name = parts[5].strip() if len(parts) > 5 else "[anon]"
            if name == "[vsyscall]":
                continue
            pm.seek(start // PAGE * 8)
            entries = pm.read((end - start) // PAGE * 8)
            for i, (entry,) in enumerate(struct.iter_unpack("Q", entries)):
                if entry >> 63:
                    pfn = entry & ((1 << 55) - 1)
                    kc.seek(pfn * 8)
                    (count,) = struct.unpack("Q", kc.read(8))
                    out[start + i * PAGE] = (pfn, count, name)
    return out


def differing_words(template_pid: int, pid: int, pages: list[int]) -> tuple[list[int], int]:
    """Addresses of the 8-byte words that differ from the template's, and how many pages
    have none."""
    words: list[int] = []
    restored = 0
    with open(f"/proc/{template_pid}/mem", "rb") as tm, open(f"/proc/{pid}/mem", "rb") as am:
        for a in pages:
            tm.seek(a)
            am.seek(a)
            ours, theirs = tm.read(PAGE), am.read(PAGE)
            diff = [a + o for o in range(0, PAGE, 8) if ours[o : o + 8] != theirs[o : o + 8]]
            words += diff
            restored += not diff
    return words, restored


def name_words(path: str) -> None:
    """Fork-server target: name the object at each differing word listed in ``path``."""
    data = json.loads(Path(path).read_text())
    gc.unfreeze()
    seen: dict[int, object] = {}
    stack = [*gc.get_objects(), *sys.modules.values()]
    while stack:
        obj = stack.pop()
        if id(obj) not in seen:
            seen[id(obj)] = obj
            stack.extend(gc.get_referents(obj))
    spans = []
    for addr, obj in seen.items():
        head = 16 if type(obj).__flags__ & (1 << 14) else 0  # the collector's header
        spans.append((addr - head, addr + sys.getsizeof(obj), addr, type(obj).__name__))
    spans.sort()
    starts = [s[0] for s in spans]
    pages: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for word in data["words"]:
        k = bisect.bisect_right(starts, word) - 1
        if k >= 0 and word < spans[k][1]:
            _, _, addr, kind = spans[k]
            if kind == "code":
                what = "code object (bytecode counters)"
            else:
                what = kind + (" refcount" if word == addr else " other field")
        else:
            what = "no object (allocator data, free block)"
        pages[word // PAGE][what] += 1
    combos = collections.Counter(" + ".join(sorted(c)) for c in pages.values())
    Path(path).write_text(json.dumps(combos.most_common(12)))


async def run(mode: str) -> None:
    tmp = Path(tempfile.mkdtemp())
    async with FakeLLMServer() as fake:
        launcher = ForkserverLauncher()
        await launcher.warm()
        settings = AgentSettings(sandbox=mode)
        spec = sandbox.spec_for(
            settings, sandbox.report_for(settings), "t0", fake.anthropic_url, tmp / "a"
        )
        agent = await launcher.launch(tmp / "a", None if mode == "off" else spec)
        cfg = protocol.Configure(
            "anthropic", fake.anthropic_url, Secret("sk-x"), str(tmp / "a"), 30.0, 512, 256
        )
        agent.writer.write(protocol.encode(cfg))
        await agent.writer.drain()
        assert isinstance(protocol.decode(await agent.reader.readline()), protocol.Ready)
        before = resident(agent.pid)
        messages = (ChatMessage("user", "hello " * 50),)
        agent.writer.write(
            protocol.encode(protocol.Request("r1", messages, "m", "be brief", 200, TOOLS))
        )
        await agent.writer.drain()
        while not isinstance(
            protocol.decode(await agent.reader.readline()), protocol.Done | protocol.Error
        ):
            pass
        after = resident(agent.pid)
        template_pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
        template = resident(template_pid)
        new = [
            a
            for a, (pfn, count, _) in after.items()
            if count == 1 and not (a in before and before[a][:2] == (pfn, 1))
        ]
        unique = sum(1 for v in after.values() if v[1] == 1)
        print(f"unique after configure {sum(1 for v in before.values() if v[1] == 1) / 256:.2f}")
        print(f"unique after one reply {unique / 256:.2f} MiB, +{len(new) / 256:.2f} MiB:")
        by = collections.Counter((after[a][2], a in template) for a in new)
        for (name, copied), pages in by.most_common(8):
            print(f"  {pages * 4:6d} KiB {'copied' if copied else 'new   '} {name}")
        words, restored = differing_words(
            template_pid, agent.pid, [a for a in new if a in template]
        )
        print(f"copied pages identical to the template's (written and restored): {restored}")
        path = tmp / "words.json"
        path.write_text(json.dumps({"words": words}))
        agent.writer.close()
        await agent.wait()
        # By module name, not __main__: the template does not re-run a parent's main script.
        from agent_pages import name_words as target

        sibling = launcher._ctx.Process(target=target, args=(str(path),), daemon=True)
        pool = launcher._pool  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, sibling.start)
        await loop.run_in_executor(pool, sibling.join)
        print("copied pages that differ, by what differs on them:")
        for what, pages in json.loads(path.read_text()):
            print(f"  {pages:5d} pages: {what}")
        launcher.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandbox", default="off", choices=("off", "strict"))
    # The CI runs every bench/ script with --quick so none rots; the diagnosis is one agent
    # either way.
    parser.add_argument("--quick", action="store_true", help="accepted; the same single run")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    asyncio.run(run(args.sandbox))


if __name__ == "__main__":
    main()
