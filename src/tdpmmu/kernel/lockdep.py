"""lockdep_assert_held / _read / _write. Not scheduling points: they check, and report
a "lockdep" violation (the kernel's WARN) when the current thread's hold is wrong.
Read and write are distinct: ``_read`` fails for a writer and ``_write`` for a reader."""

from __future__ import annotations

from tdpmmu.explore.runtime import world
from tdpmmu.kernel.rwlock import held_for_read, held_for_write, rwlock_t
from tdpmmu.kernel.spinlock import mutex, spinlock_t


def _fail(what: str, lock: object) -> None:
    world().report("lockdep", f"{what}({lock}) failed in {world().thread_name}")


def lockdep_assert_held(lock: rwlock_t | spinlock_t | mutex) -> None:
    if isinstance(lock, rwlock_t):
        ok = held_for_read(lock) or held_for_write(lock)
    else:
        ok = lock.owner == world().tid
    if not ok:
        _fail("lockdep_assert_held", lock)


def lockdep_assert_held_read(lock: rwlock_t) -> None:
    if not held_for_read(lock):
        _fail("lockdep_assert_held_read", lock)


def lockdep_assert_held_write(lock: rwlock_t) -> None:
    if not held_for_write(lock):
        _fail("lockdep_assert_held_write", lock)
