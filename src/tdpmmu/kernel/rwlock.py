"""rwlock_t as x86's queued rwlock (qrwlock).

What the model keeps of qrwlock (kernel/locking/qrwlock.c): readers share the lock; a
writer that has to wait announces itself, and from then on *new* readers wait behind it
(so writers do not starve); waiting writers get the lock in FIFO order once the readers
drain. ``fair = False`` gives an unfair lock where readers overtake waiting writers (what
an interrupt-context reader does), to check that correctness does not hang on fairness.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import MOVED, Op, primitive, world
from tdpmmu.kernel.memory import Field, Struct, get_member, set_member

NO_WRITER = -1


class rwlock_t(Struct):
    readers = Field(frozenset())  # tids holding it for read
    writer = Field(NO_WRITER)  # tid holding it for write
    waiting_writers = Field(())  # tids queued for write, FIFO
    fair = Field(True)


def _can_read(lock: rwlock_t) -> bool:
    return lock.writer == NO_WRITER and not (lock.fair and lock.waiting_writers)


# A reader touches only its own member of `readers`, so that two readers' lock and
# unlock commute for partial-order reduction (World.get_member).
def _take_read(lock: rwlock_t) -> None:
    w = world()
    readers = get_member(lock, "readers", w.tid)
    if w.tid in readers:
        w.report("deadlock", f"recursive read_lock({lock}) can deadlock behind a queued writer")
    set_member(lock, "readers", readers | {w.tid}, w.tid)


def _drop_read(lock: rwlock_t, name: str) -> None:
    w = world()
    readers = get_member(lock, "readers", w.tid)
    if w.tid not in readers:
        w.report("lockdep", f"{name}({lock}) by {w.thread_name}, which does not hold it for read")
        return
    set_member(lock, "readers", readers - {w.tid}, w.tid)


def _drop_write(lock: rwlock_t, name: str) -> None:
    w = world()
    if lock.writer != w.tid:
        w.report("lockdep", f"{name}({lock}) by {w.thread_name}, which does not hold it for write")
    lock.writer = NO_WRITER


@primitive
def read_lock(lock: rwlock_t) -> Generator[Op, int, None]:
    yield Op("read_lock", lock, guard=lambda: _can_read(lock))
    _take_read(lock)


# The unlocks are left movers (see Op): whatever another thread can do while this one
# holds the lock (read_lock, a writer queueing, rwlock_is_contended) reads neither this
# thread's member of `readers` nor `writer`, so it commutes with the unlock.
@primitive
def read_unlock(lock: rwlock_t) -> Generator[Op, int, None]:
    yield Op("read_unlock", lock, moves_left=True)
    _drop_read(lock, "read_unlock")
    yield MOVED


@primitive
def write_lock(lock: rwlock_t) -> Generator[Op, int, None]:
    yield Op("write_lock", lock)
    w = world()
    me = w.tid
    if lock.writer == me or me in get_member(lock, "readers", me):
        w.report("deadlock", f"write_lock({lock}) by a thread that already holds it")
    # A writer always queues, then takes the lock once it is free: the kernel's fast
    # path (cmpxchg 0 -> LOCKED on a free lock) is this with nothing in between, and
    # what could run in between cannot tell (a reader arriving waits behind the queued
    # writer as it would behind the holder; nobody holds the lock to see it contended).
    # A fast path here would depend on whether readers hold the lock, and so would not
    # commute with read_unlock; this way the unlocks are left movers.
    lock.waiting_writers = (*lock.waiting_writers, me)
    w.note("queued")  # (the trace's first of the two write_lock steps)
    yield Op(
        "write_lock",
        lock,
        guard=lambda: lock.writer == NO_WRITER and not lock.readers and lock.waiting_writers[0] == me,
    )
    lock.waiting_writers = lock.waiting_writers[1:]
    lock.writer = me
    w.note("taken")


@primitive
def write_unlock(lock: rwlock_t) -> Generator[Op, int, None]:
    yield Op("write_unlock", lock, moves_left=True)
    _drop_write(lock, "write_unlock")
    yield MOVED


def rwlock_is_contended(lock: rwlock_t) -> bool:
    """True while a writer is queued (qrwlock: the wait_lock is held)."""
    return bool(lock.waiting_writers)


def held_for_read(lock: rwlock_t) -> bool:
    tid = world().tid
    return tid in get_member(lock, "readers", tid)


def held_for_write(lock: rwlock_t) -> bool:
    return lock.writer == world().tid
