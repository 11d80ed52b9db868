"""arch/x86/kvm/x86.c and virt/kvm/kvm_main.c: the vCPU run loop, memslot deletion and
VM destruction, the callers that drive the root protocol. Base: v6.9."""

from __future__ import annotations

from collections.abc import Generator, Sequence

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import objects_of
from tdpmmu.kernel.requests import (
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    kvm_check_request,
    kvm_request_pending,
)
from tdpmmu.kernel.spinlock import mutex_lock, mutex_unlock
from tdpmmu.kernel.wait import wait_event
from tdpmmu.kvm.mmu import Mmu
from tdpmmu.kvm.structs import (
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS,
    KVM_REQ_VM_DEAD,
    Kvm,
    kvm_mmu_page,
    kvm_vcpu,
)

Steps = Generator[Op, int, None]

EIO = 5


class X86(Mmu):
    """x86.c / kvm_main.c, v6.9."""

    # -- vCPU (notes §6.1) ----------------------------------------------------------------
    def vcpu_enter_guest(self, vcpu: kvm_vcpu, gfn: int | None) -> Generator[Op, int, int]:
        """One trip into the guest; the guest exits on an EPT violation at ``gfn``."""
        if (yield from kvm_request_pending(vcpu)):
            if (yield from kvm_check_request(KVM_REQ_VM_DEAD, vcpu)):
                return -EIO
            if (yield from kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS, vcpu)):
                yield from self.kvm_mmu_free_obsolete_roots(vcpu)
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
        # ... the guest runs until an exit (an EPT violation, or a kick) ...
        yield from WRITE_ONCE(vcpu, "mode", OUTSIDE_GUEST_MODE)
        vcpu.in_guest = False
        if gfn is not None:
            yield from self.kvm_tdp_mmu_page_fault(vcpu, gfn)
        return 1

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
    @inline
    def check_fast_zap_complete(self, kvm: Kvm) -> None:
        """Property: when kvm_mmu_zap_all_fast() returns, no invalid root maps anything
        (after the memslot is gone, mmu_notifiers could no longer find those SPTEs)."""
        for obj in objects_of(kvm_mmu_page, live_only=True):
            if obj.role.invalid and obj.sptes:
                world().report("fast-zap-incomplete",
                         f"kvm_mmu_zap_all_fast() returned with SPTEs left in invalid {obj!r}")

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
        yield from self.kvm_mmu_uninit_vm(kvm)


class Kernel(X86):
    """The base model: Linux v6.9. Versions and mutants subclass it."""

    NAME = "v6.9"
    COMMIT = "576a15de8d29 (the series' last patch, merged for v6.9)"

    # The kernel object sits in every thread's frames (``self``): hash it by what it
    # is, so that fingerprints agree between two programs built for the same kernel.
    def __hash__(self) -> int:
        return hash(self.NAME)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)
