"""arch/x86/kvm/x86.c and virt/kvm/kvm_main.c: the vCPU run loop, memslot deletion and
VM destruction, the callers that drive the root protocol. Base: v6.9."""

from __future__ import annotations

from collections.abc import Generator, Sequence

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import set_item
from tdpmmu.kernel.page import put_page
from tdpmmu.kernel.requests import (
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    kvm_check_request,
    kvm_request_pending,
)
from tdpmmu.kernel.rwlock import write_lock, write_unlock
from tdpmmu.kernel.spinlock import mutex_lock, mutex_unlock
from tdpmmu.kernel.tlb import tlb_fill, tlb_lookup
from tdpmmu.kernel.wait import wait_event
from tdpmmu.kvm.mmu import Mmu
from tdpmmu.kvm.structs import (
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    KVM_REQ_VM_DEAD,
    Kvm,
    kvm_mmu_page,
    kvm_vcpu,
)
from tdpmmu.kvm.tdp_mmu import live_roots, root_leaves

Steps = Generator[Op, int, None]

EIO = 5


class X86(Mmu):
    """x86.c / kvm_main.c, v6.9."""

    # -- vCPU (notes §6.1) ----------------------------------------------------------------
    def vcpu_enter_guest(self, vcpu: kvm_vcpu, gfn: int | None) -> Generator[Op, int, int]:
        """One trip into the guest; the guest exits on an EPT violation at ``gfn``."""
        if (yield from kvm_request_pending(vcpu)):
            if (yield from self.vcpu_enter_guest_requests(vcpu)):
                return -EIO
        yield from self.kvm_mmu_reload(vcpu)
        # smp_store_release(&vcpu->mode, IN_GUEST_MODE) + full barrier, then recheck:
        # a request made before this store is seen below, one made after it kicks us.
        yield from WRITE_ONCE(vcpu, "mode", IN_GUEST_MODE)
        if (yield from kvm_request_pending(vcpu)):  # kvm_vcpu_exit_request()
            vcpu.mode = OUTSIDE_GUEST_MODE
            world().note("request pending: entry cancelled")
            return 1
        self.check_guest_entry(vcpu)
        vcpu.in_guest = True
        self.guest_translates(vcpu)
        # ... the guest runs until an exit (an EPT violation, or a kick) ...
        yield from WRITE_ONCE(vcpu, "mode", OUTSIDE_GUEST_MODE)
        vcpu.in_guest = False
        if gfn is not None:
            yield from self.kvm_tdp_mmu_page_fault(vcpu, gfn)
        return 1

    @inline
    def vcpu_enter_guest_requests(self, vcpu: kvm_vcpu) -> Generator[Op, int, bool]:
        """The requests vcpu_enter_guest() services that the model has; True: the VM is
        dead, return -EIO (v5.11 services KVM_REQ_MMU_RELOAD instead, versions/)."""
        if (yield from kvm_check_request(KVM_REQ_VM_DEAD, vcpu)):
            return True
        if (yield from kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)):
            yield from self.kvm_mmu_free_obsolete_roots(vcpu)
        return False

    @inline
    def check_guest_entry(self, vcpu: kvm_vcpu) -> None:
        """Property: a vCPU enters the guest on an invalid root only while the kick for
        it is guaranteed: FREE_OBSOLETE_ROOTS is pending, or the invalidating thread has
        yet to post it (the window between the invalidation and the request, which
        kvm_mmu_zap_all_fast() keeps inside one mmu_lock critical section)."""
        root: kvm_mmu_page | None = vcpu.arch.mmu.root.hpa
        if root is None or not root.role.invalid:
            return
        kvm = vcpu.kvm
        if KVM_REQ_MMU_FREE_OBSOLETE_ROOTS in vcpu.requests or kvm.obsolete_roots_unannounced:
            return
        world().report(
            "guest-on-invalid-root",
            f"{vcpu!r} enters the guest on invalid {root!r} with no "
            "KVM_REQ_MMU_FREE_OBSOLETE_ROOTS pending",
        )

    @inline
    def guest_translates(self, vcpu: kvm_vcpu) -> None:
        """Where TLBs are modeled (kernel/tlb.py): the guest touches every gfn. A cached
        translation under the root's frame is used; otherwise the walk of the root's
        tables is cached, if they map the gfn.
        Property: no translation is used that was read from another root's tables: that
        root was freed (frames are unique among live roots), and its frame reused, with
        no flush between, so the guest reaches memory through freed page tables."""
        t = vcpu.arch.tlb
        root: kvm_mmu_page | None = vcpu.arch.mmu.root.hpa
        if t is None or root is None:
            return
        mapped = {gfn for gfn, _sp, _spte in root_leaves(root)}
        for gfn in range(self.tdp_mmu_max_gfn_exclusive()):
            cached = tlb_lookup(t, root.frame, gfn)
            if cached is not None and cached != root:
                world().report("stale-tlb",
                               f"{vcpu!r} translates gfn {gfn} through a TLB entry of freed "
                               f"{cached!r} (frame {root.frame}, now {root!r}'s): no flush "
                               "dropped it")
                return
            if cached is None and gfn in mapped:
                tlb_fill(t, root.frame, gfn, root)
                world().note("{!r}: gfn {} cached from {!r} (frame {})", t, gfn, root, root.frame)

    def vcpu_run(self, vcpu: kvm_vcpu, gfns: Sequence[int | None], smm: Sequence[int] = ()) -> Steps:
        """The KVM_RUN loop, bounded: one guest entry per entry of ``gfns`` (the gfn its
        exit faults on, or None), then, for each address space in ``smm``, an MMU context
        reset into it (SMM entry or exit) and one guest entry there, which loads a root
        for that address space."""
        for gfn in gfns:
            yield from self.vcpu_enter_guest(vcpu, gfn)
        for as_id in smm:
            yield from self.kvm_mmu_reset_context(vcpu, as_id)  # enter/leave SMM
            yield from self.vcpu_enter_guest(vcpu, None)
        yield from self.kvm_put_kvm(vcpu.kvm)  # the vCPU fd is closed

    # -- memslots ---------------------------------------------------------------------------
    def kvm_delete_memslot(self, kvm: Kvm, times: int = 1) -> Steps:
        """KVM_SET_USER_MEMORY_REGION deleting a slot, ``times`` times in sequence:
        kvm_set_memslot() -> kvm_arch_flush_shadow_memslot() -> kvm_mmu_zap_all_fast()."""
        for _ in range(times):
            yield from mutex_lock(kvm.slots_lock)
            yield from self.kvm_mmu_zap_all_fast(kvm)
            self.check_fast_zap_complete(kvm)
            yield from mutex_unlock(kvm.slots_lock)
        yield from self.kvm_put_kvm(kvm)  # the VMM drops its VM fd

    @inline
    def check_fast_zap_complete(self, kvm: Kvm) -> None:
        """Property: when kvm_mmu_zap_all_fast() returns, no root it invalidated maps
        anything (after the memslot is gone, mmu_notifiers could no longer find those
        SPTEs). Roots created since are not its business (see fast_zap_visits())."""
        for root in live_roots():
            if root.role.invalid and root.fast_zapped and any(root_leaves(root)):
                world().report("fast-zap-incomplete",
                               f"kvm_mmu_zap_all_fast() returned with SPTEs left in invalid {root!r}")

    # -- mmu_notifier (virt/kvm/kvm_main.c) and the mm that drives it ---------------------
    def kvm_mmu_notifier_invalidate_range_start(self, kvm: Kvm, start: int, end: int) -> Steps:
        """``__kvm_handle_hva_range()`` with on_lock = kvm_mmu_invalidate_begin and
        handler = kvm_mmu_unmap_gfn_range; one memslot (as_id 0) covers the range."""
        yield from write_lock(kvm.mmu_lock)  # KVM_MMU_LOCK()
        self.kvm_mmu_invalidate_begin(kvm)
        flush = yield from self.kvm_mmu_unmap_gfn_range(kvm, 0, start, end, True)
        if flush:
            world().note("kvm_flush_remote_tlbs()")
        self.check_unmap_complete(kvm, start, end)
        yield from write_unlock(kvm.mmu_lock)

    def kvm_mmu_notifier_invalidate_range_end(self, kvm: Kvm, start: int, end: int) -> Steps:
        yield from write_lock(kvm.mmu_lock)
        self.kvm_mmu_invalidate_end(kvm)
        yield from write_unlock(kvm.mmu_lock)

    def kvm_mmu_invalidate_begin(self, kvm: Kvm) -> None:
        kvm.mmu_invalidate_in_progress += 1
        if kvm.mmu_invalidate_in_progress == 1:
            kvm.mmu_invalidate_range_start = None  # INVALID_GPA
            kvm.mmu_invalidate_range_end = None

    def kvm_mmu_invalidate_range_add(self, kvm: Kvm, start: int, end: int) -> None:
        if kvm.mmu_invalidate_range_start is None:
            kvm.mmu_invalidate_range_start, kvm.mmu_invalidate_range_end = start, end
        else:
            kvm.mmu_invalidate_range_start = min(kvm.mmu_invalidate_range_start, start)
            kvm.mmu_invalidate_range_end = max(kvm.mmu_invalidate_range_end, end)

    def kvm_mmu_unmap_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                                may_block: bool) -> Generator[Op, int, bool]:
        self.kvm_mmu_invalidate_range_add(kvm, start, end)
        return (yield from self.kvm_unmap_gfn_range(kvm, as_id, start, end, may_block))

    def kvm_mmu_invalidate_end(self, kvm: Kvm) -> None:
        # The new sequence is visible before in_progress drops (smp_wmb()).
        kvm.mmu_invalidate_seq += 1
        kvm.mmu_invalidate_in_progress -= 1

    @inline
    def check_unmap_complete(self, kvm: Kvm, start: int, end: int) -> None:
        """Property: when the unmap for [start, end) returns, no root, valid or
        invalid, maps a gfn in the range: the mm frees the pages next."""
        for root in live_roots():
            for gfn, _sp, _spte in root_leaves(root):
                if start <= gfn < end:
                    world().report("notifier-incomplete",
                                   f"unmap of gfns [{start}, {end}) returned with gfn {gfn} "
                                   f"still mapped by {root!r}")
                    return

    def mm_unmap_range(self, kvm: Kvm, start: int, end: int) -> Steps:
        """The VMM's munmap()/MADV_DONTNEED of guest memory (mm/memory.c): notifier
        start, clear the PTEs and drop the mm's page references, notifier end."""
        mm = kvm.mm
        yield from self.kvm_mmu_notifier_invalidate_range_start(kvm, start, end)
        for addr in range(start, end):
            yield Op("zap_pte_range", f"{mm!r} hva {addr}")
            p = mm.pte[addr]
            if p is None:
                continue
            set_item(mm, "pte", addr, None)
            if (yield from put_page(p)):
                self.check_page_unmapped(kvm, p)
        yield from self.kvm_mmu_notifier_invalidate_range_end(kvm, start, end)
        yield from self.kvm_put_kvm(kvm)  # the VMM closes its VM fd

    # CONFIG_KVM_MMU_LOCKLESS_AGING (aa34b811650c; x86 selects it since b146a9b34aed)
    KVM_MMU_LOCKLESS_AGING = False

    def kvm_age_hva_range(self, kvm: Kvm, start: int, end: int,
                          test_only: bool) -> Generator[Op, int, bool]:
        """``kvm_age_hva_range()`` -> ``kvm_handle_hva_range()`` with handler
        kvm_test_age_gfn (``test_only``) or kvm_age_gfn: one memslot (as_id 0) covers the
        range, and KVM_MMU_LOCK() (mmu_lock for write) is taken around the handler unless
        the range is ``lockless``. The memslot lookup under kvm->srcu is left out."""
        lockless = self.KVM_MMU_LOCKLESS_AGING
        if not lockless:
            yield from write_lock(kvm.mmu_lock)  # KVM_MMU_LOCK()
        if test_only:
            young = yield from self.kvm_test_age_gfn(kvm, 0, start, end)
        else:
            young = yield from self.kvm_age_gfn(kvm, 0, start, end)
        if not lockless:
            yield from write_unlock(kvm.mmu_lock)
        return young

    def kvm_mmu_notifier_clear_young(self, kvm: Kvm, start: int, end: int) -> Generator[Op, int, bool]:
        """No TLB flush (``kvm_age_hva_range_no_flush``)."""
        return (yield from self.kvm_age_hva_range(kvm, start, end, False))

    def kvm_mmu_notifier_test_young(self, kvm: Kvm, start: int, end: int) -> Generator[Op, int, bool]:
        return (yield from self.kvm_age_hva_range(kvm, start, end, True))

    def mm_age_range(self, kvm: Kvm, start: int, end: int) -> Steps:
        """Reclaim harvesting the Accessed bits of guest memory (MGLRU's aging walk,
        mm/vmscan.c): clear_young over the range, then test_young. A notifier call runs
        inside the notifier's SRCU section, which mmu_notifier_unregister() at VM
        teardown waits for: modeled as a VM reference held until the calls return."""
        young = yield from self.kvm_mmu_notifier_clear_young(kvm, start, end)
        world().note(f"clear_young: {int(young)}")
        young = yield from self.kvm_mmu_notifier_test_young(kvm, start, end)
        world().note(f"test_young: {int(young)}")
        yield from self.kvm_put_kvm(kvm)

    # -- VM lifetime (notes §6.2) -------------------------------------------------------------
    def kvm_put_kvm(self, kvm: Kvm) -> Steps:
        yield Op("kvm_put_kvm", kvm)
        kvm.users_count -= 1

    def kvm_destroy_vm(self, kvm: Kvm) -> Steps:
        """Runs once the last reference to the VM is put."""
        yield from wait_event("kvm->users_count == 0", lambda: kvm.users_count == 0)
        # mmu_notifier_unregister() -> release -> kvm_arch_flush_shadow_all()
        yield from self.kvm_mmu_zap_all(kvm)
        # kvm_arch_destroy_vm(): kvm_unload_vcpu_mmus(), ..., kvm_mmu_uninit_vm()
        for vcpu in kvm.vcpus:
            yield from self.kvm_mmu_unload(vcpu)
        for vcpu in kvm.vcpus:  # kvm_destroy_vcpus() -> kvm_arch_vcpu_destroy()
            yield from self.kvm_mmu_destroy(vcpu)
        yield from self.kvm_mmu_uninit_vm(kvm)


class Kernel(X86):
    """The base model: Linux v6.9. Versions and mutants subclass it."""

    NAME = "v6.9"
    COMMIT = "576a15de8d29 (the series' last patch, merged for v6.9)"
    # A historical protocol kept for the regression corpus (docs/corpus.md). For the
    # suite's budget the test matrices run it at one vCPU (and vcpu-load at two) and
    # with its own mutants only; bench/verify_matrix.py runs it at two.
    CORPUS_ERA = False

    # The kernel object sits in every thread's frames (``self``): hash it by what it
    # is, so that fingerprints agree between two programs built for the same kernel.
    def __hash__(self) -> int:
        return hash(self.NAME)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)
