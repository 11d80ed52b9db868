"""Mutants: deliberate bugs, each a small override of whatever kernel it is applied to.

A mutant names the violation the checker must find (``expect``: violation kinds any of
which counts) and the scenario that exposes it. ``tdpmmu check S --mutant M`` builds the
class ``type("v6.9+M", (M, Kernel), {})``, so a mutant's ``super()`` is the kernel's code.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tdpmmu.explore.runtime import Op, inline
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_write
from tdpmmu.kernel.rculist import list_add_rcu, list_first_or_null_unchecked, list_next_or_null_unchecked
from tdpmmu.kernel.rwlock import read_lock, read_unlock
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock
from tdpmmu.kvm.structs import Kvm, kvm_mmu_page, kvm_mmu_page_role, kvm_vcpu
from tdpmmu.kvm.tdp_iter import TdpIter
from tdpmmu.kvm.tdp_mmu import TdpMmu, kvm_mmu_page_as_id
from tdpmmu.kvm.versions import KERNELS, V6_9_LocklessAging
from tdpmmu.kvm.x86 import Kernel

Steps = Generator[Op, int, None]

# A mutant is a mixin put in front of a kernel class, so its super() is that kernel.
# Type checkers see it as a Kernel subclass; at run time it is a plain mixin.
if TYPE_CHECKING:
    Base = Kernel
    LocklessAgingBase = V6_9_LocklessAging  # the mutants of that kernel's aging code
else:
    Base = LocklessAgingBase = object


class ZapUnscheduledRoots(Base):
    """kvm_tdp_mmu_zap_invalidated_roots() zaps every root it meets, not only those
    kvm_tdp_mmu_invalidate_all_roots() scheduled: Yilun Xu's question made real. A root
    a vCPU allocates under the read lock while the zap runs is valid."""

    @inline
    def zap_invalidated_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        root.tdp_mmu_scheduled_root_to_zap = True  # i.e. skip no root
        yield from super().zap_invalidated_root(kvm, root)


class NoRecheck(Base):
    """kvm_tdp_mmu_alloc_root() inserts after a fast-path miss without rechecking under
    tdp_mmu_pages_lock (M1): two vCPUs can both miss and both insert."""

    @inline
    def tdp_mmu_alloc_root_slow(
        self, vcpu: kvm_vcpu, kvm: Kvm, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page]:
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        root = yield from self.tdp_mmu_new_root(vcpu, role)
        yield from list_add_rcu(root.link, kvm.arch.tdp_mmu_roots)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)
        return root


class RefcountOne(Base):
    """refcount_set(&root->tdp_mmu_root_count, 1): the TDP MMU holds no reference of its
    own (the pre-6.4 scheme, B10's mutation), so a vCPU unloading a valid root puts its
    last reference: edbdb43fc96b's KVM_BUG_ON in kvm_tdp_mmu_put_root() (v6.5, and v6.9,
    which kept the scheme), where v6.1 instead made the root defunct and zapped it."""

    ROOT_INITIAL_REFS = 1


class InvalidateUnderReadLock(Base):
    """kvm_mmu_zap_all_fast() invalidates roots holding mmu_lock for read (M3), on a
    kernel without CONFIG_PROVE_LOCKING (whose lockdep assertion would flag it first)."""

    CONFIG_PROVE_LOCKING = False

    def kvm_mmu_zap_all_fast(self, kvm: Kvm) -> Steps:
        lockdep_assert_held(kvm.slots_lock)
        yield from read_lock(kvm.mmu_lock)  # the mutation: write_lock() in the kernel
        kvm.arch.mmu_valid_gen = 0 if kvm.arch.mmu_valid_gen else 1
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        yield from self.kvm_request_free_obsolete_roots(kvm)
        yield from read_unlock(kvm.mmu_lock)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm)


class NotifierSkipsInvalidRoots(Base):
    """B04: the mmu_notifier unmap walks valid roots only, as before d62007edf01f (v5.16:
    ``for_each_tdp_mmu_root_yield_safe`` got no reference to invalid roots): an invalid
    root whose zapper has yielded keeps mapping the range after the unmap returns, and
    the mm frees the pages under it. Its kernel is v5.16.19 (the fix backported to v5.16);
    v6.9's unmap picks its roots the same way, so it is caught there too."""

    UNMAP_ONLY_VALID = True


class PutBeforeZap(Base):
    """kvm_tdp_mmu_zap_invalidated_roots() puts the TDP MMU's reference *before*
    zapping the root, against the comment that notifiers must still find the root
    while it is zapped."""

    @inline
    def zap_then_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        yield from self.kvm_tdp_mmu_put_root(kvm, root)  # the mutation: put first
        yield from self.tdp_mmu_zap_root(kvm, root, True)


class NotifierNoRootRefs(Base):
    """B03: the mmu_notifier unmap walks the roots list without taking references
    (``for_each_tdp_mmu_root``, as before 7533377215b6) yet may yield inside the zap:
    while it is away the root can be put for the last time and freed under it. Its
    kernel is ``v5.13``, whose unmap (7533377215b6 applied) it turns back into the one
    v5.13 shipped; it is caught on v6.9 too."""

    def kvm_tdp_mmu_unmap_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                                    may_block: bool, flush: bool) -> Generator[Op, int, bool]:
        lockdep_assert_held_write(kvm.mmu_lock)
        head = kvm.arch.tdp_mmu_roots
        # list_for_each_entry(): plain reads under mmu_lock, spelled out because the
        # body yields (a for-loop over list_for_each() would hide its position).
        pos = head.next
        while pos != head:
            root = pos.container()
            if kvm_mmu_page_as_id(root) == as_id:
                flush = yield from self.tdp_mmu_zap_leafs(kvm, root, start, end, may_block, flush)
            pos = pos.next
        return flush


class AgingOutsideRcu(LocklessAgingBase):
    """B15: the lockless aging walk (``v6.9+lockless-aging``) without its RCU read-side
    section, on a kernel without CONFIG_PROVE_RCU (whose list accessors would splat
    first). Nothing then keeps the root or page table the walk stands on alive: the
    zap's call_rcu() waits only for readers, and this walker is none."""

    def _kvm_tdp_mmu_age_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                                   test_only: bool) -> Generator[Op, int, bool]:
        return (yield from self.tdp_mmu_age_roots_rcu(
            kvm, as_id, start, end, test_only, list_first_or_null_unchecked, list_next_or_null_unchecked))


class AgingNonatomicClear(LocklessAgingBase):
    """B15: the lockless aging walk (``v6.9+lockless-aging``) clears the Accessed bit
    the way it did under mmu_lock held for write, with ``tdp_mmu_clear_spte_bits()``: a
    plain store of the value it read (b146a9b34aed without e29b74920e6f's atomic AND).
    A change made between the read and the store is lost: an mmu_notifier unmap's zap
    is undone, and the SPTE maps the page again while the mm frees it."""

    def kvm_tdp_mmu_age_spte(self, kvm: Kvm, it: TdpIter) -> Generator[Op, int, TdpIter]:
        return (yield from TdpMmu.kvm_tdp_mmu_age_spte(self, kvm, it))

class ZapWorkerDoublePut(Base):
    """B07(a): the async zap worker (v5.18..v6.5) gives the reference it was gifted back
    twice, as a review round of efd995dae5eb "Zap defunct roots via asynchronous worker"
    did: its first put can be the last one (the root is unlinked and queued for freeing),
    its second underflows the count, or frees the root under a vCPU that still holds it."""

    @inline
    def zap_then_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        yield from super().zap_then_put_root(kvm, root)
        yield from self.kvm_tdp_mmu_put_root(kvm, root)  # the mutation: a second put

class UninitZapShared(Base):
    """B13: kvm_tdp_mmu_zap_invalidated_roots() always holds mmu_lock for read, as before
    35be969d1ef2 ("Zap invalid roots with mmu_lock holding for write at uninit"): uninit's
    ``shared=false`` is ignored, so the mirror roots of a TDX VM are zapped with atomic
    SPTE updates, which bug the VM (an external SPTE can only be removed under the write
    lock). On kernels without mirror roots it changes nothing."""

    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm, shared: bool = True) -> Steps:
        yield from super().kvm_tdp_mmu_zap_invalidated_roots(kvm)  # the mutation: no `shared`


@dataclass(frozen=True)
class Mutant:
    name: str
    cls: type
    expect: frozenset[str]  # violation kinds that count as catching it
    scenario: str
    origin: str  # the historical bug or review question it stands for
    # Non-empty: why the mutation is harmless on the kernels modeled; the checker must
    # then *prove* the scenario clean with it (a reviewer's "does this order matter?").
    harmless: str = ""
    vcpus: int = 2  # the configuration the tests run it in (a depth-first search of a
    # larger one can take long to reach the bug: stress at 2 vCPUs is millions of states)
    kernel: str = Kernel.NAME  # the kernel its claim (caught, or harmless) is about
    # A mutant harmless on `kernel` may break another kernel: there it must be caught
    # (with `expect`), e.g. put-before-zap on the async-worker era.
    caught_on: tuple[str, ...] = ()

    def runs_on(self, kernel: str) -> bool:
        """Whether ``kernel`` has the code the mutant changes: it is a kernel the mutant is
        claimed on, or one derived from such a kernel (a class derives from the one whose
        code it reuses, not always the older one: v6.8 derives from v6.9) that still has
        that kernel's version of everything the mutant overrides. v5.11, say, derives
        from v6.9 but replaces ``tdp_mmu_next_root``: a mutant of it is not v5.11's bug."""
        k = KERNELS[kernel]
        return any(k is c or (issubclass(k, c) and self._same_code(k, c))
                   for c in (KERNELS[name] for name in (self.kernel, *self.caught_on)))

    def _same_code(self, kernel: type, base: type) -> bool:
        """``kernel`` resolves every name the mutant class defines as ``base`` does."""
        return all(inspect.getattr_static(kernel, name, None) is inspect.getattr_static(base, name, None)
                   for name in vars(self.cls) if not name.startswith("__"))

    def harmless_on(self, kernel: str) -> bool:
        return bool(self.harmless) and kernel not in self.caught_on

    @property
    def caught_kernels(self) -> tuple[str, ...]:
        """The kernels where the checker must catch it (empty: harmless everywhere modeled)."""
        return self.caught_on if self.harmless else (self.kernel, *self.caught_on)

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


MUTANTS: dict[str, Mutant] = {
    m.name: m
    for m in (
        Mutant("zap-unscheduled-roots", ZapUnscheduledRoots, frozenset({"KVM_BUG_ON"}),
               "memslot-delete", "Yilun Xu's review question on patch 7/8 (Feb 2024); M8"),
        Mutant("no-recheck", NoRecheck, frozenset({"duplicate-root"}), "vcpu-load", "M1"),
        Mutant("refcount-one", RefcountOne, frozenset({"KVM_BUG_ON", "use-after-free", "refcount"}),
               "vcpu-load", "B10 edbdb43fc96b (before it: one reference per root)",
               kernel="v6.5", caught_on=("v6.9",)),
        Mutant("invalidate-under-read-lock", InvalidateUnderReadLock, frozenset({"spte-in-invalid-root"}),
               "memslot-delete", "M3"),
        Mutant("notifier-skips-invalid-roots", NotifierSkipsInvalidRoots,
               frozenset({"notifier-incomplete", "use-after-free"}), "stress", "B04 d62007edf01f",
               vcpus=1, kernel="v5.16.19", caught_on=("v6.9",)),
        Mutant("put-before-zap", PutBeforeZap,
               frozenset({"notifier-incomplete", "use-after-free", "WARNING"}),
               "stress", "the order kvm_tdp_mmu_zap_invalidated_roots() documents (B04's second mutation)",
               harmless="since the zapper walks roots with the yield-safe iterator (v6.6+), the iterator's "
               "own reference keeps the root on the list (and reachable by notifiers) while it is zapped; "
               "the async-worker era's worker holds nothing but the gifted reference, so there it is a bug",
               vcpus=1, caught_on=("v6.1",)),
        Mutant("notifier-no-root-refs", NotifierNoRootRefs, frozenset({"use-after-free"}),
               "stress", "B03 7533377215b6", vcpus=1, kernel="v5.13", caught_on=("v6.9",)),
        Mutant("aging-outside-rcu", AgingOutsideRcu, frozenset({"use-after-free"}),
               "aging", "B15 b146a9b34aed (lockless aging needs rcu_read_lock)", vcpus=1,
               kernel="v6.9+lockless-aging"),
        Mutant("aging-nonatomic-clear", AgingNonatomicClear,
               frozenset({"use-after-free", "notifier-incomplete", "BUG"}),
               "aging-unmap", "B15 e29b74920e6f (lockless aging needs an atomic clear)", vcpus=1,
               kernel="v6.9+lockless-aging"),

        Mutant("zap-worker-double-put", ZapWorkerDoublePut,
               frozenset({"refcount", "use-after-free"}), "vcpu-load",
               "B07(a) efd995dae5eb (review of the async zap worker)", vcpus=1, kernel="v6.1"),

        Mutant("uninit-zap-shared", UninitZapShared, frozenset({"KVM_BUG_ON"}), "tdx-teardown",
               "B13 35be969d1ef2", vcpus=1, kernel="v6.14"),
    )
}


def build_kernel(kernel: type[Kernel], mutant: Mutant | None) -> type[Kernel]:
    """The kernel class to run: ``kernel``, with ``mutant``'s overrides on top."""
    if mutant is None:
        return kernel
    name = f"{kernel.NAME}+{mutant.name}"
    cls: type[Kernel] = type(name, (mutant.cls, kernel), {"NAME": name})
    return cls
