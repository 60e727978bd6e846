"""``byokbot sandbox check``'s self-test: a confined child tries to escape; every try must fail.

The child is forked from the (still single-threaded) CLI, confines itself with the same
``Spec`` an agent gets, tries each escape and reports the outcome over a pipe. An escape
"succeeded" when the call returned; it is refused when it raised the errno the layer gives.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.runtime import sandbox

_PTRACE_ATTACH = 16


def _attempts(secret: str, parent: int) -> dict[str, Callable[[], object]]:
    libc = ctypes.CDLL(None, use_errno=True)

    def ptrace() -> object:
        if libc.ptrace(_PTRACE_ATTACH, parent, None, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return True

    def listen() -> object:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen()
        return True

    def unix() -> object:
        with socket.socket(socket.AF_UNIX) as s:
            return s.fileno()

    def namespace() -> object:
        if libc.unshare(sandbox.CLONE_NEWUSER) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return True

    return {
        "read a file outside its directory": lambda: Path(secret).read_bytes(),
        "read the bot's environment": lambda: Path(f"/proc/{parent}/environ").read_bytes(),
        "list the bot's open files": lambda: os.listdir(f"/proc/{parent}/fd"),
        "signal the bot": lambda: os.kill(parent, 0),
        "ptrace the bot": ptrace,
        "open a unix socket": unix,
        "listen on a TCP port": listen,
        "create a namespace": namespace,
    }


def run(spec_for: Callable[[str], sandbox.Spec]) -> tuple[list[str], list[str]]:
    """(refused, escaped): each attempt's description with the errno that refused it."""
    with tempfile.TemporaryDirectory(prefix="byokbot-sandbox-check-") as tmp:
        os.chmod(tmp, 0o711)  # noqa: S103 - the agent uid must reach its own dir below
        secret = os.path.join(tmp, "secret")
        Path(secret).write_text("not for agents")
        spec = spec_for(os.path.join(tmp, "agent"))
        parent = os.getpid()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports over the pipe and exits
            os.close(r)
            outcome: dict[str, str] = {}
            try:
                sandbox.confine(spec)
                for name, attempt in _attempts(secret, parent).items():
                    try:
                        attempt()
                        outcome[name] = "escaped"
                    except OSError as exc:
                        outcome[name] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            except sandbox.SandboxError as exc:
                outcome = {"confine": f"failed: {exc}"}
            os.write(w, json.dumps(outcome).encode())
            os._exit(0)
        os.close(w)
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        os.waitpid(pid, 0)
    if not data:
        return [], ["the self-test child died"]
    outcome = json.loads(data)
    refused = [f"{k}: {v}" for k, v in outcome.items() if v != "escaped" and k != "confine"]
    escaped = [f"{k}: {v}" for k, v in outcome.items() if v == "escaped" or k == "confine"]
    return refused, escaped


__all__ = ["run"]
