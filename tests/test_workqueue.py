"""Workqueues: items run on the worker daemons, flush_workqueue waits for what was queued
before it (only that), queue_work of a pending item is a no-op, destroy_workqueue drains;
and the bugs a workqueue invites (freeing a queued item, flushing under a lock the work
takes) are found. DPOR agrees with plain search on these programs."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, dfs, expect_pass, expect_violation, log, outcomes
from tdpmmu.explore.result import Limits
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import Embedded, Field, Struct, kfree, kzalloc
from tdpmmu.kernel.spinlock import mutex, mutex_lock, mutex_unlock
from tdpmmu.kernel.workqueue import (
    INIT_WORK,
    alloc_workqueue,
    destroy_workqueue,
    flush_workqueue,
    queue_work,
    work_struct,
    worker_thread,
)


class Item(Struct):
    """An object with an embedded work item, like a root's tdp_mmu_async_work."""

    C_NAME = "item"
    work = Embedded(work_struct)
    val = Field(0)
    lock = Embedded(mutex)


def item_work(work: work_struct) -> None:
    """Not a generator: runs in the worker's step."""
    item = work.container()
    item.val = item.val + 1


def locking_work(work: work_struct):
    item = work.container()
    yield from mutex_lock(item.lock)
    item.val = item.val + 1
    yield from mutex_unlock(item.lock)


def setup(n: int = 1, workers: int = 1, fn=item_work):
    def build() -> Shared:
        wq = alloc_workqueue("wq", "WQ_UNBOUND", 0, nr_workers=workers)
        items = tuple(kzalloc(Item, f"item{i}") for i in range(n))
        for it in items:
            INIT_WORK(it.work, fn)
        return Shared(wq=wq, items=items, b=kzalloc(Box, "b"))
    return build


def workers(n: int = 1) -> list:
    return [(f"kworker/u:{i}", lambda s: worker_thread(s.wq)) for i in range(n)]


def prog(threads, n: int = 1, nworkers: int = 1, fn=item_work, **kw) -> Prog:
    kw.setdefault("observe", lambda s: s.b.log)
    return Prog(setup(n, nworkers, fn), threads, daemons=workers(nworkers), **kw)


# -- queue_work and flush_workqueue ---------------------------------------------------------
def queue_and_flush(s: Shared):
    yield from queue_work(s.wq, s.items[0].work)
    yield from flush_workqueue(s.wq)
    log(s.b, s.items[0].val)


def test_flush_waits_for_queued_work() -> None:
    assert outcomes(prog([queue_and_flush])) == {(1,)}


def queue_only(s: Shared):
    yield from queue_work(s.wq, s.items[0].work)
    yield from WRITE_ONCE(s.b, "flag", 1)  # one more step: the worker may run before it


def test_without_flush_the_work_may_not_have_run() -> None:
    p = prog([queue_only], observe=lambda s: s.items[0].val)
    # The execution ends when the queuer does: the daemon may or may not have run.
    assert outcomes(p) == {0, 1}


def late_queuer(s: Shared):
    """Queues item 1 once the flusher has started flushing (its first step done)."""
    yield from queue_work(s.wq, s.items[1].work)


def flusher_of_item0(s: Shared):
    yield from queue_work(s.wq, s.items[0].work)
    yield from flush_workqueue(s.wq)
    log(s.b, (s.items[0].val, s.items[1].val))


def test_flush_waits_only_for_earlier_items() -> None:
    seen = outcomes(prog([flusher_of_item0, late_queuer], n=2))
    assert {((1, 0),), ((1, 1),)} <= seen  # item 1 queued after the flush: maybe not run
    assert all(entry[0] == 1 for log_ in seen for entry in log_)  # item 0: always run


def queue_twice(s: Shared):
    first = yield from queue_work(s.wq, s.items[0].work)
    second = yield from queue_work(s.wq, s.items[0].work)
    yield from flush_workqueue(s.wq)
    log(s.b, (first, second, s.items[0].val))


def test_queue_work_of_a_pending_item_is_a_no_op() -> None:
    # Still pending at the second call: not queued again (ran once). Already started:
    # the PENDING bit is clear, it is queued again and runs twice.
    assert outcomes(prog([queue_twice])) == {((True, False, 1),), ((True, True, 2),)}


# -- destroy_workqueue ----------------------------------------------------------------------
def queue_then_destroy(s: Shared):
    for it in s.items:
        yield from queue_work(s.wq, it.work)
    yield from destroy_workqueue(s.wq)
    log(s.b, tuple(it.val for it in s.items))


def test_destroy_drains_every_item() -> None:
    assert outcomes(prog([queue_then_destroy], n=2, nworkers=2)) == {((1, 1),)}


def destroy_then_queue(s: Shared):
    yield from destroy_workqueue(s.wq)
    yield from queue_work(s.wq, s.items[0].work)


def test_queue_work_after_destroy_warns() -> None:
    expect_violation(prog([destroy_then_queue]), "WARNING", "queue_work() on draining")


def reinit_pending(s: Shared):
    yield from queue_work(s.wq, s.items[0].work)
    INIT_WORK(s.items[0].work, item_work)


def test_init_work_of_a_queued_item_warns() -> None:
    expect_violation(prog([reinit_pending]), "WARNING", "ODEBUG: init active")


# -- the pool: items run concurrently only with more than one worker ------------------------
def queue_both_and_flush(s: Shared):
    yield from queue_work(s.wq, s.items[0].work)
    yield from queue_work(s.wq, s.items[1].work)
    yield from flush_workqueue(s.wq)


def both_locked(s: Shared) -> str | None:
    a, b = s.items
    return "two items inside their work at once" if a.lock.owner >= 0 and b.lock.owner >= 0 else None


@pytest.mark.parametrize("nworkers", [1, 2])
def test_items_overlap_only_with_two_workers(nworkers: int) -> None:
    p = prog([queue_both_and_flush], n=2, nworkers=nworkers, fn=locking_work, state=both_locked)
    r = dfs(p, True).result  # type: ignore[attr-defined]
    assert r.verdict == ("violation" if nworkers == 2 else "pass")


# -- bugs the engine must find ---------------------------------------------------------------
def free_without_flush(s: Shared):
    """The owner frees an object whose work item is still queued (the work then runs on
    freed memory): cancel_work_sync()/flush_workqueue() missing."""
    yield from queue_work(s.wq, s.items[0].work)
    kfree(s.items[0])
    # The owner goes on (an execution ends with its last non-daemon thread, and a
    # workqueue left with work at the end is the caller's bug the KVM model's
    # destroy_workqueue() rules out).
    yield from WRITE_ONCE(s.b, "flag", 1)


def free_after_flush(s: Shared):
    yield from queue_work(s.wq, s.items[0].work)
    yield from flush_workqueue(s.wq)
    kfree(s.items[0])


def test_freeing_a_queued_item_is_a_use_after_free() -> None:
    r = expect_violation(prog([free_without_flush]), "use-after-free")
    assert r.violation.thread.startswith("kworker")


def test_freeing_after_a_flush_is_safe() -> None:
    expect_pass(prog([free_after_flush]))


def flush_under_the_lock(s: Shared):
    """Flushes while holding the mutex its work item takes: the flush waits for the
    worker, the worker for the mutex."""
    yield from mutex_lock(s.items[0].lock)
    yield from queue_work(s.wq, s.items[0].work)
    yield from flush_workqueue(s.wq)
    yield from mutex_unlock(s.items[0].lock)


def test_flush_under_a_lock_the_work_takes_deadlocks() -> None:
    expect_violation(prog([flush_under_the_lock], fn=locking_work), "deadlock")


# -- DPOR against plain search -----------------------------------------------------------------
WQ_PROGRAMS = {
    "flush": lambda: prog([queue_and_flush]),
    "flush-late": lambda: prog([flusher_of_item0, late_queuer], n=2),
    "queue-twice": lambda: prog([queue_twice]),
    "destroy-2-workers": lambda: prog([queue_then_destroy], n=2, nworkers=2, fn=locking_work),
    "overlap": lambda: prog([queue_both_and_flush], n=2, nworkers=2, fn=locking_work, state=both_locked),
    "uaf": lambda: prog([free_without_flush]),
}


@pytest.mark.parametrize("name", WQ_PROGRAMS)
@pytest.mark.parametrize("cache", [False, True], ids=["stateless", "cache"])
def test_dpor_agrees_with_plain_search(name: str, cache: bool) -> None:
    from test_dpor import agree

    p = WQ_PROGRAMS[name]()
    full = dfs(p, False)
    reduced = Dpor(p, Limits(shrink_time=0), cache=cache)
    reduced.result = reduced.run()  # type: ignore[attr-defined]
    agree(full, reduced, p)
