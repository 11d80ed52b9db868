"""struct list_head and the RCU list API (include/linux/rculist.h), and the two plain
mutators of include/linux/list.h that lock-protected lists use (``list_add``, ``list_del``).

Mutations (``list_add_rcu``, ``list_del_rcu``) are single scheduling points: on a
sequentially consistent machine ``rcu_assign_pointer`` makes the new node visible whole
or not at all. ``list_del_rcu`` keeps ``next`` and poisons ``prev``, so a reader standing
on a deleted node still reaches its old successor. Readers (``list_*_rcu``) are points
too and complain, like lockdep's RCU checking, when used outside a read-side section.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from tdpmmu.explore.runtime import Op, inline, primitive, world
from tdpmmu.kernel.memory import Field, Struct
from tdpmmu.kernel.rcu import rcu_read_lock_held

LIST_POISON1 = "LIST_POISON1"
LIST_POISON2 = "LIST_POISON2"


class list_head(Struct):
    next = Field(None)
    prev = Field(None)


def INIT_LIST_HEAD(head: list_head) -> None:
    head.next = head
    head.prev = head


def list_empty(head: list_head) -> bool:
    return bool(head.next == head)


def __list_add(new: list_head, prev: list_head, nxt: list_head) -> None:
    """Link ``new`` between two neighbours (plain stores: the callers' step is atomic)."""
    new.next = nxt
    new.prev = prev
    prev.next = new
    nxt.prev = new


def __list_del(entry: list_head) -> None:
    """Make ``entry``'s neighbours point at each other; ``entry``'s own pointers stay."""
    nxt, prv = entry.next, entry.prev
    nxt.prev = prv
    prv.next = nxt


def _check_rcu(what: str) -> None:
    if not rcu_read_lock_held():
        world().report("suspicious RCU usage", f"{what} outside rcu_read_lock()")


@primitive
def list_add_rcu(new: list_head, head: list_head) -> Generator[Op, int, None]:
    yield Op("list_add_rcu", new.container(), head)
    __list_add(new, head, head.next)


@primitive
def list_del_rcu(entry: list_head) -> Generator[Op, int, None]:
    yield Op("list_del_rcu", entry.container())
    __list_del(entry)
    entry.prev = LIST_POISON2


@primitive
def list_first_or_null_rcu(head: list_head) -> Generator[Op, int, list_head | None]:
    yield Op("list_first_or_null_rcu", head)
    _check_rcu("list_first_or_null_rcu()")
    first: list_head = head.next
    return None if first == head else first


@primitive
def list_next_or_null_rcu(head: list_head, ptr: list_head) -> Generator[Op, int, list_head | None]:
    yield Op("list_next_or_null_rcu", ptr.container())
    _check_rcu("list_next_or_null_rcu()")
    nxt: list_head = ptr.next
    return None if nxt == head else nxt


# The two readers above on a kernel without CONFIG_PROVE_RCU: no lockdep-RCU splat when
# called outside rcu_read_lock(), so what a missing read-side section costs shows as the
# use-after-free itself. For mutants; @inline, so that a splat names their caller.
@inline
@primitive
def list_first_or_null_unchecked(head: list_head) -> Generator[Op, int, list_head | None]:
    """``list_first_or_null_rcu`` without CONFIG_PROVE_RCU."""
    yield Op("list_first_or_null_rcu", head)
    first: list_head = head.next
    return None if first == head else first


@inline
@primitive
def list_next_or_null_unchecked(head: list_head, ptr: list_head) -> Generator[Op, int, list_head | None]:
    """``list_next_or_null_rcu`` without CONFIG_PROVE_RCU."""
    yield Op("list_next_or_null_rcu", ptr.container())
    nxt: list_head = ptr.next
    return None if nxt == head else nxt


# include/linux/list.h: for lists every user walks and changes under one lock (v5.11's
# tdp_mmu_roots under mmu_lock). Single steps like the RCU mutators; ``list_del`` poisons
# both pointers, so only a walker that read ``next`` before the deletion may go on.
@primitive
def list_add(new: list_head, head: list_head) -> Generator[Op, int, None]:
    yield Op("list_add", new.container(), head)
    __list_add(new, head, head.next)


@primitive
def list_del(entry: list_head) -> Generator[Op, int, None]:
    yield Op("list_del", entry.container())
    __list_del(entry)
    entry.next = LIST_POISON1
    entry.prev = LIST_POISON2


def list_for_each(head: list_head) -> Iterator[list_head]:
    """Plain walk (``list_for_each_entry``): no scheduling points, so it is only correct
    while every mutator is excluded; callers assert the lock that guarantees it."""
    pos = head.next
    while pos != head:
        yield pos
        pos = pos.next
