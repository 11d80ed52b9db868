"""The RCU list API: list_del_rcu keeps ``next`` so a reader standing on a deleted node
reaches its successor; list_add_rcu publishes a fully initialized node in one step."""

from __future__ import annotations

from conftest import Box, Prog, Shared, expect_violation, log, outcomes
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import Embedded, Field, Struct, kfree, kzalloc
from tdpmmu.kernel.rcu import call_rcu, rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import (
    INIT_LIST_HEAD,
    LIST_POISON2,
    list_add_rcu,
    list_del_rcu,
    list_empty,
    list_first_or_null_rcu,
    list_for_each,
    list_head,
    list_next_or_null_rcu,
)
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock, spinlock_t


class Node(Struct):
    C_NAME = "node"
    link = Embedded(list_head)
    val = Field(0)


def add_tail_plain(new: list_head, head: list_head) -> None:
    """Setup only (no reader yet): plain list_add_tail."""
    last = head.prev
    new.next, new.prev = head, last
    last.next = new
    head.prev = new


def make_setup(*vals: int):
    def setup() -> Shared:
        head = kzalloc(list_head, "head")
        INIT_LIST_HEAD(head)
        nodes = tuple(kzalloc(Node, f"n{v}", val=v) for v in vals)
        for n in nodes:
            add_tail_plain(n.link, head)
        return Shared(b=kzalloc(Box, "b"), head=head, nodes=nodes, lock=kzalloc(spinlock_t, "lock"))
    return setup


def vals(s: Shared) -> tuple[int, ...]:
    return tuple(pos.container().val for pos in list_for_each(s.head))


def free_node(node: Node) -> None:
    kfree(node)


def walker(s: Shared):
    """Walk the list under rcu_read_lock; note when it steps off a node deleted under it."""
    yield from rcu_read_lock()
    seen: tuple[int, ...] = ()
    pos = yield from list_first_or_null_rcu(s.head)
    while pos is not None:
        seen = (*seen, pos.container().val)
        nxt = yield from list_next_or_null_rcu(s.head, pos)
        if pos.prev == LIST_POISON2:  # same step as the load of pos->next
            log(s.b, ("left deleted", pos.container().val, nxt.container().val if nxt else None))
        pos = nxt
    yield from rcu_read_unlock()
    log(s.b, seen)


def deleter(s: Shared):
    victim = s.nodes[1]
    yield from spin_lock(s.lock)
    yield from list_del_rcu(victim.link)
    yield from spin_unlock(s.lock)
    yield from call_rcu(victim, free_node)


def deleter_no_grace_period(s: Shared):
    victim = s.nodes[1]
    yield from spin_lock(s.lock)
    yield from list_del_rcu(victim.link)
    kfree(victim)  # bug: a reader may stand on it
    yield from spin_unlock(s.lock)


def test_list_del_rcu_keeps_next() -> None:
    def t(s: Shared):
        yield from list_del_rcu(s.nodes[1].link)
        b = s.nodes[1].link
        log(s.b, (b.next == s.nodes[2].link, b.prev, vals(s)))
    assert outcomes(Prog(make_setup(1, 2, 3), [t], observe=lambda s: s.b.log)) == {
        ((True, LIST_POISON2, (1, 3)),),
    }


def test_reader_on_deleted_node_reaches_successor() -> None:
    prog = Prog(make_setup(1, 2, 3), [walker, deleter], rcu=True, observe=lambda s: s.b.log)
    seen = outcomes(prog)
    walks = {log_[-1] for log_ in seen}
    assert walks == {(1, 2, 3), (1, 3)}  # never loses node 3, never sees a freed node
    # Non-vacuous: some execution deleted node 2 while the reader stood on it.
    assert ("left deleted", 2, 3) in {e for log_ in seen for e in log_[:-1]}


def test_freeing_a_deleted_node_without_grace_period_is_found() -> None:
    expect_violation(Prog(make_setup(1, 2, 3), [walker, deleter_no_grace_period], rcu=True),
                     "use-after-free", "freed n2")


def publisher(s: Shared):
    yield from spin_lock(s.lock)
    n = kzalloc(Node, "new", val=7)  # initialized before it is published
    yield from list_add_rcu(n.link, s.head)
    yield from spin_unlock(s.lock)


def publisher_too_early(s: Shared):
    yield from spin_lock(s.lock)
    n = kzalloc(Node, "new")
    yield from list_add_rcu(n.link, s.head)
    yield from WRITE_ONCE(n, "val", 7)  # bug: initialized after publication
    yield from spin_unlock(s.lock)


def all_initialized(s: Shared) -> str | None:
    walk = s.b.log[-1]
    return f"reader saw an uninitialized node: {walk}" if 0 in walk else None


def test_list_add_rcu_publishes_atomically() -> None:
    prog = Prog(make_setup(1, 2), [walker, publisher], final=all_initialized,
                observe=lambda s: (s.b.log, vals(s)))
    assert outcomes(prog) == {(((1, 2),), (7, 1, 2)), (((7, 1, 2),), (7, 1, 2))}


def test_publishing_before_initializing_is_found() -> None:
    expect_violation(Prog(make_setup(1, 2), [walker, publisher_too_early], final=all_initialized),
                     "final-check", "uninitialized node: (0, 1, 2)")


def test_concurrent_add_and_delete() -> None:
    prog = Prog(make_setup(1, 2, 3), [walker, publisher, deleter], rcu=True, final=all_initialized,
                observe=lambda s: (s.b.log[-1], vals(s)))
    seen = outcomes(prog)
    assert {final for _, final in seen} == {(7, 1, 3)}
    assert {walk for walk, _ in seen} == {(1, 2, 3), (1, 3), (7, 1, 2, 3), (7, 1, 3)}


def test_empty_list() -> None:
    def t(s: Shared):
        yield from rcu_read_lock()
        log(s.b, ((yield from list_first_or_null_rcu(s.head)), list_empty(s.head)))
        yield from rcu_read_unlock()
    assert outcomes(Prog(make_setup(), [t], observe=lambda s: s.b.log)) == {((None, True),)}


def test_list_first_or_null_rcu_outside_read_lock_is_suspicious() -> None:
    def t(s: Shared):
        yield from list_first_or_null_rcu(s.head)
    expect_violation(Prog(make_setup(1), [t]), "suspicious RCU usage", "list_first_or_null_rcu()")


def test_walk_without_rcu_read_lock_is_suspicious() -> None:
    def lockless(s: Shared):
        pos = yield from list_first_or_null_rcu(s.head)
        del pos
    expect_violation(Prog(make_setup(1, 2, 3), [lockless, deleter], rcu=True), "suspicious RCU usage")


# -- list.h: the plain mutators, for lists changed and walked under one lock ------------------
def test_list_add_and_del_plain() -> None:
    from tdpmmu.kernel.rculist import LIST_POISON1, list_add, list_del

    def t(s: Shared):
        n2 = s.nodes[1]
        yield from list_del(n2.link)
        log(s.b, vals(s))
        log(s.b, (n2.link.next, n2.link.prev))
        yield from list_add(n2.link, s.head)
        log(s.b, vals(s))
    assert outcomes(Prog(make_setup(1, 2, 3), [t], observe=lambda s: s.b.log)) == {
        ((1, 3), (LIST_POISON1, LIST_POISON2), (2, 1, 3))}


def test_walk_under_the_lock_never_meets_a_deleted_node() -> None:
    """A walker that reads ``next`` under the lock the mutators hold sees the list before
    or after each deletion, never a poisoned pointer."""
    from tdpmmu.kernel.rculist import list_del

    def walker_locked(s: Shared):
        yield from spin_lock(s.lock)
        log(s.b, vals(s))
        yield from spin_unlock(s.lock)

    def deleter(s: Shared):
        yield from spin_lock(s.lock)
        yield from list_del(s.nodes[0].link)
        yield from spin_unlock(s.lock)
    got = outcomes(Prog(make_setup(1, 2), [walker_locked, deleter], observe=lambda s: s.b.log))
    assert got == {((1, 2),), ((2,),)}
