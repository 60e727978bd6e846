"""Start the agent template early, before the bot's own heavy imports and its database work.

The template is a fresh interpreter importing the worker (about a second of CPU); started
here, it loads on another core while the bot starts, and the first agent forks from a ready
template instead of waiting for it. Only the standard library is imported, so the caller pays
a few milliseconds (two ``spawn`` calls: the template and ``multiprocessing``'s resource
tracker). ``ForkserverLauncher`` then finds the template running and uses it.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing import forkserver
from typing import Final

TEMPLATE_MODULES: Final = ["core.runtime.template"]


def configure_template() -> None:
    """Make the fork server preload the worker (what every start of an agent forks from)."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(TEMPLATE_MODULES)


def start_template() -> None:
    """Start the template now, without waiting for it to load (its first fork waits).

    Call it only once secrets have left the environment: the template is exec'd with it.
    """
    configure_template()
    forkserver.ensure_running()
