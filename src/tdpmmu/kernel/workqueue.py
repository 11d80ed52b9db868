"""Workqueues (include/linux/workqueue.h, kernel/workqueue.c): ``alloc_workqueue``,
``INIT_WORK``, ``queue_work``, ``flush_workqueue``, ``destroy_workqueue``, and the worker
threads that run the work items.

A workqueue is an object in the world: the work items queued and not yet started (oldest
first, each with the sequence number it was queued under), the items being run, and the
sequence counter. Its items run on daemon worker threads (``worker_thread``) that the
program creates for every workqueue when it builds the VM, the way the RCU callback
runner is a daemon: each takes the oldest queued item, clears its PENDING bit (so that,
as in the kernel, it may be queued again while it runs) and calls its function, whose own
scheduling points interleave with every other thread's.

``flush_workqueue`` waits for the items queued before it was called, and only for them:
the kernel's guarantee. ``destroy_workqueue`` drains: it waits until nothing is queued or
running; a ``queue_work`` on a draining or destroyed workqueue WARNs.

Every operation is a scheduling point that goes through the world (the item lists and
counter are cells), so partial-order reduction sees a ``queue_work`` and a worker taking
the item as dependent, and a flush's wait as reading what the workers write.

Model limits: a workqueue has as many worker threads as its ``nr_workers`` (the kernel's
pool for an unbound workqueue is far larger), so at most that many of its items run at
once; chained work (an item queueing onto its own draining workqueue, which the kernel
allows) is not told apart from any other late ``queue_work``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from tdpmmu.explore.runtime import Op, primitive, world
from tdpmmu.kernel.memory import Field, Struct, kzalloc
from tdpmmu.kernel.rcu import Callback

WorkFunc = Callable[[Any], object]


class work_struct(Struct):
    """``struct work_struct``, usually embedded (``container()`` is its owner)."""

    C_NAME = "work"
    func = Field(None)  # work_func_t, as a Callback value
    pending = Field(False)  # WORK_STRUCT_PENDING_BIT


class workqueue_struct(Struct):
    C_NAME = "wq"
    flags = Field("")
    max_active = Field(0)
    nr_workers = Field(1)  # the model's pool: how many items may run at once
    worklist = Field(())  # ((seq, work), ...): queued, not started; oldest first
    running = Field(())  # ((seq, work), ...): started, not finished
    next_seq = Field(0)
    draining = Field(False)  # __WQ_DRAINING, then destroyed: queue_work WARNs


def alloc_workqueue(name: str, flags: str, max_active: int, nr_workers: int = 1) -> workqueue_struct:
    """Not a scheduling point: called while the VM is created, before any thread runs.
    ``nr_workers`` is the model's (see the module docstring)."""
    return kzalloc(workqueue_struct, name=name, flags=flags, max_active=max_active,
                   nr_workers=nr_workers)


def INIT_WORK(work: work_struct, fn: WorkFunc) -> None:
    """Plain stores. Re-initialising a queued item corrupts the worklist: the kernel's
    debugobjects splat on it (CONFIG_DEBUG_OBJECTS_WORK); so does the model."""
    if work.pending:
        world().report("WARNING", f"ODEBUG: init active object type: work_struct ({work.container()!r})")
    work.func = Callback(fn)


@primitive
def queue_work(wq: workqueue_struct, work: work_struct) -> Generator[Op, int, bool]:
    """False, and nothing queued, if the item is already pending."""
    yield Op("queue_work", wq, work.container())
    if wq.draining:
        world().report("WARNING", f"queue_work() on draining or destroyed {wq!r}")
    if work.pending:  # test_and_set_bit(WORK_STRUCT_PENDING_BIT)
        world().note("already pending")
        return False
    work.pending = True
    seq = wq.next_seq
    wq.next_seq = seq + 1
    wq.worklist = (*wq.worklist, (seq, work))
    return True


def _done_before(wq: workqueue_struct, seq: int) -> bool:
    """No item queued before sequence number ``seq`` is queued or running any more."""
    return all(s >= seq for s, _ in wq.worklist) and all(s >= seq for s, _ in wq.running)


@primitive
def flush_workqueue(wq: workqueue_struct) -> Generator[Op, int, None]:
    """Wait until every item queued before this call has run to its end. Items queued
    meanwhile are not waited for."""
    yield Op("flush_workqueue", wq)
    upto = wq.next_seq
    if not _done_before(wq, upto):
        yield Op("flush_workqueue", wq, "wait", guard=lambda: _done_before(wq, upto))


@primitive
def destroy_workqueue(wq: workqueue_struct) -> Generator[Op, int, None]:
    """``drain_workqueue()`` (wait until nothing is queued or running), then destroy. The
    workqueue object itself stays: its idle workers' guards still read it."""
    yield Op("destroy_workqueue", wq)
    wq.draining = True
    if wq.worklist or wq.running:
        yield Op("destroy_workqueue", wq, "drain", guard=lambda: not wq.worklist and not wq.running)


@primitive
def worker_thread(wq: workqueue_struct) -> Generator[Op, int, None]:
    """Daemon: one of the workqueue's workers."""
    while True:
        yield Op("worker_thread", wq, guard=lambda: bool(wq.worklist))
        yield from process_one_work(wq)


@primitive
def process_one_work(wq: workqueue_struct) -> Generator[Op, int, None]:
    """Take the oldest queued item and run it. The item is not touched after its function
    returns (the function may free it), only the workqueue's bookkeeping."""
    worklist = wq.worklist
    seq, work = worklist[0]
    wq.worklist = worklist[1:]
    wq.running = (*wq.running, (seq, work))
    work.pending = False  # set_work_pool_and_clear_pending(): it may be queued again now
    fn = work.func
    world().note(f"{fn.__name__}({work.container()!r})")
    result = fn(work)
    if isinstance(result, Generator):
        yield from result
    wq.running = tuple(r for r in wq.running if r[0] != seq)
