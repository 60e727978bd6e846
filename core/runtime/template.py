"""Preloaded by the fork-server template: imports the worker and pays its one-time costs.

Every agent is forked from the process that imported this module, so the imports (httpx,
the LLM clients, the protocol) and the CA bundle are paid once, and the objects are shared
copy-on-write. ``gc.freeze()`` moves them out of the collector's reach, so a child's
collections do not touch (and so copy) the template's pages.

Agents never run the bot's ``__main__``: ``multiprocessing`` would re-execute the parent's main
script in *every* child (Python 3.11's fork server never imports it into the template, and a
console-script main has no ``__spec__``), which imports the whole bot per agent, ~200 ms and
tens of MiB each. The worker target is importable by name, so main fix-ups are switched off
here, in the template process only; the bot's own ``multiprocessing`` is untouched.

The template also hardens itself: it was started with the bot's environment (which may hold
platform tokens), so it clears that and turns non-dumpable, and every agent inherits both.

And it survives a bad connection to its socket: ``multiprocessing``'s loop dies on an empty
or malformed fork request (one empty connection used to kill it, and with it every future
agent start). Its fd receiver is wrapped so that any such request is dropped the way the loop
already drops an aborted connection (``ECONNABORTED``), after at most ``REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import errno
import gc
import os
import socket
from multiprocessing import forkserver, reduction, spawn
from typing import Final

import core.runtime
from core.runtime import sandbox, worker

# The package loads its modules on first use; a confined agent may not be able to read the code
# by then, so the template loads all of them, as an eager package did.
for _name in core.runtime.__all__:
    getattr(core.runtime, _name)

REQUEST_TIMEOUT: Final = 5.0
_recvfds = reduction.recvfds


def _guarded_recvfds(sock: socket.socket, size: int) -> list[int]:
    sock.settimeout(REQUEST_TIMEOUT)
    try:
        fds: list[int] = _recvfds(sock, size)
    except (OSError, EOFError, RuntimeError, ValueError):
        raise OSError(errno.ECONNABORTED, "malformed fork request") from None
    if not 2 <= len(fds) <= forkserver.MAXFDS_TO_SEND:
        for fd in fds:
            os.close(fd)
        raise OSError(errno.ECONNABORTED, "malformed fork request")
    return fds


reduction.recvfds = _guarded_recvfds


def _no_main_fixup(_: str) -> None:
    return None


# Private names of multiprocessing.spawn (stable since 3.4; typeshed omits them).
setattr(spawn, "_fixup_main_from_path", _no_main_fixup)  # noqa: B010
setattr(spawn, "_fixup_main_from_name", _no_main_fixup)  # noqa: B010

worker.warm()
sandbox.warm()  # the seccomp filter is built once, here; every agent only loads it
worker.scrub_environment()
worker.set_dumpable(False)
gc.freeze()
