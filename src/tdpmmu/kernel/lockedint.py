"""A plain ``int`` that a lock protects, changed with C's ``++x`` and ``--x`` (e.g.
``sp->root_count`` under mmu_lock before v5.13, when TDP MMU roots got a refcount_t).

Each is one scheduling point, so that traces show the count move; that is exact only
because the caller holds the lock that every other access of the field also holds (the
kernel's helpers assert it): no thread can run between the load and the store. Unlike
refcount_t nothing checks the value: going below zero, or up from zero, is C arithmetic.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, primitive, world
from tdpmmu.kernel.memory import Struct


@primitive
def pre_inc(obj: Struct, field: str) -> Generator[Op, int, int]:
    """``++obj->field``: the new value."""
    yield Op("++", f"{obj!r}->{field}")
    old: int = getattr(obj, field)
    setattr(obj, field, old + 1)
    world().note(f"{old} -> {old + 1}")
    return old + 1


@primitive
def pre_dec(obj: Struct, field: str) -> Generator[Op, int, int]:
    """``--obj->field``: the new value."""
    yield Op("--", f"{obj!r}->{field}")
    old: int = getattr(obj, field)
    setattr(obj, field, old - 1)
    world().note(f"{old} -> {old - 1}")
    return old - 1
