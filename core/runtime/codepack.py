"""Packs the code objects a reply runs next to each other, in the fork-server template.

Why: on CPython 3.11 every call *writes* to the called function's code object (the frame takes
a reference to it, and the specialising interpreter keeps counters inside its bytecode). In a
process forked from the template, that write copies the whole 4 KiB page the code object sits
on, and a code object loaded at import time sits wherever its module was unmarshalled, between
that module's strings, tuples and functions. A first reply runs ~870 functions spread over
httpx, httpcore, h11, anyio, asyncio and our own modules, so it used to copy ~370 pages
holding code objects. Copies made here, one after the other, fill ~90 pages (~380 KB of code)
instead; with the rehearsals that warm them (see ``worker.warm``) an agent's unique memory
after a reply drops by about 1.4 MiB (7.64 -> 6.26 MiB in ``bench/agent_memory.py``).

How: record which code objects run during ``run`` (``sys.setprofile``), copy each one
(``CodeType.replace()``: same bytecode, constants, names, line tables) in first-call order, and
point every function whose ``__code__`` is one of them at its copy. A nested function's code is
a constant of its enclosing code, so enclosing copies carry the nested copies in ``co_consts``
and functions created later use them too. Nothing else refers to a code object by identity on
the paths we run; the old objects simply become garbage.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable
from types import CodeType, FrameType, FunctionType


def pack_hot_code(run: Callable[[], object]) -> int:
    """Call ``run()``, then repoint the functions it ran at packed copies of their code.

    Returns the number of functions repointed. Exceptions from ``run`` propagate, with nothing
    repointed. Only the calling thread is profiled.
    """
    hot: dict[int, CodeType] = {}  # id -> code, in first-call order; holds them alive

    def profile(frame: FrameType, event: str, _arg: object) -> None:
        if event == "call":
            hot.setdefault(id(frame.f_code), frame.f_code)

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(previous)

    copies: dict[int, CodeType] = {}

    def copy(code: CodeType) -> CodeType:
        done = copies.get(id(code))
        if done is not None:
            return done
        consts = tuple(
            copy(c) if isinstance(c, CodeType) and id(c) in hot else c for c in code.co_consts
        )
        copies[id(code)] = done = code.replace(co_consts=consts)
        return done

    for code in list(hot.values()):
        copy(code)
    moved = 0
    for obj in gc.get_objects():
        if isinstance(obj, FunctionType):
            new = copies.get(id(obj.__code__))
            if new is not None:
                obj.__code__ = new
                moved += 1
    return moved
