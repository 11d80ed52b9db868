"""A lock-protected int changed with ++/--: exact under its lock, no checks on the value
(v5.11's ``root_count``); and BUG_ON."""

from __future__ import annotations

from conftest import Box, Prog, Shared, expect_violation, log, outcomes
from tdpmmu.kernel.bug import BUG_ON
from tdpmmu.kernel.lockedint import pre_dec, pre_inc
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock, spinlock_t


def setup_with(n: int):
    def setup() -> Shared:
        return Shared(b=kzalloc(Box, "b", n=n), lock=kzalloc(spinlock_t, "lock"))
    return setup


def observe(s: Shared):
    return s.b.log, s.b.n


def test_inc_and_dec_return_the_new_value() -> None:
    def t(s: Shared):
        log(s.b, (yield from pre_inc(s.b, "n")))
        log(s.b, (yield from pre_dec(s.b, "n")))
        log(s.b, (yield from pre_dec(s.b, "n")))
    assert outcomes(Prog(setup_with(1), [t], observe=observe)) == {((2, 1, 0), 0)}


def test_no_check_below_zero() -> None:
    """C arithmetic: a decrement from 0 is no splat (unlike refcount_t's underflow)."""
    def t(s: Shared):
        log(s.b, (yield from pre_dec(s.b, "n")))
    assert outcomes(Prog(setup_with(0), [t], observe=observe)) == {((-1,), -1)}


def locked_put(s: Shared):
    yield from spin_lock(s.lock)
    if (yield from pre_dec(s.b, "n")) == 0:
        log(s.b, "last")
    yield from spin_unlock(s.lock)


def test_exactly_one_put_under_the_lock_sees_zero() -> None:
    prog = Prog(setup_with(3), [("p0", locked_put), ("p1", locked_put), ("p2", locked_put)],
                observe=observe)
    assert outcomes(prog) == {(("last",), 0)}


def test_bug_on() -> None:
    def t(s: Shared):
        yield from pre_inc(s.b, "m")
        BUG_ON(not s.b.n, "!sp->root_count")
    expect_violation(Prog(setup_with(0), [t]), "BUG", "BUG_ON(!sp->root_count)")
    assert outcomes(Prog(setup_with(1), [t], observe=observe)) == {((), 1)}
