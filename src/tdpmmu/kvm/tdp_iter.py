"""arch/x86/kvm/mmu/tdp_iter.c: the pre-order SPTE walk every TDP MMU operation uses.

The kernel's ``struct tdp_iter`` is mutated by the ``for_each_tdp_pte*`` macros. Here it
is an immutable value (so that a thread positioned mid-walk fingerprints by what it is,
not by identity) and each function returns the updated iterator. Reading an SPTE is a
plain read inside the current step, not a scheduling point: every SPTE *write* is a
cmpxchg that validates the value the walk read (``iter.old_spte``), so a race lost
between the read and the write shows at the write, as in the kernel. A walk positioned
in a page table holds the table itself (``pt_path``), so reading a table that was freed
under it is reported as a use-after-free.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

from tdpmmu.explore.runtime import Op, primitive
from tdpmmu.kernel.memory import set_item
from tdpmmu.kvm.spte import (
    KVM_PAGES_PER_HPAGE,
    SPTE_ENT_PER_PAGE,
    SPTE_INDEX,
    round_gfn_for_level,
    spte_clear_bits,
    spte_to_child_pt,
)

SptePtr = tuple[Any, int]  # (page table, index): the model's ``tdp_ptep_t``


class TdpIter(NamedTuple):
    root_level: int
    min_level: int
    level: int
    gfn: int
    next_last_level_gfn: int  # where to resume after a yield
    yielded_gfn: int  # next_last_level_gfn when the walk last (re)started
    pt_path: tuple[Any, ...]  # pt_path[level - 1]: the table being walked at level
    old_spte: object = None
    valid: bool = True
    yielded: bool = False

    @property
    def sptep(self) -> SptePtr:
        return self.pt_path[self.level - 1], SPTE_INDEX(self.gfn, self.level)


def kvm_tdp_mmu_read_spte(sptep: SptePtr) -> object:
    table, index = sptep
    return table.spt[index]


def kvm_tdp_mmu_write_spte(sptep: SptePtr, spte: object) -> None:
    table, index = sptep
    set_item(table, "spt", index, spte)


@primitive
def tdp_mmu_clear_spte_bits(sptep: SptePtr, old_spte: object, mask: str) -> Generator[Op, int, object]:
    """tdp_iter.h, for an SPTE it deems not volatile (the model has no Writable/Dirty
    bits, so every SPTE here): a plain store of ``old_spte & ~mask``, computed from the
    value the caller read earlier; correct only while nothing else can change the SPTE
    (mmu_lock held for write). The store is a scheduling point of its own, so that the
    window after the read is explored."""
    table, index = sptep
    new_spte = spte_clear_bits(old_spte, mask)
    yield Op("WRITE_ONCE", f"{table!r}[{index}]", f"{old_spte!r} -> {new_spte!r}")
    kvm_tdp_mmu_write_spte(sptep, new_spte)
    return old_spte


@primitive
def tdp_mmu_clear_spte_bits_atomic(sptep: SptePtr, mask: str) -> Generator[Op, int, object]:
    """``atomic64_fetch_and(~mask, sptep)`` (e29b74920e6f): clears the bits of whatever
    the SPTE holds now and returns that value."""
    table, index = sptep
    yield Op("atomic64_fetch_and", f"{table!r}[{index}]", f"~{mask}")
    old_spte = kvm_tdp_mmu_read_spte(sptep)
    kvm_tdp_mmu_write_spte(sptep, spte_clear_bits(old_spte, mask))
    return old_spte


def tdp_iter_refresh_sptep(it: TdpIter) -> TdpIter:
    return it._replace(old_spte=kvm_tdp_mmu_read_spte(it.sptep))


def tdp_iter_restart(it: TdpIter) -> TdpIter:
    """Start over from the root at ``next_last_level_gfn`` (after a yield, the tables
    on the old path may be gone)."""
    it = it._replace(yielded=False, yielded_gfn=it.next_last_level_gfn, level=it.root_level,
                     gfn=round_gfn_for_level(it.next_last_level_gfn, it.root_level), valid=True)
    return tdp_iter_refresh_sptep(it)


def tdp_iter_start(root: Any, min_level: int, next_last_level_gfn: int) -> TdpIter:
    level = root.role.level
    path = [None] * level
    path[level - 1] = root
    it = TdpIter(root_level=level, min_level=min_level, level=level, gfn=0,
                 next_last_level_gfn=next_last_level_gfn, yielded_gfn=next_last_level_gfn,
                 pt_path=tuple(path))
    return tdp_iter_restart(it)


def try_step_down(it: TdpIter) -> TdpIter | None:
    if it.level == it.min_level:
        return None
    # Re-read: the SPTE may have changed since the iterator read it.
    child = spte_to_child_pt(kvm_tdp_mmu_read_spte(it.sptep), it.level)
    if child is None:
        return None
    level = it.level - 1
    path = list(it.pt_path)
    path[level - 1] = child
    it = it._replace(level=level, pt_path=tuple(path),
                     gfn=round_gfn_for_level(it.next_last_level_gfn, level))
    return tdp_iter_refresh_sptep(it)


def try_step_side(it: TdpIter) -> TdpIter | None:
    if SPTE_INDEX(it.gfn, it.level) == SPTE_ENT_PER_PAGE - 1:
        return None
    gfn = it.gfn + KVM_PAGES_PER_HPAGE(it.level)
    return tdp_iter_refresh_sptep(it._replace(gfn=gfn, next_last_level_gfn=gfn))


def try_step_up(it: TdpIter) -> TdpIter | None:
    if it.level == it.root_level:
        return None
    level = it.level + 1
    return tdp_iter_refresh_sptep(it._replace(level=level, gfn=round_gfn_for_level(it.gfn, level)))


def tdp_iter_next(it: TdpIter) -> TdpIter:
    if it.yielded:
        return tdp_iter_restart(it)
    down = try_step_down(it)
    if down is not None:
        return down
    while True:
        side = try_step_side(it)
        if side is not None:
            return side
        up = try_step_up(it)
        if up is None:
            return it._replace(valid=False)
        it = up


def tdp_iter_valid(it: TdpIter, end: int) -> bool:
    """The loop condition of ``for_each_tdp_pte_min_level``."""
    return it.valid and it.gfn < end
