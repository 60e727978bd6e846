"""An ``[agent] command`` that floods: asked to, it streams 64 MiB (``chunks``) or one 4 MiB
line (``line``); any other message gets ``echo: <text>``. It speaks the agent line protocol
on stdin/stdout (docs/agent-protocol.md)."""

from __future__ import annotations

import json
import os
import sys

MODE = sys.argv[1] if len(sys.argv) > 1 else "chunks"
out = sys.stdout.buffer


def send(obj: dict[str, object]) -> None:
    out.write(json.dumps(obj).encode() + b"\n")
    out.flush()


for raw in sys.stdin.buffer:
    msg = json.loads(raw)
    if msg["type"] == "configure":
        send({"type": "ready", "pid": os.getpid(), "version": 1})
    elif msg["type"] == "request":
        rid = msg["id"]
        text = msg["messages"][-1]["content"]
        if "flood" in text:
            if MODE == "line":
                send({"type": "chunk", "id": rid, "text": "y" * (4 << 20)})
            else:
                piece = "x" * 16384
                for _ in range((64 << 20) // len(piece)):
                    send({"type": "chunk", "id": rid, "text": piece})
        else:
            send({"type": "chunk", "id": rid, "text": f"echo: {text}"})
        send({"type": "done", "id": rid})
