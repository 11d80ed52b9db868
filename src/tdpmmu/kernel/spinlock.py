"""spinlock_t and struct mutex: exclusive locks with an owner.

A waiter is blocked (disabled), not spinning: the engine never schedules it until the
lock is free, so a spin loop costs no states.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import MOVED, Op, primitive, world
from tdpmmu.kernel.memory import Field, Struct

NO_OWNER = -1


class spinlock_t(Struct):
    owner = Field(NO_OWNER)


class mutex(Struct):
    owner = Field(NO_OWNER)


@primitive
def _acquire(name: str, lock: spinlock_t | mutex) -> Generator[Op, int, None]:
    me = world().tid
    yield Op(name, lock, guard=lambda: lock.owner == NO_OWNER)
    if lock.owner == me:  # only reachable if the guard lied; keeps the model honest
        world().report("deadlock", f"{name}({lock}) recursive acquire")
    lock.owner = me


@primitive
def _release(name: str, lock: spinlock_t | mutex) -> Generator[Op, int, None]:
    # A left mover (see Op): what another thread could do just before it cannot be
    # taking this lock, and nothing but the owner's own asserts reads the owner.
    yield Op(name, lock, moves_left=True)
    w = world()
    if lock.owner != w.tid:
        w.report("lockdep", f"{name}({lock}) by {w.thread_name}, which does not hold it")
    lock.owner = NO_OWNER
    yield MOVED


@primitive
def spin_lock(lock: spinlock_t) -> Generator[Op, int, None]:
    yield from _acquire("spin_lock", lock)


@primitive
def spin_unlock(lock: spinlock_t) -> Generator[Op, int, None]:
    yield from _release("spin_unlock", lock)


@primitive
def mutex_lock(lock: mutex) -> Generator[Op, int, None]:
    yield from _acquire("mutex_lock", lock)


@primitive
def mutex_unlock(lock: mutex) -> Generator[Op, int, None]:
    yield from _release("mutex_unlock", lock)

