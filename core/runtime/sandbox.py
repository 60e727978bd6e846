"""The agent sandbox: what confines every agent process before it receives its key.

Layers, applied in this order in the agent process itself (``confine``), each where the kernel
offers it:

1. **privileges**: the bot as root gives each agent its own uid/gid from ``[agent] uid_range``
   (stable per tenant), clears supplementary groups and drops every capability, the bounding
   set too; an unprivileged bot puts the agent in a new user namespace and drops the
   capabilities it gets there. Always ``PR_SET_NO_NEW_PRIVS``.
2. **landlock-fs**: read-only the interpreter, the installed packages, system libraries, CA
   certificates, the ``/etc`` files DNS and TLS read, ``/dev/urandom``; read-write its own work
   directory and ``/dev/null``. Nothing else (no data directory, master key, database, other
   tenants' directories, ``/proc``).
3. **landlock-scope** (Landlock ABI >= 6): no signal and no abstract unix socket outside the
   agent's own domain, so neither the bot, the fork-server template nor another agent.
4. **seccomp**: ptrace, process_vm_*, the mount family, bpf, perf_event_open, kexec, keyrings,
   modules, namespaces (unshare/setns/clone with namespace flags), personality, userfaultfd and
   ``socket(AF_UNIX)`` fail with EPERM. Through libseccomp (``pyseccomp``), not hand-written BPF.
5. **landlock-net** (ABI >= 4): TCP connect only to the computed port set; no TCP bind at all.
6. **rlimits**: address space, CPU seconds, processes (per uid, so per agent as root; counted
   per user namespace otherwise), open files; no core files.

Landlock is called through its three system calls with ``ctypes``: the Python bindings on PyPI
are pre-releases or months old, and none covers network rules and scoping (ABI 4-6) that this
needs; the kernel interface is three calls and four structs.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import importlib.util
import os
import platform
import resource
import site
import socket
import ssl
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from core.config import AgentSettings

Mode = Literal["strict", "best-effort", "off"]
MIB: Final = 1024 * 1024

# -- Landlock (include/uapi/linux/landlock.h) ----------------------------------------------
_SYS_CREATE_RULESET: Final = 444  # the same number on x86_64 and the generic (arm64) table
_SYS_ADD_RULE: Final = 445
_SYS_RESTRICT_SELF: Final = 446
_CREATE_RULESET_VERSION: Final = 1
_RULE_PATH_BENEATH: Final = 1
_RULE_NET_PORT: Final = 2

FS_EXECUTE: Final = 1 << 0
FS_WRITE_FILE: Final = 1 << 1
FS_READ_FILE: Final = 1 << 2
FS_READ_DIR: Final = 1 << 3
_FS_FILE_ONLY: Final = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | (1 << 14) | (1 << 15)
NET_BIND_TCP: Final = 1 << 0
NET_CONNECT_TCP: Final = 1 << 1
SCOPE_ABSTRACT_UNIX: Final = 1 << 0
SCOPE_SIGNAL: Final = 1 << 1


def _fs_rights(abi: int) -> int:
    """Every filesystem right the kernel's ABI knows (so every one is handled, i.e. denied)."""
    bits = (1 << 13) - 1  # ABI 1: execute .. make_sym
    if abi >= 2:
        bits |= 1 << 13  # refer
    if abi >= 3:
        bits |= 1 << 14  # truncate
    if abi >= 5:
        bits |= 1 << 15  # ioctl_dev
    return bits


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPort(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


# -- prctl / capabilities / namespaces -------------------------------------------------------
_PR_CAPBSET_DROP: Final = 24
_PR_SET_NO_NEW_PRIVS: Final = 38
_PR_GET_NO_NEW_PRIVS: Final = 39
_PR_CAP_AMBIENT: Final = 47
_PR_CAP_AMBIENT_CLEAR_ALL: Final = 4
_PR_SET_DUMPABLE: Final = 4
_SYS_CAPSET: Final = {"x86_64": 126, "aarch64": 91}
_CAP_VERSION_3: Final = 0x20080522
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000
_NAMESPACE_FLAGS: Final = (
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
)

# Denied with EPERM after set-up. Names libseccomp does not know on this architecture are
# skipped (and listed by ``seccomp_denied``), never silently.
DENIED_SYSCALLS: Final = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "kexec_load",
    "kexec_file_load",
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "unshare",
    "setns",
    "personality",
    "userfaultfd",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
)


class SandboxError(Exception):
    """A layer the policy requires could not be applied; ``layer`` names it."""

    def __init__(self, layer: str, reason: str) -> None:
        super().__init__(f"{layer}: {reason}")
        self.layer = layer
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int
    cpu_seconds: int
    processes: int
    open_files: int


@dataclass(frozen=True, slots=True)
class Spec:
    """Everything one agent's confinement needs; sent to it before its key (it is picklable)."""

    mode: Mode
    workdir: str
    uid: int | None  # a uid to switch to (the bot runs as root); None: a user namespace
    gid: int | None
    read_paths: tuple[str, ...]
    exec_paths: tuple[str, ...]
    connect_ports: tuple[int, ...]
    limits: Limits


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str, layer: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise SandboxError(layer, f"{what}: {os.strerror(err)}")
    return rc


@functools.cache
def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 without Landlock (or not Linux)."""
    if sys.platform != "linux":
        return 0
    rc = _libc().syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return max(int(rc), 0)


@functools.cache
def _seccomp_module() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):  # RuntimeError: libseccomp.so not found
        return None
    return pyseccomp


def seccomp_available() -> bool:
    return _seccomp_module() is not None


# -- the policy: what an agent may read, run and connect to -----------------------------------

_ETC_FILES: Final = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/gai.conf",
    "/etc/host.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/usr/share/ca-certificates",
)
_SYSTEM_LIBS: Final = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib")
_SYSTEM_EXEC: Final = ("/bin", "/usr/bin", "/usr/local/bin", *_SYSTEM_LIBS)


_WORKER_PACKAGES: Final = ("httpx", "httpcore", "anyio", "h11", "certifi", "idna", "sniffio")


def _packages() -> list[str]:
    """The interpreter's prefixes, site-packages and this program's own package directories."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
    paths += site.getsitepackages()
    here = Path(__file__).resolve().parents[1]  # core/: an editable install lives elsewhere
    paths.append(str(here))
    # The directories the worker's own dependencies were installed in (site-packages, or
    # wherever PYTHONPATH put them), for a module imported lazily after confinement.
    for name in _WORKER_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            paths.append(str(Path(spec.origin).resolve().parents[1]))
    verify = ssl.get_default_verify_paths()
    paths += [p for p in (verify.cafile, verify.capath) if p]
    return paths


def builtin_read_paths() -> tuple[str, ...]:
    """Read-only paths for the built-in (forked) agent."""
    return _existing([*_packages(), *_SYSTEM_LIBS, *_ETC_FILES, "/dev/urandom", "/dev/random"])


def command_paths(command: Sequence[str], extra: Iterable[str]) -> tuple[str, ...]:
    """Read-and-execute paths for an external agent: system dirs, its program, ``read_paths``."""
    program = command[0] if command else ""
    found = program if os.sep in program else (_which(program) or "")
    own = [str(Path(found).resolve().parent)] if found else []
    return _existing([*_SYSTEM_EXEC, *_packages(), *own, *extra])


def _which(program: str) -> str | None:
    import shutil

    return shutil.which(program, path=os.defpath)


def _existing(paths: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for p in paths:
        if p and os.path.exists(p):
            seen.setdefault(os.path.realpath(p), None)
            seen.setdefault(os.path.abspath(p), None)  # a symlink's own path is walked too
    return tuple(seen)


def connect_ports(base_url: str, extra: Iterable[int]) -> tuple[int, ...]:
    """The provider's (or proxy's) port from ``base_url`` plus ``extra``, sorted."""
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return tuple(sorted({port, *extra}))


def tenant_uid(tenant_id: str, uid_range: tuple[int, int]) -> int:
    """A stable uid for ``tenant_id`` from ``uid_range`` (inclusive); gid is the same number."""
    lo, hi = uid_range
    digest = int.from_bytes(hashlib.sha256(tenant_id.encode()).digest()[:8], "big")
    return lo + digest % (hi - lo + 1)


# -- the report: which layers this machine and policy give ------------------------------------

LAYERS: Final = ("privileges", "no-new-privs", "landlock-fs", "landlock-net", "scope", "seccomp")


@dataclass(frozen=True, slots=True)
class Report:
    mode: Mode
    in_force: tuple[str, ...]
    missing: dict[str, str]

    @property
    def refused(self) -> bool:
        """Whether strict mode must refuse to start agents."""
        return self.mode == "strict" and bool(self.missing)

    def line(self) -> str:
        if self.mode == "off":
            return "agent sandbox: off (agents run unconfined, as the bot's own user)"
        missing = ", ".join(f"{k} ({v})" for k, v in self.missing.items()) or "none"
        verdict = "; agents will not start" if self.refused else ""
        return (
            f"agent sandbox: {self.mode}; in force: {', '.join(self.in_force) or 'none'}; "
            f"missing: {missing}{verdict}"
        )


@functools.cache
def _userns_works() -> bool:
    """Whether this (unprivileged) process may create a user namespace: tried in a child."""
    unshare = _libc().unshare  # resolved before the fork: the bot may have threads
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only calls unshare and exits
        os._exit(0 if unshare(CLONE_NEWUSER) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def probe(mode: Mode, uid_range: tuple[int, int] | None, limits: Limits) -> Report:
    """What ``confine`` would apply here, without applying it."""
    missing: dict[str, str] = {}
    if mode == "off" or sys.platform != "linux":
        return Report(mode, (), {} if mode == "off" else {"all": "not Linux"})
    on: list[str] = []
    if os.geteuid() == 0:
        if uid_range is None:
            missing["privileges"] = "the bot runs as root and [agent] uid_range is empty"
        else:
            on.append(f"privileges (uid {uid_range[0]}-{uid_range[1]}, no capabilities)")
    elif _userns_works():
        on.append("privileges (user namespace, no capabilities)")
    else:
        missing["privileges"] = "user namespaces are not permitted"
    on.append("no-new-privs")
    abi = landlock_abi()
    if abi >= 1:
        on.append(f"landlock-fs (abi {abi})")
    else:
        missing["landlock-fs"] = "Landlock is not enabled in this kernel"
    if abi >= 4:
        on.append("landlock-net")
    else:
        missing["landlock-net"] = f"needs Landlock ABI 4, have {abi}"
    if abi >= 6:
        on.append("scope (signals, abstract sockets)")
    else:
        missing["scope"] = f"needs Landlock ABI 6, have {abi}"
    if seccomp_available():
        on.append("seccomp")
    else:
        missing["seccomp"] = "libseccomp (pyseccomp) is not available"
    on.append(
        f"rlimits ({limits.memory_mb} MiB, {limits.cpu_seconds} s CPU, "
        f"{limits.processes} processes, {limits.open_files} files)"
    )
    return Report(mode, tuple(on), missing)


# -- confine: applied by the agent process to itself ------------------------------------------


def confine(spec: Spec) -> tuple[str, ...]:
    """Apply ``spec`` to this process (single-threaded, before any secret); the layers applied.

    Raises ``SandboxError`` when a layer fails and the mode is strict (best-effort skips it).
    """
    applied: list[str] = []
    strict = spec.mode == "strict"
    if seccomp_available():
        seccomp_program()  # loading libseccomp runs ldconfig: not possible once confined

    def layer(name: str, fn: object) -> None:
        try:
            fn()  # type: ignore[operator]
        except SandboxError:
            if strict:
                raise
            return
        except OSError as exc:
            if strict:
                raise SandboxError(name, exc.strerror or str(exc)) from None
            return
        applied.append(name)

    _check(_libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable", "privileges")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec.mode == "off":
        close_template_handles()
        _workdir(spec.workdir, None, None)
        return ()
    _workdir(spec.workdir, spec.uid, spec.gid)
    layer("privileges", functools.partial(_drop_privileges, spec.uid, spec.gid))
    _check(_libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs", "no-new-privs")
    applied.append("no-new-privs")
    _rlimits(spec.limits)
    applied.append("rlimits")
    abi = landlock_abi()
    if abi < 1 and strict:
        raise SandboxError("landlock-fs", "Landlock is not enabled in this kernel")
    if abi >= 1:
        layer("landlock", functools.partial(_landlock, spec, abi))
    if "landlock" in applied:
        applied.remove("landlock")
        applied += ["landlock-fs"] + (["landlock-net"] if abi >= 4 else [])
        applied += ["scope"] if abi >= 6 else []
    if strict and abi < 6:
        raise SandboxError("scope", f"needs Landlock ABI 6, have {abi}")
    layer("seccomp", _seccomp)
    return tuple(applied)


def _workdir(path: str, uid: int | None, gid: int | None) -> None:
    """Create the work dir 0700, owned by the agent's uid, and enter it (before any drop)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if uid is not None and gid is not None:
        st = os.stat(path)
        if (st.st_uid, st.st_gid) != (uid, gid):
            for root, dirs, files in os.walk(path):  # a tenant's uid changed with uid_range
                for name in [*dirs, *files]:
                    os.lchown(os.path.join(root, name), uid, gid)
            os.chown(path, uid, gid)
    os.chmod(path, 0o700)
    os.chdir(path)


@functools.cache
def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


# Set in the fork-server template (``warm``) once it has emptied its own bounding set, which
# every agent inherits: ~40 prctl calls, 0.3 ms of each cold start, paid once instead.
_bounding_set_empty = False


def _drop_bounding_set() -> None:
    libc = _libc()
    for cap in range(_last_cap() + 1):
        _check(libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), "capability bounding set", "privileges")


def _drop_capabilities() -> None:
    if not _bounding_set_empty:
        _drop_bounding_set()
    _libc().prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


@functools.cache
def _capset_number() -> int | None:
    return _SYS_CAPSET.get(platform.machine())


def _capset_zero() -> None:
    number = _capset_number()
    if number is None:
        raise SandboxError("privileges", f"capset: unknown architecture {platform.machine()}")
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable}, all zero
    _check(_libc().syscall(number, header, data), "capset", "privileges")


def _drop_privileges(uid: int | None, gid: int | None) -> None:
    if uid is not None and gid is not None:
        _drop_capabilities()  # needs CAP_SETPCAP: before the uid change
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # The kernel cleared the permitted and effective sets with the uid change (no
        # KEEPCAPS); inheritable ones are inert with no ambient set and no_new_privs. An explicit
        # capset here cost ~0.3 ms per agent.
        return
    else:
        outer_uid, outer_gid = os.getuid(), os.getgid()
        _check(_libc().unshare(CLONE_NEWUSER), "unshare(CLONE_NEWUSER)", "privileges")
        # A non-dumpable process's /proc/self files belong to root: writable only while
        # dumpable. Nothing secret is in this process yet (the key comes after confine).
        _check(_libc().prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable", "privileges")
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{outer_uid} {outer_uid} 1"),
            ("gid_map", f"{outer_gid} {outer_gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        _check(_libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable", "privileges")
        _drop_capabilities()
    _capset_zero()


def _rlimits(limits: Limits) -> None:
    for which, value in (
        (resource.RLIMIT_AS, limits.memory_mb * MIB),
        (resource.RLIMIT_CPU, limits.cpu_seconds),
        (resource.RLIMIT_NPROC, limits.processes),
        (resource.RLIMIT_NOFILE, limits.open_files),
    ):
        _soft, hard = resource.getrlimit(which)
        new = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(which, (new, new))


def _landlock(spec: Spec, abi: int) -> None:
    libc = _libc()
    fs_all = _fs_rights(abi)
    attr = _RulesetAttr(fs_all, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0, 0)
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX | SCOPE_SIGNAL
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = _check(
        libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
        "landlock-fs",
    )
    try:
        read = FS_READ_FILE | FS_READ_DIR
        rules = [(p, read) for p in spec.read_paths]
        rules += [(p, read | FS_EXECUTE) for p in spec.exec_paths]
        rules += [(".", fs_all), ("/dev/null", FS_READ_FILE | FS_WRITE_FILE)]
        for path, access in rules:
            _path_rule(ruleset, path, access & fs_all)
        if abi >= 4:
            for port in spec.connect_ports:
                rule = _NetPort(NET_CONNECT_TCP, port)
                _check(
                    libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, ctypes.byref(rule), 0),
                    f"landlock_add_rule(port {port})",
                    "landlock-net",
                )
        _check(libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self", "landlock")
    finally:
        os.close(ruleset)
        close_template_handles()  # the template's handles are not the agent's to keep


# The built-in agent's read-only paths, opened (O_PATH) once in the template: an agent only
# adds them to its ruleset instead of resolving each again.
_opened: dict[str, tuple[int, bool]] = {}


def _open_read_paths() -> None:
    for path in builtin_read_paths():
        try:
            _opened[path] = (os.open(path, os.O_PATH | os.O_CLOEXEC), os.path.isdir(path))
        except OSError:
            continue


def close_template_handles() -> None:
    """Close the template's pre-opened path handles (an agent calls it once confined)."""
    for fd, _ in _opened.values():
        os.close(fd)
    _opened.clear()


def _path_rule(ruleset: int, path: str, access: int) -> None:
    known = _opened.get(path)
    if known is not None:
        fd, is_dir = known
    else:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # gone since the policy was computed (or, as an agent uid, not reachable)
        is_dir = os.path.isdir(path)
    try:
        if not is_dir:
            access &= _FS_FILE_ONLY
        rule = _PathBeneath(access, fd)
        _check(
            _libc().syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0),
            f"landlock_add_rule({path})",
            "landlock-fs",
        )
    finally:
        if known is None:
            os.close(fd)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_PR_SET_SECCOMP: Final = 22
_SECCOMP_MODE_FILTER: Final = 2


@functools.cache
def seccomp_program() -> bytes:
    """The filter as classic BPF, built once by libseccomp (in the template, before any fork).

    Each agent then only loads these bytes: building the filter per agent cost ~1 ms.
    """
    sc = _seccomp_module()
    if sc is None:
        raise SandboxError("seccomp", "libseccomp (pyseccomp) is not available")
    flt = sc.SyscallFilter(defaction=sc.ALLOW)
    deny = sc.ERRNO(errno.EPERM)
    for name in seccomp_denied():
        flt.add_rule(deny, name)
    # No unix socket can be opened: the fork server's, the database's or any daemon's.
    flt.add_rule(deny, "socket", sc.Arg(0, sc.EQ, socket.AF_UNIX))
    for flag in _NAMESPACE_FLAGS:
        flt.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc use clone.
    flt.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    fd = os.memfd_create("seccomp-bpf")
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            flt.export_bpf(f)
            f.seek(0)
            return f.read()
    finally:
        os.close(fd)


# The filter's buffer and sock_fprog, built in the template (``warm``): made in the agent,
# these ctypes objects cost 0.36 ms of its cold start, the prctl itself 0.2 ms.
_fprog: tuple[ctypes.Array[ctypes.c_char], _SockFprog] | None = None


def _seccomp_fprog() -> _SockFprog:
    global _fprog
    if _fprog is None:
        program = seccomp_program()
        buf = ctypes.create_string_buffer(program, len(program))
        _fprog = (buf, _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p)))
    return _fprog[1]


def _seccomp() -> None:
    prog = _seccomp_fprog()
    rc = _libc().prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0)
    _check(rc, "seccomp filter", "seccomp")


@functools.cache
def seccomp_denied() -> tuple[str, ...]:
    """The names of ``DENIED_SYSCALLS`` this architecture has (libseccomp resolves them)."""
    sc = _seccomp_module()
    if sc is None:
        return ()
    known = []
    for name in DENIED_SYSCALLS:
        # Negative: not a system call on this architecture (e.g. iopl on arm64).
        if sc.resolve_syscall(sc.Arch.NATIVE, name) >= 0:
            known.append(name)
    return tuple(known)


def warm() -> None:
    """Pay the per-machine costs once (in the fork-server template): every agent inherits them.

    As root the template also empties its capability bounding set: it never execs, and an
    agent needs only the effective capabilities (to chown its work dir and switch uid).
    """
    global _bounding_set_empty
    landlock_abi()
    _last_cap()
    _capset_number()
    if seccomp_available():
        _seccomp_fprog()
    if landlock_abi() >= 1:
        _open_read_paths()
    # ctypes builds a foreign function and a structure's machinery on first use: here, once.
    libc = _libc()
    for name in ("prctl", "syscall", "unshare"):
        getattr(libc, name)
    for struct in (_RulesetAttr(0, 0, 0), _PathBeneath(0, 0), _NetPort(0, 0)):
        ctypes.byref(struct)
    if os.geteuid() == 0 and not _bounding_set_empty:
        try:
            _drop_bounding_set()
        except SandboxError:
            return  # no CAP_SETPCAP after all: each agent drops its own (and says if it cannot)
        _bounding_set_empty = True


def limits_for(settings: AgentSettings) -> Limits:
    s = settings
    return Limits(s.memory_limit_mb, s.cpu_seconds, s.max_processes, s.max_open_files)


def report_for(settings: AgentSettings) -> Report:
    """``probe`` for the ``[agent]`` table."""
    mode: Mode = settings.sandbox  # type: ignore[assignment]  # the config checked it
    return probe(mode, settings.uid_range, limits_for(settings))


def spec_for(
    settings: AgentSettings,
    report: Report,
    tenant_id: str,
    base_url: str,
    workdir: Path,
    tool_ports: Iterable[int] = (),
) -> Spec:
    """The confinement of ``tenant_id``'s agent talking to ``base_url`` from ``workdir``.

    ``tool_ports`` are the TCP ports its offered tools need (web_fetch: 80 and 443).
    """
    s = settings
    as_root = os.geteuid() == 0 and report.mode != "off"
    uid = tenant_uid(tenant_id, s.uid_range) if as_root and s.uid_range else None
    read: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    if s.command:
        run = command_paths(s.command, s.read_paths)
    else:
        read = builtin_read_paths()
    return Spec(
        mode=report.mode,
        workdir=str(workdir),
        uid=uid,
        gid=uid,
        read_paths=read,
        exec_paths=run,
        connect_ports=connect_ports(base_url, (*s.extra_connect_ports, *tool_ports)),
        limits=limits_for(settings),
    )
