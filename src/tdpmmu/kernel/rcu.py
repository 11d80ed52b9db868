"""RCU: read-side sections, call_rcu, rcu_barrier, and the callback runner.

Grace periods are modeled by who they wait for: ``call_rcu`` records the threads that
are inside a read-side section at that moment, and the callback becomes runnable once
each of them has left its (outermost) section. Readers that start later are not waited
for, exactly the guarantee RCU gives. Callbacks run on a daemon thread
(``rcu_callback_thread``), in any order among the runnable ones' oldest first.

The state lives at the reserved object id 0 so every program gets it for free.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from tdpmmu.explore.runtime import MOVED, NAME, Op, primitive, world
from tdpmmu.kernel.memory import Field, Struct, get_member, set_member

RcuCallback = Callable[[Any], object]


class _RcuState(Struct):
    readers = Field(frozenset())  # {(tid, nesting depth)} of threads in a read section
    pending = Field(())  # ((object, callback, frozenset(tids still to wait for)), ...)
    running = Field(0)  # callbacks taken off `pending` and not finished (they may yield)


RCU = _RcuState(0)


def rcu_init() -> None:
    """Called by a program's build, before any thread runs."""
    world().cells[(0, NAME)] = "rcu"
    world().set((0, "__live__"), True)
    RCU.readers = frozenset()
    RCU.pending = ()
    RCU.running = 0


def _depth(tid: int, readers: frozenset[tuple[int, int]] | None = None) -> int:
    # Only this thread's own entry is used: see World.get_member.
    for t, d in get_member(RCU, "readers", tid) if readers is None else readers:
        if t == tid:
            return d
    return 0


def rcu_read_lock_held() -> bool:
    return _depth(world().tid) > 0


@primitive
def rcu_read_lock() -> Generator[Op, int, None]:
    yield Op("rcu_read_lock")
    tid = world().tid
    readers = get_member(RCU, "readers", tid)
    d = _depth(tid, readers)
    set_member(RCU, "readers", (readers - {(tid, d)}) | {(tid, d + 1)}, tid)


@primitive
def rcu_read_unlock() -> Generator[Op, int, None]:
    yield Op("rcu_read_unlock", moves_left=True)  # see Op: a release
    w = world()
    tid = w.tid
    readers = get_member(RCU, "readers", tid)
    d = _depth(tid, readers)
    if d == 0:
        w.report("WARNING", "rcu_read_unlock() without rcu_read_lock()")
    else:
        set_member(RCU, "readers", (readers - {(tid, d)}) | ({(tid, d - 1)} if d > 1 else set()), tid)
    if d == 1:  # the section ends: no grace period waits for this thread any more
        pending = get_member(RCU, "pending", tid)
        set_member(RCU, "pending", tuple((obj, fn, waiting - {tid}) for obj, fn, waiting in pending), tid)
    yield MOVED


@primitive
def call_rcu(obj: object, fn: RcuCallback) -> Generator[Op, int, None]:
    yield Op("call_rcu", obj, getattr(fn, "__name__", fn))
    in_section = frozenset(t for t, _ in RCU.readers)
    RCU.pending = (*RCU.pending, (obj, Callback(fn), in_section))


class Callback:
    """A callback as a value: a bound method hashes by its object's *address*, which
    would make fingerprints differ between two runs of the same program."""

    __slots__ = ("func", "owner")

    def __init__(self, fn: RcuCallback) -> None:
        self.func: Any = getattr(fn, "__func__", fn)
        self.owner: Any = getattr(fn, "__self__", None)

    def __call__(self, obj: object) -> object:
        return self.func(obj) if self.owner is None else self.func(self.owner, obj)

    def __hash__(self) -> int:
        return hash((self.func, self.owner))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Callback) and (other.func, other.owner) == (self.func, self.owner)

    @property
    def __name__(self) -> str:
        return str(self.func.__name__)


def _ready() -> bool:
    return any(not waiting for _, _, waiting in RCU.pending)


@primitive
def rcu_callback_thread() -> Generator[Op, int, None]:
    """Daemon: run a callback whose grace period has elapsed (softirq context)."""
    while True:
        yield Op("rcu_do_batch", guard=_ready)
        # (In a function of its own: its locals die with it, so a daemon waiting for
        # the next callback fingerprints alike whichever callback it ran last.)
        yield from rcu_do_batch()


@primitive
def rcu_do_batch() -> Generator[Op, int, None]:
    """Run the oldest callback whose grace period has elapsed."""
    pending = RCU.pending
    i = next(i for i, (_, _, waiting) in enumerate(pending) if not waiting)
    obj, fn, _ = pending[i]
    RCU.pending = pending[:i] + pending[i + 1 :]
    RCU.running = int(RCU.running) + 1
    world().note("{}({})", getattr(fn, '__name__', fn), obj)
    result = fn(obj)
    if isinstance(result, Generator):
        yield from result
    RCU.running = int(RCU.running) - 1


@primitive
def rcu_barrier() -> Generator[Op, int, None]:
    """Wait until every queued callback has run to its end."""
    yield Op("rcu_barrier", guard=lambda: not RCU.pending and not RCU.running)
