"""spinlock_t and struct mutex: mutual exclusion, blocking waiters, misuse reported."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, expect_pass, expect_violation, outcomes
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.spinlock import (
    NO_OWNER,
    mutex,
    mutex_lock,
    mutex_unlock,
    spin_lock,
    spin_unlock,
    spinlock_t,
)
from tdpmmu.kernel.wait import wait_event

KINDS = {
    "spinlock": (spinlock_t, spin_lock, spin_unlock),
    "mutex": (mutex, mutex_lock, mutex_unlock),
}


def setup_for(kind: str):
    cls, lock, unlock = KINDS[kind]

    def setup() -> Shared:
        return Shared(b=kzalloc(Box, "b"), l=kzalloc(cls, "L"), lock=lock, unlock=unlock)
    return setup


def at_most_one_inside(s: Shared) -> str | None:
    return None if s.b.m <= 1 else f"{s.b.m} threads in the critical section"


def critical(s: Shared):
    yield from s.lock(s.l)
    s.b.m += 1  # entered (atomic with the acquisition)
    yield from WRITE_ONCE(s.b, "n", s.b.n + 1)  # a point inside the section
    s.b.m -= 1  # leaving (before the unlock step)
    yield from s.unlock(s.l)


def unprotected(s: Shared):
    yield from WRITE_ONCE(s.b, "flag", 1)  # a point: the entry can interleave
    s.b.m += 1
    yield from WRITE_ONCE(s.b, "n", s.b.n + 1)
    s.b.m -= 1


@pytest.mark.parametrize("kind", KINDS)
def test_mutual_exclusion(kind: str) -> None:
    prog = Prog(setup_for(kind), [("t0", critical), ("t1", critical), ("t2", critical)],
                state=at_most_one_inside, observe=lambda s: (s.b.n, s.l.owner))
    assert outcomes(prog) == {(3, NO_OWNER)}


def test_without_the_lock_two_threads_are_inside() -> None:
    expect_violation(Prog(setup_for("spinlock"), [("t0", unprotected), ("t1", unprotected)],
                          state=at_most_one_inside), "invariant", "2 threads in the critical section")


def test_one_locked_one_not_is_still_a_race() -> None:
    expect_violation(Prog(setup_for("spinlock"), [critical, unprotected], state=at_most_one_inside),
                     "invariant")


@pytest.mark.parametrize("kind", KINDS)
def test_unlock_by_non_owner_is_lockdep(kind: str) -> None:
    def owner(s: Shared):
        yield from s.lock(s.l)
        yield from wait_event("thief done", lambda: s.b.flag == 1)

    def thief(s: Shared):
        yield from wait_event("locked", lambda: s.l.owner != NO_OWNER)
        s.b.flag = 1
        yield from s.unlock(s.l)
    name = "spin_unlock" if kind == "spinlock" else "mutex_unlock"
    result = expect_violation(Prog(setup_for(kind), [owner, thief]), "lockdep",
                              f"{name}(L) by thief, which does not hold it")
    assert result.violation.thread == "thief"


@pytest.mark.parametrize("kind", KINDS)
def test_unlock_without_lock_is_lockdep(kind: str) -> None:
    def stray(s: Shared):
        yield from s.unlock(s.l)
    expect_violation(Prog(setup_for(kind), [stray]), "lockdep")


@pytest.mark.parametrize("kind", KINDS)
def test_recursive_acquire_deadlocks(kind: str) -> None:
    def twice(s: Shared):
        yield from s.lock(s.l)
        yield from s.lock(s.l)
    expect_violation(Prog(setup_for(kind), [twice]), "deadlock", "twice waits in")


def test_forgotten_unlock_blocks_the_next_taker() -> None:
    def forgetful(s: Shared):
        yield from spin_lock(s.l)

    def second(s: Shared):
        yield from wait_event("first took it", lambda: s.l.owner != NO_OWNER)
        yield from spin_lock(s.l)
    expect_violation(Prog(setup_for("spinlock"), [forgetful, second]), "deadlock",
                     "second waits in spin_lock(L)")


def test_waiter_is_blocked_not_spinning() -> None:
    """A waiter costs no states: the blocked thread is simply not enabled."""
    def holder(s: Shared):
        yield from spin_lock(s.l)
        yield from WRITE_ONCE(s.b, "n", 1)
        yield from spin_unlock(s.l)

    def waiter(s: Shared):
        yield from wait_event("held or done", lambda: s.l.owner != NO_OWNER or s.b.n == 1)
        yield from spin_lock(s.l)
        yield from spin_unlock(s.l)
    result = expect_pass(Prog(setup_for("spinlock"), [holder, waiter]), cache=False, max_steps=5)
    assert result.stats.executions <= 6
