"""A tiny external agent speaking the byokbot line protocol with the standard library only.

It answers every request by streaming the last user message back reversed, word by word, and
reports usage. ``BEHAVIOUR`` in the ``system`` prompt changes that: ``crash`` exits mid-reply,
``fail`` answers with a rate-limit error, ``garbage`` writes a line that is not JSON, ``slow``
waits for a ``cancel`` (answering ``done`` when it comes). Single-threaded and sequential, as
the simplest external agent would be (requests arrive one at a time per conversation anyway).
"""

import json
import os
import sys


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    configure = json.loads(sys.stdin.readline())
    assert configure["type"] == "configure"
    key = configure["api_key"]
    os.chdir(configure["workdir"])
    send({"type": "ready", "version": 1, "pid": os.getpid()})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["type"] != "request":
            continue
        rid, system = msg["id"], msg["system"]
        last = msg["messages"][-1]["content"]
        if system == "crash":
            send({"type": "chunk", "id": rid, "text": "partial "})
            os._exit(3)
        if system == "fail":
            send(
                {
                    "type": "error",
                    "id": rid,
                    "code": "rate_limited",
                    "message": "slow down",
                    "retry_after": 5,
                }
            )
            continue
        if system == "garbage":
            sys.stdout.write("this is not json\n")
            sys.stdout.flush()
            continue
        if system == "slow":
            send({"type": "chunk", "id": rid, "text": "thinking "})
            cancel = json.loads(sys.stdin.readline())
            send({"type": "done", "id": cancel["id"]})
            continue
        words = last.split()[::-1]
        for i, word in enumerate(words):
            send({"type": "chunk", "id": rid, "text": word + (" " if i < len(words) - 1 else "")})
        # Proves the key arrived over the pipe: its length, never the key itself.
        send({"type": "usage", "id": rid, "input": len(key), "output": len(words)})
        send({"type": "done", "id": rid})


if __name__ == "__main__":
    main()
