"""refcount_t (include/linux/refcount.h). Every operation is one atomic scheduling point.

Misuse is a violation, as the kernel WARNs: ``refcount_inc`` on 0 ("addition on 0;
use-after-free") and a decrement from 0 or below ("underflow; use-after-free"). The model
does not saturate: the execution ends at the WARN.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, primitive, world
from tdpmmu.kernel.memory import Field, Struct


class refcount_t(Struct):
    refs = Field(0)


@primitive
def refcount_set(r: refcount_t, n: int) -> Generator[Op, int, None]:
    yield Op("refcount_set", r, n)
    r.refs = n
    world().note(f"= {n}")


@primitive
def refcount_read(r: refcount_t) -> Generator[Op, int, int]:
    yield Op("refcount_read", r)
    n: int = r.refs
    world().note(f"= {n}")
    return n


@primitive
def refcount_inc(r: refcount_t) -> Generator[Op, int, None]:
    yield Op("refcount_inc", r)
    old = r.refs
    if old <= 0:
        world().report("refcount", f"refcount_t: addition on 0; use-after-free ({r})")
    r.refs = old + 1
    world().note(f"{old} -> {old + 1}")


@primitive
def refcount_inc_not_zero(r: refcount_t) -> Generator[Op, int, bool]:
    yield Op("refcount_inc_not_zero", r)
    old = r.refs
    if old == 0:
        world().note("0: fails")
        return False
    r.refs = old + 1
    world().note(f"{old} -> {old + 1}")
    return True


@primitive
def refcount_dec_and_test(r: refcount_t) -> Generator[Op, int, bool]:
    yield Op("refcount_dec_and_test", r)
    old = r.refs
    if old <= 0:
        world().report("refcount", f"refcount_t: underflow; use-after-free ({r})")
        return False
    r.refs = old - 1
    world().note(f"{old} -> {old - 1}" + (": last reference" if old == 1 else ""))
    return old == 1
