"""struct page and its reference count (include/linux/mm.h), as far as KVM sees them.

KVM's SPTEs hold no page reference: KVM relies on mmu_notifiers to drop every SPTE
before the mm frees the page. So a page's lifetime is the mm's mapping (one reference)
plus transient ``get_page``s (a fault holds one from gup to ``kvm_release_pfn_clean``).
When the count reaches zero the page is freed, and poisoned: KVM touching it later (the
A/D write-back of a zapped SPTE) is a use-after-free.
"""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, primitive, world
from tdpmmu.kernel.memory import Field, Struct, kfree, kzalloc, set_item


class page(Struct):
    C_NAME = "page"
    _refcount = Field(0)
    flags = Field(frozenset())  # PG_referenced / PG_dirty, set by KVM's A/D write-back


def alloc_page(name: str = "") -> page:
    """A new page with one reference (the caller's, e.g. the mm's mapping)."""
    p = kzalloc(page, name=name)
    p._refcount = 1
    return p


@primitive
def get_page(p: page) -> Generator[Op, int, None]:
    yield Op("get_page", p)
    p._refcount += 1


@primitive
def put_page(p: page) -> Generator[Op, int, bool]:
    """Drop a reference; True if it was the last and the page is now freed."""
    yield Op("put_page", p)
    n = p._refcount - 1
    p._refcount = n
    if n:
        return False
    world().note("{!r} freed", p)
    kfree(p)
    return True


def mark_page_accessed(p: page) -> None:
    """Not a scheduling point: a flag update on a page the caller must keep alive."""
    p.flags = p.flags | {"PG_referenced"}


class mm_struct(Struct):
    """The VMM's address space, reduced to what KVM faults on: which page backs each
    guest frame (one memslot maps gfn N at hva N)."""

    C_NAME = "mm"
    pte = Field(())  # pte[gfn]: the page mapped there, or None


@primitive
def get_user_page(mm: mm_struct, addr: int) -> Generator[Op, int, page]:
    """get_user_pages() of one page with FOLL_GET: faults a page in if none is mapped,
    and returns it with a reference for the caller."""
    yield Op("get_user_pages", f"{mm!r} hva {addr}")
    p = mm.pte[addr]
    if p is None:
        p = alloc_page()
        set_item(mm, "pte", addr, p)
        world().note("faulted in {!r}", p)
    p._refcount += 1
    return p  # type: ignore[no-any-return]
