"""Regression corpus: the historical TDP MMU root bugs (kernel-protocol.md §5, B01..B15
and M1..M8) as mutants the checker must catch.

Each mutant is a mixin in the style of ``mutants.py``: it overrides as little as possible
of the kernel it is put in front of (``build_kernel``), and says which violation kinds
count as catching it. Bugs the model cannot express yet are rows without a mutant and
with a ``why_not``. ``run_corpus`` checks every expressible row, and the same scenario on
the row's *unmutated* kernel (which must pass: a violation there is a false positive).

Each row runs on the kernel of its bug's era (``versions/``), so that the mutation is
an override of the code the bug lived in: B01 on ``v5.11`` (a spinlock, a plain root
list, an int root count), B02's next-root-no-rcu and B03 on ``v5.13`` (the RCU root
list's first release), B04 and B05 on ``v5.16.19`` (one reference per root, before the
async workers), B07 and B08 on ``v6.1`` (the async-worker era, 5.18..6.5), B06 and B10 on
``v6.5`` (the same era with the TDP MMU's own root reference, edbdb43fc96b), B11 on ``v6.8`` (the
synchronous zap of v6.6..v6.8), B13 on ``v6.14`` (TDX mirror roots), B15 on
``v6.9+lockless-aging``; the series' own questions (M1..M8) on ``v6.9``. A mutation
whose code is unchanged in v6.9 is claimed there too (``Mutant.caught_on``). B02's other
three mutants stay on v6.9: on v5.13 nothing they break is reachable (docs/corpus.md,
"The v5.13 kernel").

This module also adds four scenarios (``CORPUS_SCENARIOS``): ``nested-pgd-switch`` (B08
needs a root cached in ``prev_roots``), with the few mmu.c functions it needs that the
base model lacks; ``unload-double-memslot-delete`` (made for B10's unlocked walk when
that row ran on v6.9; kept as a scenario, no row uses it now); ``root-reuse`` and
``hyperv-root-reuse`` (B07 (b)), the only ones that model TLBs (``kernel/tlb.py``), on
bare metal and under Hyper-V's EnlightenedNptTlb.

Results, traces and what each fix does: docs/corpus.md.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from tdpmmu.explore.execution import Schedule, TraceStep
from tdpmmu.explore.program import ThreadSpec
from tdpmmu.explore.result import Limits, Result
from tdpmmu.explore.runtime import Op, inline, primitive, world
from tdpmmu.kernel.bug import KVM_BUG_ON
from tdpmmu.kernel.lockdep import lockdep_assert_held
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.rculist import (
    LIST_POISON2,
    list_first_or_null_unchecked,
    list_head,
    list_next_or_null_unchecked,
)
from tdpmmu.kernel.refcount import refcount_inc
from tdpmmu.kernel.requests import kvm_make_all_cpus_request
from tdpmmu.kernel.rwlock import read_lock, read_unlock, write_lock, write_unlock
from tdpmmu.kernel.tlb import tlb
from tdpmmu.kvm.mutants import MUTANTS, Mutant, build_kernel
from tdpmmu.kvm.program import KvmProgram
from tdpmmu.kvm.scenarios import SCENARIOS, Scenario
from tdpmmu.kvm.structs import (
    INVALID_PAGE,
    KVM_MMU_NUM_PREV_ROOTS,
    KVM_MMU_ROOT_CURRENT,
    KVM_MMU_ROOT_PREVIOUS,
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    VALID_PAGE,
    Kvm,
    kvm_mmu,
    kvm_mmu_page,
    kvm_mmu_page_role,
    kvm_mmu_root_info,
    kvm_page_fault,
    kvm_vcpu,
)
from tdpmmu.kvm.tdp_mmu import kvm_mmu_page_as_id
from tdpmmu.kvm.versions import KERNELS, V5_11, V6_5
from tdpmmu.kvm.x86 import Kernel

Steps = Generator[Op, int, None]

# A mutant is a mixin put in front of a kernel class, so its super() is that kernel.
# Type checkers see it as a Kernel subclass; at run time it is a plain mixin.
if TYPE_CHECKING:
    Base = Kernel
    V5_11Base = V5_11  # the mutants of v5.11's code
    Base65 = V6_5  # the mutants of v6.5's code (the async worker with the TDP MMU's reference)
else:
    Base = V5_11Base = Base65 = object


# =====================================================================================
# Primitives the mutants need: list accesses that are *not* serialized or RCU-checked.
# The model's list_add_rcu/list_del_rcu are single steps because every caller holds
# tdp_mmu_pages_lock; a caller that does not hold it gets the real, two-store list_del.
# They are also @inline, so that a splat inside one names the kernel function calling
# it (traces skip primitives either way), as for the primitives of tdpmmu.kernel.
# =====================================================================================

@inline
@primitive
def list_del_rcu_unserialized(entry: list_head) -> Steps:
    """``list_del_rcu`` with no lock serializing it against other list mutators: its
    stores ``next->prev = prev`` and ``WRITE_ONCE(prev->next, next)`` are separate
    steps, so a concurrent ``list_add_rcu`` can land between them and be undone."""
    yield Op("list_del_rcu", entry.container(), "next->prev = prev")
    nxt, prv = entry.next, entry.prev
    nxt.prev = prv
    yield Op("list_del_rcu", entry.container(), "WRITE_ONCE(prev->next, next)")
    prv.next = nxt
    entry.prev = LIST_POISON2


@inline
@primitive
def list_next_plain(head: list_head, pos: list_head) -> Generator[Op, int, list_head | None]:
    """One step of a plain ``list_for_each_entry``: ``pos = pos->next`` (None at the
    head). Without a lock excluding the mutators, or RCU keeping the entries alive,
    each dereference is its own step."""
    yield Op("list_for_each_entry", "tdp_mmu_roots.next" if pos == head else f"{pos.container()!r}.link.next")
    nxt: list_head = pos.next
    return None if nxt == head else nxt


@inline
def list_first_plain(head: list_head) -> Generator[Op, int, list_head | None]:
    """The first step of a plain ``list_for_each_entry``: ``head->next``."""
    return (yield from list_next_plain(head, head))


# =====================================================================================
# Mutants
# =====================================================================================

class NextRootPlainDecrement(V5_11Base):
    """B01: ``tdp_mmu_next_root()`` (v5.11's yield-safe root iterator) drops its reference
    on the previous root with a plain ``kvm_mmu_put_root()``, a bare ``--root_count``
    whose result it ignores, instead of ``tdp_mmu_put_root()``, which frees the root
    when that was the last reference (the put a889ea54b3da added). If a vCPU dropped
    its own reference while the iterator yielded, the root stays on the list with count
    0: never freed, and the next ``kvm_mmu_get_root()`` of it hits ``BUG_ON``."""

    def tdp_mmu_next_root(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        if prev_root is None:
            return (yield from super().tdp_mmu_next_root(kvm, None, only_valid))
        pos = prev_root.link.next  # list_next_entry(root, link)
        yield from self.kvm_mmu_put_root(kvm, prev_root)  # the mutation: not tdp_mmu_put_root()
        return (yield from self.tdp_mmu_next_root_valid(kvm, pos))


class GetRootRefcountInc(Base):
    """B02: ``kvm_tdp_mmu_get_root()`` takes its reference with an unconditional
    ``refcount_inc()`` (the 5.12 ``atomic_inc`` before fb10129335ca/11cccf5c0472)
    instead of ``refcount_inc_not_zero()``: a reader under the read lock that meets a
    root whose final put is running resurrects it."""

    def kvm_tdp_mmu_get_root(self, root: kvm_mmu_page) -> Generator[Op, int, bool]:
        yield from refcount_inc(root.tdp_mmu_root_count)
        return True


class NextRootNoRcu(Base):
    """B02: ``tdp_mmu_next_root()`` walks the root list without ``rcu_read_lock()``
    (c0e64238ac53 "Protect the tdp_mmu_roots list with RCU" fixed the 5.12 walk). The
    kernel's CONFIG_PROVE_RCU check in the list accessors reports it."""

    def tdp_mmu_next_root(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        return (yield from self._next_root_without_rcu(kvm, prev_root, only_valid, checked=True))

    @inline
    def _next_root_without_rcu(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool, checked: bool
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        """tdp_mmu_next_root() with rcu_read_lock()/unlock() removed."""
        lockdep_assert_held(kvm.mmu_lock)
        if checked:
            next_root = yield from self.tdp_mmu_next_root_walk(kvm, prev_root, only_valid)
        else:
            next_root = yield from self.tdp_mmu_next_root_walk(
                kvm, prev_root, only_valid, list_first_or_null_unchecked, list_next_or_null_unchecked)
        if prev_root is not None:
            yield from self.kvm_tdp_mmu_put_root(kvm, prev_root)
        return next_root


class NextRootNoRcuUnchecked(NextRootNoRcu):
    """B02: as ``next-root-no-rcu``, on a kernel built without CONFIG_PROVE_RCU: nothing
    splats, so what the checker must find is the use-after-free itself (a final put's
    grace period does not wait for a walker outside any RCU read-side section)."""

    def tdp_mmu_next_root(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        return (yield from self._next_root_without_rcu(kvm, prev_root, only_valid, checked=False))


class PutRootNoPagesLock(Base):
    """B02: ``kvm_tdp_mmu_put_root()`` unlinks the root without taking
    ``tdp_mmu_pages_lock`` (2bdb3d84cebc era; the lock serializes list mutators that
    run under mmu_lock held for read). Its ``list_del_rcu`` then races with a vCPU's
    ``list_add_rcu`` in kvm_tdp_mmu_alloc_root(): the new root can be unlinked."""

    @inline
    def tdp_mmu_unlink_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        # The mutation: no spin_lock(&kvm->arch.tdp_mmu_pages_lock) around the unlink.
        yield from list_del_rcu_unserialized(root.link)


class NoStaleRootCheck(Base):
    """B05: the TDP page fault does not retry when the vCPU's root was invalidated
    (``is_page_fault_stale()`` without the ``is_obsolete_sp()`` check added by
    a955cad84cda, v5.16, nor 18c841e1f411's pending-request check): a fault installs an
    SPTE in an invalid root, possibly after the fast zap has passed it. Its kernel is
    v5.16.19, whose fault path v6.9 keeps: caught there too."""

    def is_page_fault_stale(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> bool:
        return self.mmu_invalidate_retry_gfn(vcpu.kvm, fault.mmu_seq, fault.gfn)


class ReflagInvalidRoots(Base65):
    """B06: ``kvm_tdp_mmu_invalidate_all_roots()`` (``v6.5``) schedules every root,
    including roots an earlier fast zap already invalidated and scheduled: a second work
    item is gifted the TDP MMU's reference, which the first one already put, and the
    reference is put twice. (614f6970aa70's own bug, readers taking references to
    invalid roots, needs a read-side root walk the model does not have: docs/corpus.md.)"""

    @inline
    def tdp_mmu_invalidate_and_schedule(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        # The mutation: no `if (!root->role.invalid)`.
        self.fast_zap_visits(root)
        self.tdp_mmu_set_root_invalid(kvm, root)
        world().note(f"{root!r} invalid")
        yield from self.tdp_mmu_schedule_zap_root(kvm, root)


class FreeObsoleteCurrentOnly(Base):
    """B08: ``__kvm_mmu_free_obsolete_roots()`` tests the *current* root where it means
    ``prev_roots[i]`` (the typo cf4a8693d97a fixed): an obsolete cached root keeps the
    vCPU's reference after KVM_REQ_MMU_FREE_OBSOLETE_ROOTS is serviced."""

    def _kvm_mmu_free_obsolete_roots(self, kvm: Kvm, mmu: kvm_mmu) -> Steps:
        roots_to_free = 0
        if self.is_obsolete_root(kvm, mmu.root.hpa):
            roots_to_free |= KVM_MMU_ROOT_CURRENT
        for i in range(KVM_MMU_NUM_PREV_ROOTS):
            if self.is_obsolete_root(kvm, mmu.root.hpa):  # the bug: mmu->prev_roots[i].hpa
                roots_to_free |= KVM_MMU_ROOT_PREVIOUS(i)
        if roots_to_free:
            yield from self.kvm_mmu_free_roots(kvm, mmu, roots_to_free)


class InvalidateUnlockedWalk(Base65):
    """B10 (b): ``kvm_tdp_mmu_invalidate_all_roots()`` walks the roots with a plain
    ``list_for_each_entry()`` outside any RCU read-side section, as the v2 of
    edbdb43fc96b did (``v6.5`` walks with ``list_for_each_entry_rcu()`` under
    ``rcu_read_lock()``, v3's fix). At VM destruction no mmu_lock is held (the lockdep
    assertion is waived), and the work item the walk has just queued, gifted the TDP
    MMU's reference, zaps the root and puts that last reference: the root is unlinked
    and freed under the walker, which then reads its ``link.next`` (syzbot's KASAN
    slab-use-after-free in kvm_tdp_mmu_invalidate_all_roots)."""

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        self.tdp_mmu_invalidate_lockdep(kvm)
        # The mutation: no rcu_read_lock(), and plain list reads.
        yield from self.tdp_mmu_invalidate_roots_walk(kvm, list_first_plain, list_next_plain)


class ZapInvalidatedAsIdFilter(Base):
    """B11: ``kvm_tdp_mmu_zap_invalidated_roots()`` walks with an address-space filter
    (the as_id argument ``for_each_tdp_mmu_root_yield_safe()`` took before 441a5dfcd968):
    SMM roots (as_id 1) are scheduled but never zapped, their list reference never put."""

    @inline
    def zap_invalidated_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        if kvm_mmu_page_as_id(root) != 0:  # the macro's `kvm_mmu_page_as_id(root) != as_id`
            return
        yield from super().zap_invalidated_root(kvm, root)


class KeepScheduledFlag(Base):
    """B11: ``kvm_tdp_mmu_zap_invalidated_roots()`` does not clear
    ``tdp_mmu_scheduled_root_to_zap``: a root that outlives the fast zap (a vCPU still
    holds it) is zapped and put again by the next one, a second put of the list
    reference."""

    @inline
    def zap_invalidated_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        if not root.tdp_mmu_scheduled_root_to_zap:
            return
        # The mutation: no `root->tdp_mmu_scheduled_root_to_zap = false`.
        KVM_BUG_ON(not root.role.invalid, kvm, "!root->role.invalid")
        yield from self.tdp_mmu_zap_root(kvm, root, True)
        yield from self.kvm_tdp_mmu_put_root(kvm, root)


class ScheduleOutsideWriteLock(Base):
    """B11: the fast zap sets ``tdp_mmu_scheduled_root_to_zap`` outside the write-side
    critical section that sets ``role.invalid``: it schedules the valid roots while
    holding mmu_lock for read, before kvm_tdp_mmu_invalidate_all_roots() runs under the
    write lock. "Scheduled implies invalid", on which Sean's answer to Yilun rests, no
    longer holds for readers (vCPUs allocating roots under the read lock)."""

    def kvm_mmu_zap_all_fast(self, kvm: Kvm) -> Steps:
        # The mutation: the flag store, under the read lock, before the write-side
        # section. (A patch moving it would also drop it from invalidate_all_roots();
        # keeping it there changes nothing here: the first state with a scheduled
        # valid root is already a violation.)
        yield from read_lock(kvm.mmu_lock)
        root = yield from self.tdp_mmu_next_root(kvm, None, True)
        while root is not None:
            root.tdp_mmu_scheduled_root_to_zap = True
            world().note("{!r} scheduled to zap", root)
            root = yield from self.tdp_mmu_next_root(kvm, root, True)
        yield from read_unlock(kvm.mmu_lock)
        yield from super().kvm_mmu_zap_all_fast(kvm)


class RequestAfterUnlock(Base):
    """M4 as stated: ``kvm_mmu_zap_all_fast()`` posts KVM_REQ_MMU_FREE_OBSOLETE_ROOTS
    after ``write_unlock()``. Not a bug without shadow pages, so not in CORPUS_MUTANTS:
    kept to show that the checker passes it (see the second M4 row)."""

    def kvm_mmu_zap_all_fast(self, kvm: Kvm) -> Steps:
        lockdep_assert_held(kvm.slots_lock)
        yield from write_lock(kvm.mmu_lock)
        kvm.arch.mmu_valid_gen = 0 if kvm.arch.mmu_valid_gen else 1
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        yield from write_unlock(kvm.mmu_lock)
        # The mutation: outside the critical section that invalidated the roots.
        yield from self.kvm_request_free_obsolete_roots(kvm)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm)


class RequestBeforeInvalidate(Base):
    """M4: ``kvm_mmu_zap_all_fast()`` posts KVM_REQ_MMU_FREE_OBSOLETE_ROOTS outside the
    write-side critical section that invalidates the roots, *before* it: a vCPU can
    service the request while its root is still valid, and nothing tells it to drop
    the root once it is invalidated; it runs the guest on it while its SPTEs are zapped
    without a TLB flush."""

    def kvm_mmu_zap_all_fast(self, kvm: Kvm) -> Steps:
        lockdep_assert_held(kvm.slots_lock)
        # The mutation: the request, before mmu_lock is taken for the invalidation.
        yield from kvm_make_all_cpus_request(kvm, KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, kvm.vcpus)
        yield from write_lock(kvm.mmu_lock)
        kvm.arch.mmu_valid_gen = 0 if kvm.arch.mmu_valid_gen else 1
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        # No request follows the invalidation: kvm.obsolete_roots_unannounced stays set.
        yield from write_unlock(kvm.mmu_lock)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm)


class BugOnBeforeScheduledCheck(Base):
    """M8: ``KVM_BUG_ON(!root->role.invalid)`` in kvm_tdp_mmu_zap_invalidated_roots()
    moved before the ``tdp_mmu_scheduled_root_to_zap`` check: it fires on a valid root
    a vCPU allocated under the read lock while the zap runs (Yilun's question)."""

    @inline
    def zap_invalidated_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        KVM_BUG_ON(not root.role.invalid, kvm, "!root->role.invalid")
        yield from super().zap_invalidated_root(kvm, root)


class HvFlushCurrentAsidOnly(Base):
    """B07 (b): ``svm_flush_tlb_current()`` as it was before e5c972c1fada, the ASID flush
    alone, as shipped from 5.18 (bb95dfb9e2df, efd995dae5eb) to 6.3. Under Hyper-V's
    EnlightenedNptTlb that flush leaves the translations the L0 derived from the NPT, so
    a root allocated at a freed root's frame (nCR3) inherits them: the defunct root's
    zap and free issued no flush, relying on the one at load."""

    @inline
    def kvm_x86_flush_tlb_current(self, vcpu: kvm_vcpu) -> None:
        if vcpu.arch.tlb is None:
            return
        # The mutation: no hyperv_flush_guest_mapping(root) first.
        self.svm_flush_tlb_asid(vcpu)


# =====================================================================================
# The nested-pgd-switch scenario (B08): a TDP root cached in prev_roots.
#
# With TDP enabled and L1 not using EPT/NPT for L2, L2 runs on root_mmu with
# role.guest_mode = 1, a different role.word from L1's root. On a nested transition
# kvm_mmu_new_pgd() -> fast_pgd_switch() -> cached_root_find_and_keep_current() rotates
# the current root into prev_roots[0] (keeping its reference) and frees the oldest
# cached one; kvm_mmu_reload() then loads a root for the new role. Modeled minimally:
# kvm_init_mmu() only recomputes root_role.guest_mode, then kvm_mmu_new_pgd() runs with
# the new role (in nested_vmx_load_cr3() the order of the two differs, and KVM also
# requests KVM_REQ_LOAD_MMU_PGD and flushes; none of that touches root references).
# The functions are module-level (they take the kernel) because the base model does not
# have them; they would be Mmu methods in mmu.py.
# =====================================================================================

def is_root_usable(root: kvm_mmu_root_info, pgd: int, role: kvm_mmu_page_role) -> bool:
    """mmu.c is_root_usable(): direct (TDP) roots ignore the pgd; the role word holds
    ``invalid``, so an invalidated cached root is never reused."""
    hpa = root.hpa
    if not VALID_PAGE(hpa):
        return False
    if not role.direct and pgd != root.pgd:
        return False
    return bool(hpa.role.word == role.word)


def _swap_current_with_prev(mmu: kvm_mmu, i: int) -> None:
    """``swap(mmu->root, mmu->prev_roots[i])`` (only hpa is modeled in prev_roots)."""
    prev = list(mmu.prev_roots)
    prev[i], mmu.root.hpa = mmu.root.hpa, prev[i]
    mmu.prev_roots = tuple(prev)
    mmu.root.pgd = 0


def cached_root_find_and_keep_current(
    k: Kernel, kvm: Kvm, mmu: kvm_mmu, new_pgd: int, new_role: kvm_mmu_page_role
) -> Generator[Op, int, bool]:
    if is_root_usable(mmu.root, new_pgd, new_role):
        return True
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        # Rotates the cache: C 0 1 2 -> (on a miss) 2 | C 0 1, then frees "2".
        _swap_current_with_prev(mmu, i)
        if is_root_usable(mmu.root, new_pgd, new_role):
            return True
    yield from k.kvm_mmu_free_roots(kvm, mmu, KVM_MMU_ROOT_CURRENT)
    return False


def fast_pgd_switch(
    k: Kernel, kvm: Kvm, mmu: kvm_mmu, new_pgd: int, new_role: kvm_mmu_page_role
) -> Generator[Op, int, bool]:
    if VALID_PAGE(mmu.root.hpa):
        return (yield from cached_root_find_and_keep_current(k, kvm, mmu, new_pgd, new_role))
    # cached_root_find_without_current(): look in prev_roots only.
    for i in range(KVM_MMU_NUM_PREV_ROOTS):
        if is_root_usable(kvm_mmu_root_info_of(mmu, i), new_pgd, new_role):
            _swap_current_with_prev(mmu, i)
            return True
    return False


def kvm_mmu_root_info_of(mmu: kvm_mmu, i: int) -> kvm_mmu_root_info:
    """A read-only view of prev_roots[i] as a kvm_mmu_root_info (pgd 0: direct roots)."""
    return _PrevRoot(mmu.prev_roots[i])  # type: ignore[return-value]


class _PrevRoot:
    __slots__ = ("hpa", "pgd")

    def __init__(self, hpa: kvm_mmu_page | None) -> None:
        self.hpa = hpa
        self.pgd = 0


def kvm_mmu_new_pgd(k: Kernel, vcpu: kvm_vcpu, new_pgd: int) -> Steps:
    mmu = vcpu.arch.mmu
    switched = yield from fast_pgd_switch(k, vcpu.kvm, mmu, new_pgd, mmu.root_role)
    world().note(f"root.hpa = {_hpa(mmu.root.hpa)}, prev_roots = ({', '.join(map(_hpa, mmu.prev_roots))})")
    if not switched:
        return  # kvm_mmu_reload() establishes a valid root before the next VM-Enter
    # KVM_REQ_LOAD_MMU_PGD, MMIO info, write-flooding counts: no root references.


def _hpa(hpa: kvm_mmu_page | None) -> str:
    return "INVALID_PAGE" if hpa is INVALID_PAGE else repr(hpa)


def nested_transition(k: Kernel, vcpu: kvm_vcpu, guest_mode: bool) -> Steps:
    """VM-Enter to L2 (guest_mode=True) or VM-Exit to L1, L1 not using EPT/NPT for L2."""
    yield Op("kvm_init_mmu", vcpu, f"root_role.guest_mode = {int(guest_mode)}")
    vcpu.arch.mmu.root_role.guest_mode = guest_mode
    yield from kvm_mmu_new_pgd(k, vcpu, 0)


def check_no_obsolete_root_kept(vcpu: kvm_vcpu) -> None:
    """Property (B08): once KVM_REQ_MMU_FREE_OBSOLETE_ROOTS has been serviced, the vCPU
    holds no reference to an obsolete root, in ``root`` or in ``prev_roots``, unless the
    request is pending again or an invalidation has yet to post it (the ghost window
    x86.py's check_guest_entry() allows too)."""
    mmu = vcpu.arch.mmu
    if KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in vcpu.requests or vcpu.kvm.obsolete_roots_unannounced:
        return
    slots = [("root", mmu.root.hpa)] + [(f"prev_roots[{i}]", h) for i, h in enumerate(mmu.prev_roots)]
    for slot, hpa in slots:
        if hpa is not INVALID_PAGE and hpa.role.invalid:
            world().report(
                "obsolete-root-kept",
                f"{vcpu!r} still holds obsolete {hpa!r} in {slot} with no "
                "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS pending",
            )
            return


def nested_vcpu_run(k: Kernel, vcpu: kvm_vcpu) -> Steps:
    """L1 runs and faults, enters L2 (its root is cached in prev_roots[0]), L2 runs."""
    yield from k.vcpu_enter_guest(vcpu, 0)
    check_no_obsolete_root_kept(vcpu)
    yield from nested_transition(k, vcpu, True)
    yield from k.vcpu_enter_guest(vcpu, 0)
    check_no_obsolete_root_kept(vcpu)
    yield from k.kvm_put_kvm(vcpu.kvm)


def nested_pgd_switch(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    return [
        *(ThreadSpec(f"vcpu{i}", partial(nested_vcpu_run, k, v), group="vcpu", owner=v)
          for i, v in enumerate(vcpus)),
        ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm)),
    ]


def unload_vcpu_run(k: Kernel, vcpu: kvm_vcpu) -> Steps:
    """A vCPU that loads a root and unloads it (kvm_mmu_reset_context()'s unload), and
    never enters the guest nor faults."""
    yield from k.kvm_mmu_reload(vcpu)
    yield from k.kvm_mmu_unload(vcpu)
    yield from k.kvm_put_kvm(vcpu.kvm)


def unload_double_memslot_delete(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    return [
        *(ThreadSpec(f"vcpu{i}", partial(unload_vcpu_run, k, v), group="vcpu", owner=v)
          for i, v in enumerate(vcpus)),
        ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm, times=2)),
    ]


def root_reuse(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...],
               hyperv: bool = False) -> list[ThreadSpec]:
    """B07 (b): TLBs modeled (kernel/tlb.py), on bare metal or, ``hyperv``, as L1 under
    Hyper-V with EnlightenedNptTlb. Each vCPU faults on gfn 0, runs the guest on the
    mapping (its TLB caches it), resets its MMU context (the unload puts its root: on
    v6.1 the root is then defunct, zapped and freed by a worker) and runs again on a
    reloaded root, which may sit at the freed root's frame."""
    kvm.arch.hv_enlightened_npt_tlb = hyperv
    for v in vcpus:
        v.arch.tlb = kzalloc(tlb, name=f"{v!r}.tlb")
    return [ThreadSpec(f"vcpu{i}", partial(k.vcpu_run, v, (0, None), (0,)), group="vcpu", owner=v)
            for i, v in enumerate(vcpus)]


CORPUS_SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("root-reuse",
                 "TLBs modeled: vCPUs fault, run on the mapping, reset their MMU context and "
                 "run on a reloaded root (bare metal)", root_reuse),
        Scenario("hyperv-root-reuse",
                 "root-reuse as L1 under Hyper-V with EnlightenedNptTlb (ASID flushes keep "
                 "NPT-derived translations)", partial(root_reuse, hyperv=True)),
        Scenario("nested-pgd-switch",
                 "vCPUs run L1, then enter L2 (L1's root cached in prev_roots[0]) while a "
                 "memslot is deleted", nested_pgd_switch),
        Scenario("unload-double-memslot-delete",
                 "vCPUs load and unload a root (no guest entry, no fault) while a memslot "
                 "is deleted twice", unload_double_memslot_delete),
    )
}

ALL_SCENARIOS: dict[str, Scenario] = {**SCENARIOS, **CORPUS_SCENARIOS}


# =====================================================================================
# The corpus
# =====================================================================================

def _m(name: str, cls: type, expect: set[str], scenario: str, origin: str,
       kernel: str = Kernel.NAME, caught_on: tuple[str, ...] = ()) -> Mutant:
    """A Mutant (``tdpmmu.kvm.mutants``): name, class, expected kinds, scenario, origin,
    the kernel of its era and further kernels where it must be caught too."""
    return Mutant(name, cls, frozenset(expect), scenario, origin, kernel=kernel, caught_on=caught_on)


UAF = {"use-after-free", "refcount"}  # refcount: "underflow/addition on 0; use-after-free"

CORPUS_MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        _m("next-root-plain-decrement", NextRootPlainDecrement, {"BUG", "WARNING", "leak"},
           "memslot-delete", "B01 a889ea54b3da", kernel="v5.11"),
        _m("get-root-refcount-inc", GetRootRefcountInc, UAF,
           "double-memslot-delete", "B02 fb10129335ca/11cccf5c0472"),
        Mutant("next-root-no-rcu", NextRootNoRcu, frozenset({"suspicious RCU usage"}),
               "vcpu-load", "B02 c0e64238ac53", kernel="v5.13", caught_on=("v6.9",)),
        _m("next-root-no-rcu-unchecked", NextRootNoRcuUnchecked, {"use-after-free"},
           "double-memslot-delete", "B02 c0e64238ac53 (without CONFIG_PROVE_RCU)"),
        _m("put-root-no-pages-lock", PutRootNoPagesLock, {"leak", "WARNING", "use-after-free"},
           "memslot-delete", "B02 2bdb3d84cebc"),
        Mutant("no-stale-root-check", NoStaleRootCheck,
               frozenset({"spte-in-invalid-root", "fast-zap-incomplete"}), "memslot-delete",
               "B05 a955cad84cda", kernel="v5.16.19", caught_on=("v6.9",)),
        _m("reflag-invalid-roots", ReflagInvalidRoots, UAF,
           "double-memslot-delete", "B06 614f6970aa70 (the re-flag form of it)", kernel="v6.5"),
        _m("free-obsolete-current-only", FreeObsoleteCurrentOnly, {"obsolete-root-kept"},
           "nested-pgd-switch", "B08 cf4a8693d97a", kernel="v6.1"),
        _m("invalidate-unlocked-walk", InvalidateUnlockedWalk, {"use-after-free"},
           "vcpu-load", "B10 edbdb43fc96b (v2, syzbot KASAN report)", kernel="v6.5"),
        _m("zap-invalidated-as-id-filter", ZapInvalidatedAsIdFilter,
           {"fast-zap-incomplete", "WARNING", "leak"},
           "smm", "B11 441a5dfcd968", kernel="v6.8", caught_on=("v6.9",)),
        _m("keep-scheduled-flag", KeepScheduledFlag, UAF | {"KVM_BUG_ON"},
           "double-memslot-delete", "B11 0df9dab891ff", kernel="v6.8", caught_on=("v6.9",)),
        _m("schedule-outside-write-lock", ScheduleOutsideWriteLock, {"invariant"},
           "memslot-delete", "B11 0df9dab891ff", kernel="v6.8", caught_on=("v6.9",)),
        _m("request-before-invalidate", RequestBeforeInvalidate, {"guest-on-invalid-root", "stale-tlb"},
           "memslot-delete", "M4"),
        _m("bug-on-before-scheduled-check", BugOnBeforeScheduledCheck, {"KVM_BUG_ON"},
           "memslot-delete", "M8"),
        # At two vCPUs: caught after 20,159 states (~26 s); the unmutated kernel passes
        # (90,131 states): docs/corpus.md. The suite runs it at one.
        Mutant("hv-flush-current-asid-only", HvFlushCurrentAsidOnly, frozenset({"stale-tlb"}),
               "hyperv-root-reuse", "B07(b) e5c972c1fada (TDP MMU on Hyper-V, 5.18..6.3)",
               vcpus=1, kernel="v6.1"),
    )
}


@dataclass(frozen=True)
class CorpusRow:
    id: str  # "B06", "M4"
    name: str  # the mutant's name, or a label for an inexpressible bug
    mutant: Mutant | None  # None: not expressible yet, see why_not
    commit: str  # the fixing commit ("" for M*: no historical commit)
    title: str  # its title, or what the mutation stands for
    breaks: str  # the property the bug breaks
    why_not: str = ""
    min_vcpus: int = 1  # run_corpus uses max(vcpus, min_vcpus)
    era: str = ""  # the kernel of a row without a mutant

    @property
    def kernel(self) -> str:
        """The kernel (KERNELS name) the row runs: its mutant's (``Mutant.kernel``)."""
        return self.mutant.kernel if self.mutant else self.era

    @property
    def scenario(self) -> str:
        return self.mutant.scenario if self.mutant else ""

    @property
    def expect(self) -> frozenset[str]:
        return self.mutant.expect if self.mutant else frozenset()


_C = CORPUS_MUTANTS

CORPUS: list[CorpusRow] = [
    CorpusRow("B01", "next-root-plain-decrement", _C["next-root-plain-decrement"],
              "a889ea54b3da", "KVM: x86/mmu: Ensure TDP MMU roots are freed after yield",
              "count reaches 0 => the root is unlinked and freed (no zero-count root on the list, "
              "none taken again by kvm_mmu_get_root()); teardown leaves nothing"),
    CorpusRow("B02", "get-root-refcount-inc", _C["get-root-refcount-inc"],
              "fb10129335ca", "KVM: x86/mmu: handle cmpxchg failure in kvm_tdp_mmu_get_root "
              "(with 11cccf5c0472 Make TDP MMU root refcount atomic)",
              "a count is never raised from 0 (no refcount_inc on 0: resurrecting a root being freed)"),
    CorpusRow("B02", "next-root-no-rcu", _C["next-root-no-rcu"],
              "c0e64238ac53", "KVM: x86/mmu: Protect the tdp_mmu_roots list with RCU",
              "RCU list readers run inside rcu_read_lock() (CONFIG_PROVE_RCU)"),
    CorpusRow("B02", "next-root-no-rcu-unchecked", _C["next-root-no-rcu-unchecked"],
              "c0e64238ac53", "KVM: x86/mmu: Protect the tdp_mmu_roots list with RCU",
              "no use-after-free: a root is reclaimed only after a grace period with no "
              "pre-existing reader"),
    CorpusRow("B02", "put-root-no-pages-lock", _C["put-root-no-pages-lock"],
              "2bdb3d84cebc", "KVM: x86/mmu: Merge TDP MMU put and free root "
              "(root list mutations under tdp_mmu_pages_lock)",
              "the list is mutated only under tdp_mmu_pages_lock; a live root stays on the list; "
              "teardown leaves nothing"),
    CorpusRow("B03", "notifier-no-root-refs", MUTANTS["notifier-no-root-refs"],
              "7533377215b6", "KVM: x86/mmu: Use yield-safe TDP MMU root iter in MMU notifier unmapping",
              "whoever drops mmu_lock while positioned on a root holds a reference to it"),
    CorpusRow("B04", "notifier-skips-invalid-roots", MUTANTS["notifier-skips-invalid-roots"],
              "d62007edf01f", "KVM: x86/mmu: Zap _all_ roots when unmapping gfn range in TDP MMU",
              "when an mmu_notifier invalidation returns, no root (valid or invalid) maps the range"),
    CorpusRow("B05", "no-stale-root-check", _C["no-stale-root-check"],
              "a955cad84cda", "KVM: x86/mmu: Retry page fault if root is invalidated by memslot update",
              "no SPTE is created in an invalid root (fast-zap completeness)"),
    CorpusRow("B06", "reflag-invalid-roots", _C["reflag-invalid-roots"],
              "614f6970aa70", "KVM: x86/mmu: do not allow readers to acquire references to invalid roots",
              "the list reference of a root is put exactly once (no refcount underflow / UAF)"),
    CorpusRow("B07", "zap-worker-double-put", MUTANTS["zap-worker-double-put"],
              "efd995dae5eb", "KVM: x86/mmu: Zap defunct roots via asynchronous worker "
              "(B07(a): its review; with 22b94c4b63eb, the era's kernel class v6.1)",
              "the reference gifted to a zap worker is put exactly once (no underflow, no free "
              "under a holder)"),
    CorpusRow("B07", "hv-flush-current-asid-only", _C["hv-flush-current-asid-only"],
              "e5c972c1fada", "KVM: SVM: Flush Hyper-V TLB when required (B07(b): the regression "
              "bisected to bb95dfb9e2df with efd995dae5eb, TDP MMU on Hyper-V, 5.18..6.3)",
              "a defunct root is zapped and freed without a TLB flush only if the flush on the "
              "next root's load drops what was cached under its frame"),
    CorpusRow("B08", "free-obsolete-current-only", _C["free-obsolete-current-only"],
              "cf4a8693d97a", "KVM: x86/mmu: Check every prev_roots in __kvm_mmu_free_obsolete_roots()",
              "after FREE_OBSOLETE_ROOTS is serviced the vCPU holds no reference to an obsolete root"),
    CorpusRow("B10", "refcount-one", MUTANTS["refcount-one"],
              "edbdb43fc96b", "KVM: x86: Preserve TDP MMU roots until they are explicitly invalidated",
              "count == 0 => invalid: the TDP MMU's own reference keeps every valid root alive"),
    CorpusRow("B10", "invalidate-unlocked-walk", _C["invalidate-unlocked-walk"],
              "edbdb43fc96b", "KVM: x86: Preserve TDP MMU roots until they are explicitly "
              "invalidated (v2 -> v3: walk the roots safely at destruction)",
              "plain list walks run only where no list mutator can (no use-after-free)"),
    CorpusRow("B11", "zap-invalidated-as-id-filter", _C["zap-invalidated-as-id-filter"],
              "441a5dfcd968", "KVM: x86/mmu: Do not filter address spaces in "
              "for_each_tdp_mmu_root_yield_safe()",
              "every scheduled root's list reference is put (SMM roots too); teardown leaves nothing"),
    CorpusRow("B11", "keep-scheduled-flag", _C["keep-scheduled-flag"],
              "0df9dab891ff", "KVM: x86/mmu: Stop zapping invalidated TDP MMU roots asynchronously",
              "scheduled is set and cleared at most once per root: the list reference is put once"),
    CorpusRow("B11", "schedule-outside-write-lock", _C["schedule-outside-write-lock"],
              "0df9dab891ff", "KVM: x86/mmu: Stop zapping invalidated TDP MMU roots asynchronously",
              "scheduled => invalid wherever nobody holds mmu_lock for write"),
    CorpusRow("B13", "uninit-zap-shared", MUTANTS["uninit-zap-shared"],
              "35be969d1ef2", "KVM: x86/mmu: Zap invalid roots with mmu_lock holding for write at "
              "uninit (Message-Id 20240718211230.1492011-2)",
              "external (S-EPT) SPTEs of mirror roots are removed only under the write lock"),
    CorpusRow("B15", "aging-outside-rcu", MUTANTS["aging-outside-rcu"],
              "b146a9b34aed", "KVM: x86/mmu: Relax locking for kvm_test_age_gfn() and kvm_age_gfn() "
              "(lockless aging of the valid roots, after 526e609f0567 Process only valid TDP MMU "
              "roots when aging a gfn range)",
              "a walk without mmu_lock stays inside rcu_read_lock(): no root or page table it can "
              "reach is freed under it"),
    CorpusRow("B15", "aging-nonatomic-clear", MUTANTS["aging-nonatomic-clear"],
              "e29b74920e6f", "KVM: x86/mmu: Factor out spte atomic bit clearing routine (the atomic "
              "Accessed-bit clear b146a9b34aed's lockless aging relies on)",
              "SPTEs written without mmu_lock are written atomically: no concurrent zap is undone "
              "(when an unmap returns, nothing maps the range)"),
    CorpusRow("M1", "no-recheck", MUTANTS["no-recheck"],
              "", "kvm_tdp_mmu_alloc_root() without the recheck under tdp_mmu_pages_lock",
              "at most one valid root per role.word", min_vcpus=2),
    CorpusRow("M3", "invalidate-under-read-lock", MUTANTS["invalidate-under-read-lock"],
              "", "roots invalidated with mmu_lock held for read",
              "role.invalid and scheduled are written only under the write lock"),
    CorpusRow("M4", "request-before-invalidate", _C["request-before-invalidate"],
              "", "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS posted outside the invalidation's write-side "
              "section, before it",
              "no guest execution on an invalid root without a pending FREE_OBSOLETE_ROOTS; no "
              "SPTE of a root a vCPU runs on is zapped without a TLB flush"),
    CorpusRow("M4", "request-after-unlock", None,
              "", "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS posted after write_unlock() in kvm_mmu_zap_all_fast()",
              "(none broken without shadow pages)",
              why_not="not a bug in a TDP-only model, so nothing to catch: the request still "
              "precedes kvm_tdp_mmu_zap_invalidated_roots(), and with KVM_REQUEST_WAIT every vCPU "
              "that entered the guest on a just-invalidated root is kicked out before its SPTEs "
              "are zapped (exhaustive pass, mutant class RequestAfterUnlock). The harm needs "
              "shadow pages zapped by kvm_zap_obsolete_pages() inside the write-side section "
              "(\"vcpu would purge shadow page but miss tlb flush\"): the model has no shadow MMU",
              era="v6.9"),
    CorpusRow("M8", "bug-on-before-scheduled-check", _C["bug-on-before-scheduled-check"],
              "", "KVM_BUG_ON(!root->role.invalid) before the scheduled check (Yilun's question)",
              "KVM_BUG_ON(!invalid) in zap_invalidated_roots never fires"),
]


# =====================================================================================
# Running it
# =====================================================================================

DEFAULT_LIMITS = Limits(time_limit=60.0)


@dataclass
class Check:
    """One search: verdict, the violation kind found (if any) and its counts."""

    verdict: str
    kind: str
    executions: int
    states: int
    seconds: float
    trace_len: int
    minimal: bool = False  # the counterexample is proved shortest
    reason: str = ""
    result: Result | None = field(default=None, repr=False)

    @classmethod
    def of(cls, r: Result) -> Check:
        return cls(r.verdict, r.violation.kind if r.violation else "", r.stats.executions,
                   r.stats.states, r.stats.seconds, len(r.schedule), r.minimal, r.reason, r)


@dataclass
class CorpusResult:
    row: CorpusRow
    vcpus: int = 0
    mutant: Check | None = None  # None: the row is not expressible
    unmutated: Check | None = None

    @property
    def expressible(self) -> bool:
        return self.row.mutant is not None

    @property
    def caught(self) -> bool:
        """The mutant's search found a violation of an expected kind (any, if none)."""
        m = self.mutant
        if m is None or m.verdict != "violation":
            return False
        return not self.row.expect or m.kind in self.row.expect

    @property
    def false_positive(self) -> bool:
        """The unmutated kernel reported a violation on the row's scenario."""
        return self.unmutated is not None and self.unmutated.verdict == "violation"

    @property
    def schedule(self) -> Schedule:
        return self.mutant.result.schedule if self.mutant and self.mutant.result else []

    @property
    def trace(self) -> list[TraceStep]:
        return self.mutant.result.trace if self.mutant and self.mutant.result else []


def kernel_class(row: CorpusRow, mutated: bool = True) -> type[Kernel]:
    """The class a row runs: its kernel, with its mutant on top unless ``mutated=False``."""
    return build_kernel(KERNELS[row.kernel], row.mutant if mutated else None)


def row_program(row: CorpusRow, vcpus: int, mutated: bool = True) -> KvmProgram:
    """The program a row checks (``Execution.replay`` needs a fresh one)."""
    if row.mutant is None:
        raise ValueError(f"{row.id} {row.name} is not expressible: {row.why_not}")
    return KvmProgram(kernel_class(row, mutated), ALL_SCENARIOS[row.scenario],
                      max(vcpus, row.min_vcpus))


def _search(row: CorpusRow, vcpus: int, limits: Limits, mutated: bool) -> Result:
    """``tdpmmu check`` of the row (with or without its mutant)."""
    from tdpmmu.api import Config, check  # the API's name tables include this module's

    assert row.mutant is not None
    return check(Config(row.scenario, row.kernel, row.mutant.name if mutated else None, vcpus),
                 limits)


def run_corpus(
    vcpus: int = 2,
    limits: Limits | None = None,
    rows: Sequence[CorpusRow] | None = None,
    progress: Callable[[CorpusResult], None] | None = None,
    baseline_limits: Limits | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[CorpusResult]:
    """Check every expressible row's mutant (first counterexample) and the row's
    unmutated kernel on the same scenario (must not report a violation). Rows run with
    ``max(vcpus, row.min_vcpus)`` vCPUs; ``limits`` apply to each search separately,
    ``baseline_limits`` (default: ``limits``) to the unmutated ones, which are searched
    once per (kernel, scenario, vcpus). ``rows`` defaults to ``CORPUS``; ``progress`` is
    called with each row's result as soon as it is done. ``stop`` is asked after each
    row's searches: once it says so (the user interrupted them), ``CorpusInterrupted``
    carries the rows done before that one."""
    limits = limits or DEFAULT_LIMITS
    baseline_limits = baseline_limits or limits
    baseline: dict[tuple[str, str, int], Check] = {}
    out: list[CorpusResult] = []
    for row in CORPUS if rows is None else rows:
        res = CorpusResult(row)
        if row.mutant is not None:
            n = max(vcpus, row.min_vcpus)
            res.vcpus = n
            res.mutant = Check.of(_search(row, n, limits, mutated=True))
            key = (row.kernel, row.scenario, n)
            if key not in baseline:
                baseline[key] = Check.of(_search(row, n, baseline_limits, mutated=False))
            res.unmutated = baseline[key]
        if stop is not None and stop():
            raise CorpusInterrupted(out)
        out.append(res)
        if progress is not None:
            progress(res)
    return out


class CorpusInterrupted(Exception):
    """``run_corpus`` stopped early; ``done`` holds the rows it finished."""

    def __init__(self, done: list[CorpusResult]) -> None:
        super().__init__(f"interrupted after {len(done)} rows")
        self.done = done


def corpus_ok(results: Sequence[CorpusResult]) -> bool:
    """Every expressible row caught, and no unmutated kernel reported a violation."""
    return all(r.caught and not r.false_positive for r in results if r.expressible)


def format_table(results: Sequence[CorpusResult]) -> str:
    """A plain-text table, one line per row, then the catch rate."""
    head = ("id", "mutant", "kernel", "scenario", "vcpus", "expected", "found", "result",
            "executions", "states", "seconds", "trace", "unmutated")
    lines: list[tuple[str, ...]] = []
    notes: list[str] = []
    for r in results:
        row = r.row
        if r.mutant is None:
            notes.append(f"{row.id:<4} {row.name}: not expressible: {row.why_not}")
            continue
        m = r.mutant
        found = m.kind if m.verdict == "violation" else m.verdict
        u = r.unmutated
        if u is None:
            unmut = "-"
        elif u.verdict == "violation":
            unmut = f"FALSE POSITIVE: {u.kind}"
        else:
            unmut = f"{u.verdict} ({u.states} states, {u.seconds:.1f}s)"
        lines.append((
            row.id, row.name, row.kernel, row.scenario, str(r.vcpus),
            ",".join(sorted(row.expect)) or "any", found, "caught" if r.caught else "MISSED",
            str(m.executions), str(m.states), f"{m.seconds:.2f}",
            f"{m.trace_len}{'*' if m.minimal else ''}" if m.trace_len else "-", unmut,
        ))
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    numeric = {"vcpus", "executions", "states", "seconds", "trace"}

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if h in numeric else c.ljust(w) for c, w, h in zip(cells, widths, head, strict=True)
        ).rstrip()

    out = [fmt(head), fmt(["-" * w for w in widths])]
    out += [fmt(ln) for ln in lines]
    out += notes
    expressible = [r for r in results if r.expressible]
    caught = sum(r.caught for r in expressible)
    fps = sum(r.false_positive for r in expressible)
    rate = f"{caught}/{len(expressible)} expressible mutants caught"
    out.append("")
    out.append("trace: steps in the counterexample (* proved shortest); executions, states, "
               "seconds: the search that found it")
    inexpressible = len(results) - len(expressible)
    out.append(f"{rate}; {inexpressible} row{'' if inexpressible == 1 else 's'} not expressible; "
               f"{fps} false positives on unmutated kernels")
    return "\n".join(out)
