"""Start the agent template before the first message needs it, at a time chosen by the caller.

The template is a fresh interpreter importing the worker (about a second of CPU). ``byokbot
run`` starts it once it is serving (on a new install: at the first sign-up), so it loads while
the first message is awaited, and that message's agent forks from a ready template instead of
waiting for it (it used to start at the first message). Not earlier: on a machine with no idle
core, loading it beside the bot's own start made the bot serve later. Only the standard library
is imported here; the caller pays a few milliseconds (two ``spawn`` calls: the template and
``multiprocessing``'s resource tracker). ``ForkserverLauncher`` then finds it running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sqlite3
from multiprocessing import forkserver
from pathlib import Path
from typing import Final

TEMPLATE_MODULES: Final = ["core.runtime.template"]

log = logging.getLogger(__name__)


def configure_template() -> None:
    """Make the fork server preload the worker (what every start of an agent forks from)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(TEMPLATE_MODULES)


def start_template() -> None:
    """Start the template now, without waiting for it to load (its first fork waits).

    Call it only once secrets have left the environment: the template is exec'd with it.
    Calling it again while it runs costs a ``waitpid``.
    """
    configure_template()
    try:
        forkserver.ensure_running()
    except OSError as exc:  # out of processes or memory: the first agent's start tries again
        log.warning("agent template could not be started early (%s)", exc)


def agents_may_be_asked(database_url: str) -> bool:
    """False only for a SQLite database that holds no tenant yet (a new install).

    No agent can be asked for before someone signs up, so a new install starts the template at
    the first sign-up instead (``App.on_first_tenant``), and a start that ends before anyone
    does pays nothing for it. Anything else (PostgreSQL, an unreadable file) says True.
    """
    prefix = "sqlite+aiosqlite:///"
    if not database_url.startswith(prefix):
        return True
    if ":memory:" in database_url:
        return False  # a new database at every start
    path = Path(database_url[len(prefix) :].split("?", 1)[0])
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=1)) as conn:
            return conn.execute("SELECT 1 FROM tenants LIMIT 1").fetchone() is not None
    except sqlite3.OperationalError as exc:
        return "no such table" not in str(exc)  # not migrated yet: new; else (locked) unknown
    except sqlite3.Error:
        return True


def stop_template() -> None:
    """Stop the template as the bot exits, even one still loading.

    A template stops by itself once the bot is gone, but only after it has loaded: a bot that
    failed to start (or was stopped at once) would leave it running for a second more.
    Every agent has been stopped before this is called.
    """
    # multiprocessing keeps the pid on its private ForkServer object (stable since 3.4).
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if not isinstance(pid, int):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
