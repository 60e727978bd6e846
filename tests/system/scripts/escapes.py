"""What a hostile agent tries (standard library only: it also runs under ``python3 -I -S``).

``handle(text)`` answers two requests: ``WHOAMI`` (the agent's pid and working directory, so
the test can aim one tenant's agent at another's) and ``ESCAPE {json targets}`` (each escape's
outcome: ``ok`` or the errno name that refused it). Contents are never returned: on a machine
where an escape works, the test must not leak what it read.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
from collections.abc import Callable
from typing import Any

PTRACE_SEIZE = 0x4206
PTRACE_DETACH = 17


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _raise() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def _ptrace(pid: int) -> None:
    libc = _libc()
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
        _raise()
    libc.ptrace(PTRACE_DETACH, pid, None, None)


def _vm_read(pid: int) -> None:
    buf = ctypes.create_string_buffer(8)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)  # same layout after fork: mapped
    libc = _libc()
    n = libc.process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if n < 0:
        _raise()


def _unix_connect(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)


def _tcp_connect(port: int) -> None:
    with socket.socket() as s:  # no name to resolve: the idna codec may be out of reach
        s.settimeout(5)
        s.connect(("127.0.0.1", port))


def _listen() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()


def _userns() -> None:
    if _libc().unshare(0x10000000) != 0:
        _raise()


def _write_own() -> None:
    with open("probe.txt", "w") as f:
        f.write("mine")


def _read(path: str) -> Callable[[], object]:
    def read() -> object:
        with open(path, "rb") as f:
            return f.read(16)

    return read


def attempt_all(t: dict[str, Any]) -> dict[str, str]:
    bot = int(t["bot"])
    tries: dict[str, Callable[[], object]] = {
        "master_key": _read(t["master_key"]),
        "database": _read(t["database"]),
        "bot_environ": _read(f"/proc/{bot}/environ"),
        "bot_mem": _read(f"/proc/{bot}/mem"),
        "bot_fd": lambda: os.listdir(f"/proc/{bot}/fd"),
        "other_workdir": lambda: os.listdir(t["other_workdir"]),
        "signal_bot": lambda: os.kill(bot, 0),
        "signal_agent": lambda: os.kill(int(t["other_agent"]), 0),
        "forkserver": lambda: _unix_connect(t["forkserver"]),
        "ptrace": lambda: _ptrace(bot),
        "process_vm_readv": lambda: _vm_read(bot),
        "listen": _listen,
        "connect_other_port": lambda: _tcp_connect(int(t["other_port"])),
        "connect_provider": lambda: _tcp_connect(int(t["provider_port"])),
        "write_own_dir": _write_own,
        "userns": _userns,
    }
    out: dict[str, str] = {}
    for name, attempt in tries.items():
        try:
            attempt()
            out[name] = "ok"
        except OSError as exc:
            out[name] = errno.errorcode.get(exc.errno or 0, f"errno {exc.errno}")
        except Exception as exc:
            out[name] = type(exc).__name__
    return out


def handle(text: str) -> str | None:
    if text.strip() == "WHOAMI":
        return f"WHOAMI pid={os.getpid()} cwd={os.getcwd()}"
    if text.startswith("ESCAPE "):
        return "ESCAPED " + json.dumps(attempt_all(json.loads(text[len("ESCAPE ") :])))
    return None
