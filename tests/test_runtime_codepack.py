"""Packing hot code in the template: functions that ran get equal copies; nothing else changes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import CodeType

import pytest

from core.runtime import worker
from core.runtime.codepack import pack_hot_code


def _adder(n: int) -> Callable[[int], int]:
    def add(x: int) -> int:
        return x + n

    return add


def _never_called() -> int:
    return 1


def _boom() -> None:
    raise ValueError("boom")


def test_the_functions_that_ran_get_equal_copies_of_their_code() -> None:
    outer_before = _adder.__code__
    unused_before = _never_called.__code__
    made: list[Callable[[int], int]] = []

    def run() -> None:
        made.append(_adder(1))
        assert made[0](2) == 3

    moved = pack_hot_code(run)

    # run itself, _adder and the closure it made (still alive in ``made``).
    assert moved == 3
    assert _adder.__code__ is not outer_before
    assert _adder.__code__.co_code == outer_before.co_code
    assert _never_called.__code__ is unused_before
    nested = [c for c in _adder.__code__.co_consts if isinstance(c, CodeType)]
    nested_before = [c for c in outer_before.co_consts if isinstance(c, CodeType)]
    assert nested[0] is not nested_before[0]  # the enclosing copy carries the inner copy
    assert nested[0].co_code == nested_before[0].co_code
    assert made[0].__code__ is nested[0]
    # Functions made after packing use the packed nested code and behave the same.
    later = _adder(10)
    assert later.__code__ is nested[0]
    assert later(5) == 15
    assert made[0](7) == 8


def test_a_failing_run_repoints_nothing_and_restores_the_profiler() -> None:
    before = _boom.__code__
    profiler = sys.getprofile()
    with pytest.raises(ValueError, match="boom"):
        pack_hot_code(_boom)
    assert _boom.__code__ is before
    assert sys.getprofile() is profiler


async def test_the_template_rehearsal_answers_every_request_through_a_worker() -> None:
    # warm() swallows a failing rehearsal (it is only an optimisation), so prove it works.
    assert await worker._rehearse(rounds=2) == 4
