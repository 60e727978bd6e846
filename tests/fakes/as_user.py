"""Run the built-in worker (or just sleep) as an unprivileged uid, for the isolation tests.

The interpreter lives under /root (mode 0700), so it cannot be exec'd as ``nobody``: this
script starts as root, imports everything the worker needs, hands its working directory to the
uid, drops privileges, and makes itself dumpable again (changing uid clears that flag, and the
test must prove it is the worker's own hardening that closes /proc, not the uid change).

Usage: ``as_user.py UID worker`` (serve the protocol on stdin/stdout) or ``as_user.py UID sleep``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import encodings.idna  # noqa: F401 - loaded before the uid can no longer read /root

from core.runtime import worker

worker.warm()


def main() -> None:
    uid, what = int(sys.argv[1]), sys.argv[2]
    if what == "worker":
        for path in (".", "agent.log"):
            if os.path.exists(path):
                os.chown(path, uid, uid)
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    worker.set_dumpable(True)
    if what == "worker":
        worker.main()
    else:
        print("ready", flush=True)
        time.sleep(60)


if __name__ == "__main__":
    main()
