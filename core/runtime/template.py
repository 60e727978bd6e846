"""Preloaded by the fork-server template: imports the worker and pays its one-time costs.

Every agent is forked from the process that imported this module, so the imports (httpx,
the LLM clients, the protocol) and the CA bundle are paid once, and the objects are shared
copy-on-write. ``gc.freeze()`` moves them out of the collector's reach, so a child's
collections do not touch (and so copy) the template's pages.
"""

from __future__ import annotations

import gc

from core.runtime import worker

worker.warm()
gc.freeze()
