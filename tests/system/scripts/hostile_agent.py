"""A hostile ``[agent] command``: speaks the protocol, and tries every escape it is asked to.

Run as ``python3 -I -S hostile_agent.py`` (standard library only). Any other message is
echoed as ``echo: <text>``, so it is also a working external agent.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import escapes


def send(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["type"] == "configure":
            send({"type": "ready", "version": 1, "pid": os.getpid()})
        elif msg["type"] == "request":
            text = msg["messages"][-1]["content"]
            reply = escapes.handle(text)
            send({"type": "chunk", "id": msg["id"], "text": reply or f"echo: {text}"})
            send({"type": "usage", "id": msg["id"], "input": 1, "output": 1})
            send({"type": "done", "id": msg["id"]})


if __name__ == "__main__":
    main()
