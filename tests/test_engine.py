"""The engine: it finds the classic bugs (lost update, AB-BA deadlock, refcount race,
use-after-free), turns model exceptions into violations, bounds runaway threads, stops at
its limits, and every counterexample replays."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, expect_pass, expect_violation, explore, log, outcomes
from tdpmmu.explore.execution import Execution
from tdpmmu.explore.runtime import Op
from tdpmmu.kernel.atomic import READ_ONCE, WRITE_ONCE
from tdpmmu.kernel.memory import Embedded, Field, Struct, kfree, kzalloc
from tdpmmu.kernel.rcu import call_rcu, rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.refcount import refcount_dec_and_test, refcount_inc, refcount_inc_not_zero, refcount_t
from tdpmmu.kernel.sched import need_resched
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock, spinlock_t


def setup() -> Shared:
    return Shared(b=kzalloc(Box, "b"), a=kzalloc(spinlock_t, "A"), l2=kzalloc(spinlock_t, "B"))


def n_is_2(s: Shared) -> str | None:
    return None if s.b.n == 2 else f"n = {s.b.n}, expected 2"


# -- lost update --------------------------------------------------------------------------
def racy_inc(s: Shared):
    v = yield from READ_ONCE(s.b, "n")
    yield from WRITE_ONCE(s.b, "n", v + 1)


def locked_inc(s: Shared):
    yield from spin_lock(s.a)
    v = s.b.n
    yield from WRITE_ONCE(s.b, "n", v + 1)  # a point inside the critical section
    yield from spin_unlock(s.a)


def test_finds_lost_update() -> None:
    prog = Prog(setup, [("t0", racy_inc), ("t1", racy_inc)], final=n_is_2)
    result = expect_violation(prog, "final-check", "n = 1")
    # The counterexample is the classic one: both reads happen before either write.
    actions = [step.action.split("(")[0] for step in result.trace]
    assert actions[:2] == ["READ_ONCE", "READ_ONCE"], actions
    assert {step.thread for step in result.trace[:2]} == {"t0", "t1"}


def test_lost_update_outcomes() -> None:
    prog = Prog(setup, [("t0", racy_inc), ("t1", racy_inc)], observe=lambda s: s.b.n)
    assert outcomes(prog) == {1, 2}


def test_spinlock_prevents_lost_update() -> None:
    prog = Prog(setup, [("t0", locked_inc), ("t1", locked_inc), ("t2", locked_inc)],
                final=lambda s: None if s.b.n == 3 else f"n = {s.b.n}")
    result = expect_pass(prog)
    assert result.stats.executions > 1  # several interleavings were really explored


# -- deadlock -----------------------------------------------------------------------------
def lock_ab(s: Shared):
    yield from spin_lock(s.a)
    yield from spin_lock(s.l2)
    yield from spin_unlock(s.l2)
    yield from spin_unlock(s.a)


def lock_ba(s: Shared):
    yield from spin_lock(s.l2)
    yield from spin_lock(s.a)
    yield from spin_unlock(s.a)
    yield from spin_unlock(s.l2)


def test_finds_abba_deadlock() -> None:
    result = expect_violation(Prog(setup, [lock_ab, lock_ba]), "deadlock", "every live thread is blocked")
    assert "lock_ab waits in spin_lock(B)" in result.violation.message
    assert "lock_ba waits in spin_lock(A)" in result.violation.message


def test_same_lock_order_has_no_deadlock() -> None:
    expect_pass(Prog(setup, [("t0", lock_ab), ("t1", lock_ab)]))


# -- refcount race and use-after-free -------------------------------------------------------
class Obj(Struct):
    C_NAME = "obj"
    ref = Embedded(refcount_t)
    val = Field(0)


class Holder(Struct):
    C_NAME = "holder"
    ptr = Field(None)
    got = Field(0)


def free_obj(obj: Obj) -> None:
    kfree(obj)


def obj_setup() -> Shared:
    h = kzalloc(Holder, "holder")
    obj = kzalloc(Obj, "obj", val=42)
    obj.ref.refs = 1  # the holder's reference
    h.ptr = obj
    return Shared(h=h)


def owner_put(s: Shared):
    """Unpublish the object, drop the holder's reference, free it after a grace period."""
    obj = yield from READ_ONCE(s.h, "ptr")
    yield from WRITE_ONCE(s.h, "ptr", None)
    if (yield from refcount_dec_and_test(obj.ref)):
        yield from call_rcu(obj, free_obj)


def put(obj: Obj):
    if (yield from refcount_dec_and_test(obj.ref)):
        yield from call_rcu(obj, free_obj)


def reader_inc(s: Shared):
    """Bug: a plain refcount_inc on an object whose count may already be 0."""
    yield from rcu_read_lock()
    obj = yield from READ_ONCE(s.h, "ptr")
    if obj is not None:
        yield from refcount_inc(obj.ref)
    yield from rcu_read_unlock()
    if obj is not None:
        s.h.got = obj.val
        yield from put(obj)


def reader_inc_not_zero(s: Shared):
    yield from rcu_read_lock()
    obj = yield from READ_ONCE(s.h, "ptr")
    ok = obj is not None and (yield from refcount_inc_not_zero(obj.ref))
    yield from rcu_read_unlock()
    if ok:
        s.h.got = obj.val  # safe: we hold a reference
        yield from put(obj)


def reader_no_rcu(s: Shared):
    """Bug: no rcu_read_lock(), so the grace period does not wait for this reader."""
    obj = yield from READ_ONCE(s.h, "ptr")
    if obj is not None and (yield from refcount_inc_not_zero(obj.ref)):
        yield from put(obj)


def test_finds_refcount_addition_on_zero() -> None:
    prog = Prog(obj_setup, [owner_put, reader_inc], rcu=True)
    expect_violation(prog, "refcount", "addition on 0")


def test_inc_not_zero_under_rcu_is_safe() -> None:
    prog = Prog(obj_setup, [owner_put, reader_inc_not_zero], rcu=True, observe=lambda s: s.h.got)
    assert outcomes(prog) == {0, 42}  # the reader either lost the race or got the object


def test_finds_use_after_free_after_call_rcu() -> None:
    prog = Prog(obj_setup, [owner_put, reader_no_rcu], rcu=True)
    result = expect_violation(prog, "use-after-free", "of freed obj")
    # The object was freed by the RCU callback, on the daemon, before the reader touched it.
    assert any(step.action.startswith("rcu_do_batch") for step in result.trace)
    assert result.violation.thread == "reader_no_rcu"


# -- model errors -------------------------------------------------------------------------
def crasher(s: Shared):
    yield from WRITE_ONCE(s.b, "n", 1)
    _ = 1 // (s.b.n - 1)


def test_model_exception_is_a_model_error() -> None:
    result = expect_violation(Prog(setup, [crasher, racy_inc]), "model-error", "ZeroDivisionError")
    assert result.violation.function == "crasher"
    assert "Traceback" in result.violation.details


def crash_before_first_point(s: Shared):
    raise KeyError("no such thing")
    yield  # a generator


def test_model_exception_before_the_first_point() -> None:
    result = explore(Prog(setup, [crash_before_first_point, racy_inc]))
    assert result.verdict == "violation"
    assert result.violation.kind == "model-error" and "KeyError" in result.violation.message


def holds_a_list(s: Shared):
    items = [1, 2]  # a mutable local cannot be fingerprinted
    yield from WRITE_ONCE(s.b, "n", len(items))


def test_unhashable_local_is_a_model_error() -> None:
    expect_violation(Prog(setup, [holds_a_list]), "model-error", "unhashable local")


def store_one(s: Shared):
    yield from WRITE_ONCE(s.b, "n", 1)


def broken_invariant(s: Shared) -> str | None:
    return None if s.b.n == 0 else str(1 // 0)


def broken_final(s: Shared) -> str | None:
    return str({}["missing"])


def test_exception_in_check_state_is_a_model_error() -> None:
    result = explore(Prog(setup, [store_one], state=broken_invariant))
    assert result.verdict == "violation" and result.violation.kind == "model-error"


def test_exception_in_check_final_is_a_model_error() -> None:
    result = explore(Prog(setup, [store_one], final=broken_final))
    assert result.verdict == "violation" and result.violation.kind == "model-error"


# -- runaway threads ----------------------------------------------------------------------
def counts_forever(s: Shared):
    while True:
        yield from WRITE_ONCE(s.b, "n", s.b.n + 1)


def spins_forever(s: Shared):
    while (yield from READ_ONCE(s.b, "flag")) == 0:  # nobody ever sets the flag
        pass


@pytest.mark.parametrize("cache", [True, False])
def test_unbounded_loop_is_a_livelock(cache: bool) -> None:
    result = expect_violation(Prog(setup, [counts_forever, store_one]), "livelock",
                              "counts_forever took more than 20 steps", cache=cache, max_steps=20)
    assert result.violation.thread == "counts_forever"
    assert len([t for t, _ in result.schedule if t == 0]) == 21


def test_spin_forever_is_a_livelock_without_cache() -> None:
    expect_violation(Prog(setup, [spins_forever]), "livelock", cache=False, max_steps=20)


def test_spin_forever_is_a_livelock_with_cache() -> None:
    result = explore(Prog(setup, [spins_forever]), cache=True, max_steps=20)
    assert result.verdict == "violation" and result.violation.kind == "livelock"


def test_bounded_spin_wait_passes_with_cache() -> None:
    """A spin-wait that another thread ends is fine (the cache folds the spinning)."""
    def setter(s: Shared):
        yield from WRITE_ONCE(s.b, "flag", 1)
    expect_pass(Prog(setup, [spins_forever, setter]))


# -- limits -------------------------------------------------------------------------------
def many_steps(s: Shared):
    for i in range(6):
        yield from WRITE_ONCE(s.b, "n", i)  # the same field: every order is a distinct path


def big_program() -> Prog:
    return Prog(setup, [("t0", many_steps), ("t1", many_steps), ("t2", many_steps)])


def test_max_states_gives_incomplete() -> None:
    result = explore(big_program(), cache=False, max_states=500)
    assert result.verdict == "incomplete"
    assert "max-states 500" in result.reason
    assert result.violation is None
    assert result.stats.states <= 501


def test_time_limit_gives_incomplete() -> None:
    result = explore(big_program(), cache=False, time_limit=0.05)
    assert result.verdict == "incomplete"
    assert "time-limit" in result.reason
    assert result.stats.seconds < 5


def test_limits_not_reached_still_pass() -> None:
    result = explore(big_program(), cache=True, max_states=100_000, time_limit=60)
    assert result.verdict == "pass" and not result.reason


# -- nondeterministic branches and replay ----------------------------------------------------
def branches(s: Shared):
    if (yield from need_resched()):
        log(s.b, "resched")
    else:
        log(s.b, "carry on")


def test_both_branches_are_explored() -> None:
    prog = Prog(setup, [branches], observe=lambda s: s.b.log)
    assert outcomes(prog) == {("resched",), ("carry on",)}


def test_branch_choice_is_in_the_schedule() -> None:
    result = expect_violation(Prog(setup, [branches], final=lambda s: "resched" in s.b.log and "took it"),
                              "final-check")
    assert result.schedule == [(0, 1)]


def test_violation_replays_with_execution_replay() -> None:
    prog = Prog(obj_setup, [owner_put, reader_inc], rcu=True)
    result = explore(prog)
    assert result.verdict == "violation"
    for _ in range(3):  # deterministic: every fresh replay ends the same way
        ex = Execution.replay(prog, result.schedule)
        assert ex.world.violation is not None
        assert ex.world.violation.kind == result.violation.kind == "refcount"
        assert ex.world.violation.message == result.violation.message
    traced = Execution.replay(prog, result.schedule, tracing=True)
    assert [st.thread for st in traced.trace] == [st.thread for st in result.trace]
    assert len(result.trace) == len(result.schedule)


def test_replayed_trace_records_notes() -> None:
    result = expect_violation(Prog(obj_setup, [owner_put, reader_inc], rcu=True), "refcount")
    notes = [n for st in result.trace for n in st.notes]
    assert "1 -> 0: last reference" in notes


def test_daemon_does_not_keep_the_execution_alive() -> None:
    """The RCU daemon loops forever; an execution ends when the other threads are done."""
    def noop(s: Shared):
        yield Op("noop")
    result = expect_pass(Prog(setup, [noop], rcu=True))
    assert result.stats.executions == 1
