"""lockdep_assert_held / _read / _write: read and write holds are distinct, and an
assertion checks the *current* thread's hold."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, expect_pass, expect_violation
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_read, lockdep_assert_held_write
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.rwlock import read_lock, read_unlock, rwlock_t, write_lock, write_unlock
from tdpmmu.kernel.spinlock import (
    mutex,
    mutex_lock,
    mutex_unlock,
    spin_lock,
    spin_unlock,
    spinlock_t,
)
from tdpmmu.kernel.wait import wait_event


def setup() -> Shared:
    return Shared(b=kzalloc(Box, "b"), rw=kzalloc(rwlock_t, "mmu_lock"), sp=kzalloc(spinlock_t, "pages_lock"),
                  mx=kzalloc(mutex, "slots_lock"))


HOLDS = {
    "read": (read_lock, read_unlock),
    "write": (write_lock, write_unlock),
}
ASSERTS = {
    "held": lockdep_assert_held,
    "held_read": lockdep_assert_held_read,
    "held_write": lockdep_assert_held_write,
}
# (how the lock is held, which assertion) -> does it pass?
EXPECTED = {
    ("read", "held"): True,
    ("write", "held"): True,
    ("read", "held_read"): True,
    ("write", "held_read"): False,
    ("read", "held_write"): False,
    ("write", "held_write"): True,
}


@pytest.mark.parametrize(("hold", "check"), list(EXPECTED))
def test_rwlock_assertions(hold: str, check: str) -> None:
    lock, unlock = HOLDS[hold]
    assertion = ASSERTS[check]

    def t(s: Shared):
        yield from lock(s.rw)
        assertion(s.rw)
        yield from unlock(s.rw)
    prog = Prog(setup, [t])
    if EXPECTED[hold, check]:
        expect_pass(prog)
    else:
        expect_violation(prog, "lockdep", f"lockdep_assert_{check}(mmu_lock) failed in t")


@pytest.mark.parametrize("check", ASSERTS)
def test_rwlock_assertions_fail_unlocked(check: str) -> None:
    assertion = ASSERTS[check]

    def t(s: Shared):
        assertion(s.rw)
        yield from read_lock(s.rw)
        yield from read_unlock(s.rw)
    expect_violation(Prog(setup, [t]), "lockdep", f"lockdep_assert_{check}(mmu_lock)")


@pytest.mark.parametrize("hold", HOLDS)
def test_assert_held_checks_the_current_thread(hold: str) -> None:
    """Another thread holding the lock does not satisfy the assertion."""
    lock, unlock = HOLDS[hold]

    def holder(s: Shared):
        yield from lock(s.rw)
        s.b.flag = 1
        yield from wait_event("checked", lambda: s.b.n == 1)
        yield from unlock(s.rw)

    def checker(s: Shared):
        yield from wait_event("held", lambda: s.b.flag == 1)
        s.b.n = 1
        lockdep_assert_held(s.rw)
    result = expect_violation(Prog(setup, [holder, checker]), "lockdep", "failed in checker")
    assert result.violation.thread == "checker"


@pytest.mark.parametrize(("field", "lock", "unlock"),
                         [("sp", spin_lock, spin_unlock), ("mx", mutex_lock, mutex_unlock)])
def test_assert_held_on_exclusive_locks(field: str, lock, unlock) -> None:
    def owner(s: Shared):
        yield from lock(getattr(s, field))
        lockdep_assert_held(getattr(s, field))
        s.b.flag = 1
        yield from wait_event("checked", lambda: s.b.n == 1)
        yield from unlock(getattr(s, field))

    def other(s: Shared):
        yield from wait_event("held", lambda: s.b.flag == 1)
        s.b.n = 1
        lockdep_assert_held(getattr(s, field))
    def alone(s: Shared):
        yield from lock(getattr(s, field))
        lockdep_assert_held(getattr(s, field))
        yield from unlock(getattr(s, field))
    expect_pass(Prog(setup, [("t0", alone), ("t1", alone)]))
    expect_violation(Prog(setup, [owner, other]), "lockdep", "failed in other")


def test_assertions_are_not_scheduling_points() -> None:
    """An assertion runs inside the step that precedes it: no extra states."""
    def t(s: Shared):
        yield from write_lock(s.rw)
        lockdep_assert_held(s.rw)
        lockdep_assert_held_write(s.rw)
        yield from write_unlock(s.rw)

    def u(s: Shared):
        yield from write_lock(s.rw)
        yield from write_unlock(s.rw)
    result = expect_pass(Prog(setup, [t], observe=lambda s: s.rw.writer))
    without = expect_pass(Prog(setup, [u], observe=lambda s: s.rw.writer))
    assert result.stats.transitions == without.stats.transitions == 3  # queue, take, unlock
