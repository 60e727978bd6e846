"""The bot process protects itself: not dumpable, no core files, secrets out of its environment.

An agent runs code a tenant controls, often as the bot's own uid. Without this, that code
reads ``/proc/<bot>/environ`` (bot tokens, webhook secrets, upstream keys, the master key when
given by variable) and ``/proc/<bot>/mem`` (every tenant's key), and a crash dump of the bot
holds all of it. So, as early as the command line allows:

- ``protect_process()``: ``PR_SET_DUMPABLE 0`` (``/proc/<pid>/mem``, ``environ``, ``fd`` ... and
  ptrace need ``CAP_SYS_PTRACE`` from then on; no core file is written) and ``RLIMIT_CORE 0``
  (also for the helper processes it starts), and umask 077 so every file it creates is private;
- ``take_secrets(names)``: copies the named variables out, removes them from ``os.environ``
  (so no later ``exec`` -- multiprocessing's resource tracker, the fork server, an agent
  command -- inherits them) and zeroes their values in the kernel's copy of the initial
  environment, which is what ``/proc/<pid>/environ`` shows even to root;
- ``secure_storage(...)``: the data directory 0700 and the database, its journal files and
  the lock file 0600, tightened (with a log line) when found looser.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import resource
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from core.errors import StartupError

if TYPE_CHECKING:
    from core.config import Config

log = logging.getLogger("byokbot.hardening")

PR_SET_DUMPABLE: Final = 4
PR_GET_DUMPABLE: Final = 3
PRIVATE_UMASK: Final = 0o077
SQLITE_SIDE_FILES: Final = ("-wal", "-shm", "-journal", ".lock")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_dumpable(flag: bool) -> None:
    """``prctl(PR_SET_DUMPABLE, flag)``; raises ``OSError`` if the kernel refuses."""
    if _libc().prctl(PR_SET_DUMPABLE, int(flag), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def is_dumpable() -> bool:
    return bool(_libc().prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))


def protect_process() -> None:
    """Non-dumpable, no core files, private umask (see the module docstring)."""
    set_dumpable(False)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(PRIVATE_UMASK | os.umask(PRIVATE_UMASK))  # keep stricter bits already set


def _environ_block() -> tuple[int, int] | None:
    """``env_start``/``env_end`` of this process (fields 50-51 of ``/proc/self/stat``)."""
    try:
        with open("/proc/self/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None  # not Linux: there is no kernel copy to scrub
    # The command name (field 2) may contain spaces; fields after it are split from ")".
    fields = data[data.rindex(b")") + 2 :].split()
    start, end = int(fields[47]), int(fields[48])
    return (start, end) if 0 < start < end else None


def scrub_initial_environment(names: Iterable[str]) -> int:
    """Zero the values of ``names`` in the initial environment block; how many were zeroed.

    ``unsetenv`` only drops the pointer from ``environ``; the original ``NAME=value`` strings
    stay where the kernel put them at exec, and ``/proc/<pid>/environ`` reads them from there.
    The names stay (``NAME=`` followed by zeros), so the layout of the block is unchanged.
    """
    block = _environ_block()
    wanted = {n.encode() + b"=" for n in names if n}
    if block is None or not wanted:
        return 0
    start, end = block
    data = ctypes.string_at(start, end - start)
    zeroed = 0
    offset = 0
    for entry in data.split(b"\0"):
        prefix = entry[: entry.find(b"=") + 1] if b"=" in entry else b""
        if prefix in wanted and len(entry) > len(prefix):
            ctypes.memset(start + offset + len(prefix), 0, len(entry) - len(prefix))
            zeroed += 1
        offset += len(entry) + 1
    return zeroed


def take_secrets(names: Iterable[str]) -> dict[str, str]:
    """The process environment, with ``names`` then removed from it everywhere they show.

    Returns a private copy of the whole environment (secrets included) for the code that
    reads them; ``os.environ`` and ``/proc/self/environ`` no longer hold them, and no process
    started later inherits them.
    """
    env = dict(os.environ)
    present = [n for n in names if n in os.environ]
    for name in present:
        del os.environ[name]  # unsetenv as well
    scrub_initial_environment(names)
    return env


# ----- files ---------------------------------------------------------------------------------


def _tighten(path: Path, mode: int, *, kind: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
        return  # not ours to change (a symlink's target, another user's file)
    current = stat.S_IMODE(info.st_mode)
    if current & ~mode:
        os.chmod(path, current & mode)
        log.warning(
            "%s %s was mode %04o, readable beyond this user; changed to %04o",
            kind,
            path,
            current,
            current & mode,
        )


def _own_directory(path: Path, protected: Iterable[Path]) -> bool:
    """Whether ``path`` is a directory byokbot may make private (never a shared one)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_mode & stat.S_ISVTX:
        return False  # /tmp and the like: sticky, shared by everyone
    resolved = path.resolve()
    return resolved != Path("/") and all(resolved != p.resolve() for p in protected)


def secure_storage(
    *, data_dirs: Iterable[Path], files: Iterable[Path], protected: Iterable[Path] = ()
) -> None:
    """Create ``data_dirs`` 0700 (tighten existing ones) and make ``files`` 0600 if present.

    ``protected`` names directories never touched even when listed (the configuration's own
    folder, the home directory): an operator who keeps the database beside the config file
    did not ask for that folder to change.
    """
    keep = [Path.home(), *protected]
    for directory in data_dirs:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _own_directory(directory, keep):
            _tighten(directory, 0o700, kind="data directory")
    for path in files:
        _tighten(path, 0o600, kind="file")


def sqlite_files(database: Path) -> list[Path]:
    """The database file and the files SQLite (and byokbot's lock) keep beside it."""
    return [database, *(database.with_name(database.name + s) for s in SQLITE_SIDE_FILES)]


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite+aiosqlite:///`` URL (None for another database or ``:memory:``)."""
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or ":memory:" in url:
        return None
    path = url[len(prefix) :].split("?", 1)[0]
    return Path(path) if path else None


def secure_config_storage(config: Config, *, key_from_file: bool) -> None:
    """``secure_storage`` for what ``config`` names: data dir, SQLite files, key file's dir.

    A missing SQLite file is created empty with mode 0600 here (SQLite takes an empty file as
    a new database), so it is private whatever the umask, and the ``-wal``/``-shm`` files
    SQLite creates beside it copy that mode.

    Raises:
        StartupError: a folder or file it names cannot be created (a file in the way, no
            permission, a read-only disk); the message names the path and the reason.
    """
    try:
        _secure_config_storage(config, key_from_file=key_from_file)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "a data folder"
        raise StartupError(
            f"cannot create {where}: {exc.strerror or exc} (check the database, data and "
            f"master key paths in {config.source}, and their folders' permissions)"
        ) from None


def _secure_config_storage(config: Config, *, key_from_file: bool) -> None:
    dirs = [config.resolve_path("data")]
    files: list[Path] = []
    database = sqlite_path(config.database_url)
    if database is not None:
        dirs.append(database.parent)
        files += sqlite_files(database)
    if key_from_file:
        dirs.append(config.resolve_path(config.core.master_key_file).parent)
    # Only folders under the configuration's own are made private: a database configured
    # as /var/lib/byokbot.db must not turn /var/lib 0700. Elsewhere a loose folder is named.
    base = config.base_dir.resolve()
    ours = [d for d in dirs if base in d.resolve().parents]
    for other in (d for d in dirs if d not in ours and d.exists()):
        if stat.S_IMODE(os.stat(other).st_mode) & 0o077:
            log.warning("data folder %s is open to other users; consider chmod 700", other)
    secure_storage(data_dirs=ours, files=files, protected=[config.base_dir])
    if database is not None and not database.exists():
        database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            return  # another byokbot created it first; its mode was set the same way
