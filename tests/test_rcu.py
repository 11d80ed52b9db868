"""RCU: grace periods wait for pre-existing readers (and only for them), use-after-free
outside a read-side section is found, rcu_barrier waits, lockdep-RCU complains."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, expect_pass, expect_violation, log, outcomes
from tdpmmu.explore.execution import Execution
from tdpmmu.explore.runtime import world
from tdpmmu.kernel.atomic import READ_ONCE, WRITE_ONCE
from tdpmmu.kernel.memory import Field, Struct, kfree, kzalloc
from tdpmmu.kernel.rcu import RCU, call_rcu, rcu_barrier, rcu_read_lock, rcu_read_lock_held, rcu_read_unlock
from tdpmmu.kernel.rculist import INIT_LIST_HEAD, list_add_rcu, list_head, list_next_or_null_rcu
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock, spinlock_t
from tdpmmu.kernel.wait import wait_event


class Obj(Struct):
    C_NAME = "obj"
    val = Field(0)


class Gp(Struct):
    """The published pointer plus the test's bookkeeping."""

    C_NAME = "gp"
    ptr = Field(None)
    in_section = Field(0)  # the reader holds a pointer inside its section
    queued = Field(0)  # call_rcu has been called
    ran = Field(0)  # the callback has run
    lock = Field(None)  # a spinlock for callbacks that take one


def free_obj(obj: Obj) -> None:
    kfree(obj)


def setup() -> Shared:
    gp = kzalloc(Gp, "gp")
    gp.ptr = kzalloc(Obj, "obj", val=42)
    return Shared(gp=gp, b=kzalloc(Box, "b"))


def updater(s: Shared):
    """Unpublish, then free after a grace period."""
    obj = yield from READ_ONCE(s.gp, "ptr")
    yield from WRITE_ONCE(s.gp, "ptr", None)
    yield from call_rcu(obj, free_obj)


def updater_no_grace_period(s: Shared):
    obj = yield from READ_ONCE(s.gp, "ptr")
    yield from WRITE_ONCE(s.gp, "ptr", None)
    kfree(obj)  # bug: readers may still hold it


def reader_inside(s: Shared):
    yield from rcu_read_lock()
    p = yield from READ_ONCE(s.gp, "ptr")
    if p is not None:
        s.gp.in_section = 1
        v = yield from READ_ONCE(p, "val")  # a point between the load and the use
        log(s.b, v)
        s.gp.in_section = 0
    yield from rcu_read_unlock()


def reader_after_unlock(s: Shared):
    yield from rcu_read_lock()
    p = yield from READ_ONCE(s.gp, "ptr")
    yield from rcu_read_unlock()
    if p is not None:
        v = yield from READ_ONCE(p, "val")  # bug: outside the section
        log(s.b, v)


def not_freed_under_reader(s: Shared) -> str | None:
    w = world()
    for oid in w.oids():
        if w.type_of(oid) is Obj and w.is_freed(oid) and s.gp.in_section:
            return "obj freed while a pre-existing reader is inside its section"
    return None


def test_reader_inside_section_is_safe() -> None:
    prog = Prog(setup, [updater, reader_inside], rcu=True, state=not_freed_under_reader,
                observe=lambda s: s.b.log)
    assert outcomes(prog) == {(), (42,)}


def test_touching_after_rcu_read_unlock_is_use_after_free() -> None:
    result = expect_violation(Prog(setup, [updater, reader_after_unlock], rcu=True),
                              "use-after-free", "access to val of freed obj")
    assert result.violation.thread == "reader_after_unlock"
    assert any(st.action.startswith("rcu_do_batch") for st in result.trace)


def test_freeing_without_grace_period_is_use_after_free() -> None:
    expect_violation(Prog(setup, [updater_no_grace_period, reader_inside], rcu=True), "use-after-free")


# -- what a grace period waits for -----------------------------------------------------------
def mark_ran(gp: Gp) -> None:
    gp.ran = 1


def early_reader(s: Shared):
    """Enters before call_rcu (the queuer waits for that), looks at the callback's effect."""
    yield from rcu_read_lock()
    s.gp.in_section = 1
    yield from wait_event("callback queued", lambda: s.gp.queued == 1)
    log(s.b, ("early", (yield from READ_ONCE(s.gp, "ran"))))
    yield from rcu_read_unlock()


def nested_early_reader(s: Shared):
    yield from rcu_read_lock()
    yield from rcu_read_lock()
    s.gp.in_section = 1
    yield from wait_event("callback queued", lambda: s.gp.queued == 1)
    yield from rcu_read_unlock()  # still inside the outer section
    log(s.b, ("early", (yield from READ_ONCE(s.gp, "ran"))))
    yield from rcu_read_unlock()


def queuer(s: Shared):
    yield from wait_event("reader inside", lambda: s.gp.in_section == 1)
    yield from call_rcu(s.gp, mark_ran)
    s.gp.queued = 1
    yield from wait_event("callback ran", lambda: s.gp.ran == 1)


def late_reader(s: Shared):
    """Enters after call_rcu: the grace period does not wait for it."""
    yield from wait_event("callback queued", lambda: s.gp.queued == 1)
    yield from rcu_read_lock()
    first = yield from READ_ONCE(s.gp, "ran")
    second = yield from READ_ONCE(s.gp, "ran")
    yield from rcu_read_unlock()
    log(s.b, ("late", first, second))


def early_saw(s: Shared) -> str | None:
    for entry in s.b.log:
        if isinstance(entry, tuple) and entry[0] == "early" and entry[1] != 0:
            return "callback ran inside a section that began before call_rcu"
    return None


@pytest.mark.parametrize("reader", [early_reader, nested_early_reader])
def test_callback_waits_for_pre_existing_reader(reader) -> None:
    prog = Prog(setup, [reader, queuer], rcu=True, final=early_saw, observe=lambda s: (s.b.log, s.gp.ran))
    # The callback runs in every execution (the queuer waits for it), never inside the
    # early reader's section.
    assert outcomes(prog) == {((("early", 0),), 1)}


def test_callback_does_not_wait_for_later_reader() -> None:
    prog = Prog(setup, [early_reader, queuer, late_reader], rcu=True, final=early_saw,
                observe=lambda s: next(e for e in s.b.log if e[0] == "late"))
    seen = outcomes(prog)
    assert ("late", 0, 1) in seen  # the callback ran in the middle of the late section
    assert ("late", 0, 0) in seen and ("late", 1, 1) in seen


def test_grace_period_tracking_is_the_guarantee() -> None:
    """Sanity of the model's bookkeeping: the queued callback waits exactly for the
    threads inside a section at call_rcu time."""
    def reader(s: Shared):
        yield from rcu_read_lock()
        s.gp.in_section = 1
        yield from wait_event("queued", lambda: s.gp.queued == 1)
        [(_, _, waiting)] = RCU.pending
        log(s.b, (rcu_read_lock_held(), tuple(int(t) for t in waiting)))
        yield from rcu_read_unlock()
        [(_, _, waiting)] = RCU.pending
        log(s.b, (rcu_read_lock_held(), tuple(waiting)))
    def queue_only(s: Shared):
        yield from wait_event("reader inside", lambda: s.gp.in_section == 1)
        yield from call_rcu(s.gp, mark_ran)
        s.gp.queued = 1
    assert outcomes(Prog(setup, [reader, queue_only], observe=lambda s: s.b.log)) == {
        ((True, (0,)), (False, ())),
    }


# -- rcu_barrier -------------------------------------------------------------------------
def quick_reader(s: Shared):
    yield from rcu_read_lock()
    s.gp.in_section = 1
    yield from READ_ONCE(s.gp, "ptr")
    yield from rcu_read_unlock()


def barrier_caller(s: Shared):
    yield from wait_event("reader inside", lambda: s.gp.in_section == 1)
    yield from call_rcu(s.gp, mark_ran)
    yield from rcu_barrier()
    log(s.b, s.gp.ran)


def no_barrier_caller(s: Shared):
    yield from wait_event("reader inside", lambda: s.gp.in_section == 1)
    yield from call_rcu(s.gp, mark_ran)
    log(s.b, (yield from READ_ONCE(s.gp, "ran")))


def ran_before(s: Shared) -> str | None:
    return None if s.b.log == (1,) else f"callback had not run: log {s.b.log}"


def test_rcu_barrier_waits_for_callbacks() -> None:
    prog = Prog(setup, [quick_reader, barrier_caller], rcu=True, final=ran_before)
    result = expect_pass(prog)
    assert result.stats.executions >= 2


def test_without_rcu_barrier_the_callback_may_not_have_run() -> None:
    expect_violation(Prog(setup, [quick_reader, no_barrier_caller], rcu=True, final=ran_before),
                     "final-check", "callback had not run")


def test_rcu_barrier_inside_a_section_deadlocks() -> None:
    def self_waiter(s: Shared):
        yield from rcu_read_lock()
        yield from call_rcu(s.gp, mark_ran)
        yield from rcu_barrier()
        yield from rcu_read_unlock()
    expect_violation(Prog(setup, [self_waiter], rcu=True), "deadlock", "rcu_barrier")


def locking_callback(gp: Gp):
    """A callback that takes a spinlock (allowed in softirq): it has scheduling points."""
    yield from spin_lock(gp.lock)
    gp.ran = 1
    yield from spin_unlock(gp.lock)


def setup_with_lock() -> Shared:
    s = setup()
    s.gp.lock = kzalloc(spinlock_t, "cb_lock")
    return s


def queuer_locking(s: Shared):
    yield from wait_event("reader inside", lambda: s.gp.in_section == 1)
    yield from call_rcu(s.gp, locking_callback)
    s.gp.queued = 1
    yield from wait_event("callback ran", lambda: s.gp.ran == 1)


def lock_user(s: Shared):
    """Competes with the callback for its lock."""
    yield from spin_lock(s.gp.lock)
    log(s.b, s.gp.ran)
    yield from spin_unlock(s.gp.lock)


def barrier_after_locking_callback(s: Shared):
    yield from call_rcu(s.gp, locking_callback)
    yield from rcu_barrier()
    log(s.b, s.gp.ran)


def test_callback_with_scheduling_points_runs() -> None:
    prog = Prog(setup_with_lock, [queuer_locking, early_reader, lock_user], rcu=True, final=early_saw,
                observe=lambda s: (s.gp.ran, tuple(e for e in s.b.log if isinstance(e, int))))
    assert outcomes(prog) == {(1, (0,)), (1, (1,))}  # lock_user took the lock before or after it


def test_rcu_barrier_waits_for_a_callback_with_scheduling_points() -> None:
    expect_pass(Prog(setup_with_lock, [barrier_after_locking_callback], rcu=True, final=ran_before))


# -- misuse -------------------------------------------------------------------------------
def test_unbalanced_rcu_read_unlock_warns() -> None:
    def t(s: Shared):
        yield from rcu_read_unlock()
    expect_violation(Prog(setup, [t]), "WARNING", "rcu_read_unlock() without rcu_read_lock()")


def list_setup() -> Shared:
    s = setup()
    head = kzalloc(list_head, "head")
    INIT_LIST_HEAD(head)
    node = kzalloc(list_head, "node")
    s.head, s.node = head, node
    return s


def test_list_next_or_null_rcu_outside_read_lock_is_suspicious() -> None:
    def t(s: Shared):
        yield from list_add_rcu(s.node, s.head)
        yield from list_next_or_null_rcu(s.head, s.node)
    expect_violation(Prog(list_setup, [t]), "suspicious RCU usage",
                     "list_next_or_null_rcu() outside rcu_read_lock()")


def test_list_next_or_null_rcu_inside_read_lock_is_fine() -> None:
    def t(s: Shared):
        yield from list_add_rcu(s.node, s.head)
        yield from rcu_read_lock()
        log(s.b, (yield from list_next_or_null_rcu(s.head, s.node)))
        yield from rcu_read_unlock()
    assert outcomes(Prog(list_setup, [t], observe=lambda s: s.b.log)) == {(None,)}


def test_callback_daemon_keeps_no_locals_of_the_callback_it_ran() -> None:
    """Once a callback has run, the RCU daemon waits for the next one fingerprinting as it
    did before any: what it ran last is dead, and states differing only in it are one
    state (the cache would otherwise tell them apart)."""
    def updater_twice(s: Shared):
        yield from call_rcu(s.b, lambda b: None)
        yield from call_rcu(s.gp.ptr, free_obj)
        yield from rcu_barrier()  # (the run ends when this thread does)

    ex = Execution(Prog(setup, [updater_twice], rcu=True))
    rcu = next(tid for tid, t in enumerate(ex.threads) if t.name == "rcu")
    waiting = ex.fps[rcu]
    ran = 0
    while enabled := ex.enabled():
        tid, _ = enabled[-1]  # the daemon as soon as it can run
        assert ex.step(enabled[-1]) is None
        if tid == rcu:
            ran += 1
            assert ex.fps[rcu] == waiting
    assert ran == 2
