"""cond_resched_rwlock_read/_write (kernel/sched/core.c).

Whether the kernel yields depends on need_resched() and on lock contention, neither of
which the model tracks; so every yield point is a nondeterministic branch: 0 = carry on,
1 = drop the lock, let anyone run, retake it in the same mode. That over-approximates
both conditions, so it hides no interleaving the kernel can produce.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, primitive
from tdpmmu.kernel.lockdep import lockdep_assert_held_read, lockdep_assert_held_write
from tdpmmu.kernel.rwlock import _drop_read, _drop_write, read_lock, rwlock_t, write_lock


@primitive
def need_resched() -> Generator[Op, int, bool]:
    """``need_resched() || rwlock_needbreak()``: a branch point, both answers explored."""
    resched = yield Op("need_resched", choices=2)
    return bool(resched)


@primitive
def cond_resched_rwlock_read(lock: rwlock_t, *, resched: bool | None = None) -> Generator[Op, int, int]:
    """``resched`` is the caller's own need_resched() answer, when it already asked."""
    lockdep_assert_held_read(lock)
    if resched is None:
        resched = bool((yield Op("cond_resched_rwlock_read", lock, choices=2)))
    if not resched:
        return 0
    _drop_read(lock, "cond_resched_rwlock_read")
    yield from read_lock(lock)
    return 1


@primitive
def cond_resched_rwlock_write(lock: rwlock_t, *, resched: bool | None = None) -> Generator[Op, int, int]:
    lockdep_assert_held_write(lock)
    if resched is None:
        resched = bool((yield Op("cond_resched_rwlock_write", lock, choices=2)))
    if not resched:
        return 0
    _drop_write(lock, "cond_resched_rwlock_write")
    yield from write_lock(lock)
    return 1
