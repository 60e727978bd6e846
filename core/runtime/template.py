"""Preloaded by the fork-server template: imports the worker and pays its one-time costs.

Every agent is forked from the process that imported this module, so the imports (httpx,
the LLM clients, the protocol) and the CA bundle are paid once, and the objects are shared
copy-on-write. ``gc.freeze()`` moves them out of the collector's reach, so a child's
collections do not touch (and so copy) the template's pages.

The template also hardens itself: it was started with the bot's environment (which may hold
platform tokens), so it clears that and turns non-dumpable, and every agent inherits both.
"""

from __future__ import annotations

import gc

from core.runtime import worker

worker.warm()
worker.scrub_environment()
worker.set_dumpable(False)
gc.freeze()
