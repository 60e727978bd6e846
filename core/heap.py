"""Giving freed heap memory back to the kernel (glibc's ``malloc_trim``; elsewhere a no-op).

After a burst, the buffers of finished requests sit in malloc's free lists: free to reuse but
still resident. A process that goes quiet trims them, so its RSS tracks what it holds.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


def release() -> None:
    """Return every malloc arena's free pages to the kernel (a few ms on a busy heap)."""
    trim = _trim()
    if trim is not None:
        trim(0)
