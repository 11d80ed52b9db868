"""rwlock_t (qrwlock): readers share, writers exclude, queued writers hold back new
readers when the lock is fair, misuse is reported."""

from __future__ import annotations

import pytest

from conftest import Box, Prog, Shared, expect_pass, expect_violation, log, me, outcomes
from tdpmmu.explore.runtime import world
from tdpmmu.kernel.atomic import READ_ONCE, WRITE_ONCE
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.rwlock import (
    NO_WRITER,
    read_lock,
    read_unlock,
    rwlock_is_contended,
    rwlock_t,
    write_lock,
    write_unlock,
)
from tdpmmu.kernel.sched import cond_resched_rwlock_read, cond_resched_rwlock_write
from tdpmmu.kernel.wait import wait_event


def make_setup(fair: bool = True):
    def setup() -> Shared:
        return Shared(b=kzalloc(Box, "b"), l=kzalloc(rwlock_t, "lock", fair=fair))
    return setup


setup = make_setup()


def holders_ok(s: Shared) -> str | None:
    """Never a writer together with readers; never a writer id that is not a thread."""
    lock = s.l
    if lock.writer != NO_WRITER and lock.readers:
        return f"writer T{lock.writer} with readers {sorted(lock.readers)}"
    return None


# -- sharing and exclusion ---------------------------------------------------------------
def reader_waits_for_company(s: Shared):
    """Holds the read lock until the other thread is inside too: only if they share."""
    yield from read_lock(s.l)
    s.b.n += 1
    yield from wait_event("both inside", lambda: s.b.n == 2)
    yield from read_unlock(s.l)


def writer_waits_for_company(s: Shared):
    yield from write_lock(s.l)
    s.b.n += 1
    yield from wait_event("both inside", lambda: s.b.n == 2)
    yield from write_unlock(s.l)


def test_readers_share() -> None:
    expect_pass(Prog(setup, [("r0", reader_waits_for_company), ("r1", reader_waits_for_company)],
                     state=holders_ok))


def test_writer_excludes_reader() -> None:
    expect_violation(Prog(setup, [reader_waits_for_company, writer_waits_for_company]),
                     "deadlock", "both inside")


def test_writer_excludes_writer() -> None:
    expect_violation(Prog(setup, [("w0", writer_waits_for_company), ("w1", writer_waits_for_company)]),
                     "deadlock")


def locked_rmw(s: Shared, lock_fn, unlock_fn):
    yield from lock_fn(s.l)
    v = s.b.n
    yield from WRITE_ONCE(s.b, "n", v + 1)
    yield from unlock_fn(s.l)


def read_rmw(s: Shared):
    yield from locked_rmw(s, read_lock, read_unlock)


def write_rmw(s: Shared):
    yield from locked_rmw(s, write_lock, write_unlock)


def two_done(s: Shared) -> str | None:
    return None if s.b.n == 2 else f"n = {s.b.n}"


def test_read_lock_does_not_protect_writes() -> None:
    """Readers really run together: a read-modify-write under the read lock loses updates."""
    expect_violation(Prog(setup, [("r0", read_rmw), ("r1", read_rmw)], final=two_done),
                     "final-check", "n = 1")


def test_write_lock_protects_writes() -> None:
    expect_pass(Prog(setup, [("w0", write_rmw), ("w1", write_rmw)], final=two_done, state=holders_ok))


def reader_reads_twice(s: Shared):
    yield from read_lock(s.l)
    first = s.b.n
    second = yield from READ_ONCE(s.b, "n")
    yield from read_unlock(s.l)
    log(s.b, (first, second))


def unlocked_reader_reads_twice(s: Shared):
    first = yield from READ_ONCE(s.b, "n")
    second = yield from READ_ONCE(s.b, "n")
    log(s.b, (first, second))


def writer_two_stores(s: Shared):
    yield from write_lock(s.l)
    yield from WRITE_ONCE(s.b, "n", 1)
    yield from WRITE_ONCE(s.b, "n", 2)
    yield from write_unlock(s.l)


def stable_reads(s: Shared) -> str | None:
    first, second = s.b.log[0]
    return None if first == second else f"reader saw {first} then {second}"


def test_writer_excludes_readers_observably() -> None:
    prog = Prog(setup, [reader_reads_twice, writer_two_stores], final=stable_reads, state=holders_ok,
                observe=lambda s: s.b.log)
    assert outcomes(prog) == {((0, 0),), ((2, 2),)}


def test_unlocked_reader_sees_the_writer_midway() -> None:
    expect_violation(Prog(setup, [unlocked_reader_reads_twice, writer_two_stores], final=stable_reads),
                     "final-check", "reader saw")


# -- queued-writer fairness ---------------------------------------------------------------
def reader_a(s: Shared):
    """Holds the lock until writer W has queued behind it."""
    yield from read_lock(s.l)
    log(s.b, "A")
    yield from wait_event("W queued", lambda: rwlock_is_contended(s.l))
    yield from read_unlock(s.l)


def writer_w(s: Shared):
    yield from wait_event("A holds", lambda: "A" in s.b.log)
    yield from write_lock(s.l)  # A holds it: W must queue
    log(s.b, "W")
    yield from write_unlock(s.l)


def reader_b(s: Shared):
    """Arrives once W is queued (or, if it was not scheduled in time, once W is done)."""
    yield from wait_event("W queued", lambda: rwlock_is_contended(s.l) or "W" in s.b.log)
    yield from read_lock(s.l)
    log(s.b, "B")
    yield from read_unlock(s.l)


def b_after_w(s: Shared) -> str | None:
    order = s.b.log
    return None if order.index("W") < order.index("B") else f"reader B overtook queued writer W: {order}"


def fairness_prog(fair: bool) -> Prog:
    return Prog(make_setup(fair), [reader_a, writer_w, reader_b], final=b_after_w, state=holders_ok,
                observe=lambda s: s.b.log)


def test_fair_lock_new_reader_waits_behind_queued_writer() -> None:
    prog = fairness_prog(fair=True)
    assert outcomes(prog) == {("A", "W", "B")}


def test_unfair_lock_lets_reader_overtake() -> None:
    expect_violation(fairness_prog(fair=False), "final-check", "overtook")


def test_unfair_lock_outcomes() -> None:
    prog = fairness_prog(fair=False)
    prog.final = None
    assert outcomes(prog) == {("A", "W", "B"), ("A", "B", "W")}


def reader_holds_until_two_writers_queue(s: Shared):
    yield from read_lock(s.l)
    log(s.b, "R")
    yield from wait_event("two writers queued", lambda: len(s.l.waiting_writers) == 2)
    log(s.b, tuple(int(t) for t in s.l.waiting_writers))  # the queue order
    yield from read_unlock(s.l)


def queued_writer(s: Shared):
    yield from wait_event("R holds", lambda: "R" in s.b.log)
    yield from write_lock(s.l)
    log(s.b, int(world().tid))
    yield from write_unlock(s.l)


def test_waiting_writers_get_the_lock_in_fifo_order() -> None:
    def fifo(s: Shared) -> str | None:
        _, queue, *acquired = s.b.log
        return None if tuple(acquired) == queue else f"queued {queue}, acquired {acquired}"
    prog = Prog(setup, [reader_holds_until_two_writers_queue, ("w1", queued_writer), ("w2", queued_writer)],
                final=fifo, observe=lambda s: s.b.log)
    assert outcomes(prog) == {("R", (1, 2), 1, 2), ("R", (2, 1), 2, 1)}


# -- misuse -------------------------------------------------------------------------------
def recursive_reader(s: Shared):
    yield from read_lock(s.l)
    yield from read_lock(s.l)
    yield from read_unlock(s.l)


def test_recursive_read_lock_is_reported() -> None:
    expect_violation(Prog(setup, [recursive_reader]), "deadlock", "recursive read_lock(lock)")


def write_unlocker(s: Shared):
    yield from write_unlock(s.l)


def test_write_unlock_without_holding_is_lockdep() -> None:
    expect_violation(Prog(setup, [write_unlocker]), "lockdep", "write_unlock(lock) by write_unlocker")


def owner_writer(s: Shared):
    yield from write_lock(s.l)
    yield from wait_event("intruder tried", lambda: s.b.flag == 1)
    yield from write_unlock(s.l)


def intruder(s: Shared):
    yield from wait_event("owner holds", lambda: s.l.writer != NO_WRITER)
    s.b.flag = 1
    yield from write_unlock(s.l)  # not ours


def test_write_unlock_by_non_owner_is_lockdep() -> None:
    result = expect_violation(Prog(setup, [owner_writer, intruder]), "lockdep",
                              "which does not hold it for write")
    assert result.violation.thread == "intruder"


def read_unlocker(s: Shared):
    yield from read_unlock(s.l)


def test_read_unlock_without_holding_is_lockdep() -> None:
    expect_violation(Prog(setup, [read_unlocker]), "lockdep", "does not hold it for read")


def upgrader(s: Shared):
    yield from read_lock(s.l)
    yield from write_lock(s.l)


def test_write_lock_while_holding_read_is_reported() -> None:
    expect_violation(Prog(setup, [upgrader]), "deadlock", "already holds it")


def read_while_writing(s: Shared):
    yield from write_lock(s.l)
    yield from read_lock(s.l)


def test_read_lock_while_holding_write_deadlocks() -> None:
    expect_violation(Prog(setup, [read_while_writing]), "deadlock", "read_lock(lock)")


# -- cond_resched_rwlock_read/_write -----------------------------------------------------------
def resched_reader(s: Shared, resched: bool | None):
    yield from read_lock(s.l)
    first = s.b.n
    yield from cond_resched_rwlock_read(s.l, resched=resched)
    second = yield from READ_ONCE(s.b, "n")
    yield from read_unlock(s.l)
    log(s.b, (first, second))


def one_writer(s: Shared):
    yield from write_lock(s.l)
    yield from WRITE_ONCE(s.b, "n", 1)
    yield from write_unlock(s.l)


@pytest.mark.parametrize("fair", [True, False])
def test_cond_resched_rwlock_read_lets_a_writer_in(fair: bool) -> None:
    def reader(s: Shared):
        yield from resched_reader(s, None)  # both branches explored
    prog = Prog(make_setup(fair), [reader, one_writer], final=stable_reads, state=holders_ok)
    result = expect_violation(prog, "final-check", "reader saw 0 then 1")
    assert (0, 1) in result.schedule  # the reader took the "drop the lock" branch


def test_cond_resched_rwlock_read_outcomes() -> None:
    def reader(s: Shared):
        yield from resched_reader(s, None)
    prog = Prog(setup, [reader, one_writer], state=holders_ok, observe=lambda s: s.b.log)
    assert outcomes(prog) == {((0, 0),), ((1, 1),), ((0, 1),)}


def test_without_resched_the_read_section_is_stable() -> None:
    def reader(s: Shared):
        yield from resched_reader(s, False)
    expect_pass(Prog(setup, [reader, one_writer], final=stable_reads, state=holders_ok))


def test_cond_resched_rwlock_read_without_the_lock_is_lockdep() -> None:
    def reader(s: Shared):
        yield from cond_resched_rwlock_read(s.l)
    expect_violation(Prog(setup, [reader]), "lockdep", "lockdep_assert_held_read")


def test_cond_resched_rwlock_write_lets_a_reader_in() -> None:
    def writer(s: Shared):
        yield from write_lock(s.l)
        yield from WRITE_ONCE(s.b, "n", 1)
        yield from cond_resched_rwlock_write(s.l)
        yield from WRITE_ONCE(s.b, "n", 2)
        yield from write_unlock(s.l)

    def reader(s: Shared):
        yield from read_lock(s.l)
        log(s.b, s.b.n)
        yield from read_unlock(s.l)
    prog = Prog(setup, [writer, reader], state=holders_ok, observe=lambda s: s.b.log)
    assert outcomes(prog) == {(0,), (1,), (2,)}


def test_me_helper_names_threads() -> None:
    def named(s: Shared):
        yield from read_lock(s.l)
        log(s.b, me())
        yield from read_unlock(s.l)
    assert outcomes(Prog(setup, [named], observe=lambda s: s.b.log)) == {("named",)}
