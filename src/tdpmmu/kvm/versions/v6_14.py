"""v6.14: TDX mirror roots (B13)."""

from __future__ import annotations

from collections.abc import Generator
from enum import IntFlag
from typing import NamedTuple, cast

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.bug import KVM_BUG_ON, WARN_ON_ONCE
from tdpmmu.kernel.lockdep import lockdep_assert_held, lockdep_assert_held_write
from tdpmmu.kernel.rculist import list_for_each
from tdpmmu.kernel.rwlock import held_for_read, read_lock, read_unlock, write_lock, write_unlock
from tdpmmu.kvm.mmu import MIRROR
from tdpmmu.kvm.spte import REMOVED_SPTE, is_last_spte, is_removed_spte, is_shadow_present_pte
from tdpmmu.kvm.structs import VALID_PAGE, Kvm, RoleWord, kvm_mmu_page, kvm_page_fault, kvm_vcpu
from tdpmmu.kvm.tdp_iter import SptePtr, TdpIter, kvm_tdp_mmu_write_spte
from tdpmmu.kvm.tdp_mmu import EBUSY, Steps
from tdpmmu.kvm.x86 import Kernel

# =====================================================================================
# v6.14: TDX mirror roots (the TDX MMU prep series, merged for v6.14; TDX VMs themselves
# can be created from v6.16). Only what B13 needs: mirror roots beside the direct root,
# private faults into them, root types, and the external (S-EPT) hooks' lock rules.
# =====================================================================================

class KvmTdpMmuRootTypes(IntFlag):
    """``enum kvm_tdp_mmu_root_types`` (de86ef7bf50f, fabaa7650148)."""

    KVM_INVALID_ROOTS = 1 << 0
    KVM_DIRECT_ROOTS = 1 << 1
    KVM_MIRROR_ROOTS = 1 << 2


KVM_INVALID_ROOTS = KvmTdpMmuRootTypes.KVM_INVALID_ROOTS
KVM_DIRECT_ROOTS = KvmTdpMmuRootTypes.KVM_DIRECT_ROOTS
KVM_MIRROR_ROOTS = KvmTdpMmuRootTypes.KVM_MIRROR_ROOTS
KVM_VALID_ROOTS = KVM_DIRECT_ROOTS | KVM_MIRROR_ROOTS
KVM_ALL_ROOTS = KVM_VALID_ROOTS | KVM_INVALID_ROOTS
KVM_X86_TDX_VM = 5  # 9364789567f9


def kvm_has_mirrored_tdp(kvm: Kvm) -> bool:
    return bool(kvm.arch.vm_type == KVM_X86_TDX_VM)


def kvm_is_addr_direct(kvm: Kvm, gfn: int) -> bool:
    """mmu.h: no shared bit configured, or the address has it (a shared access)."""
    bits = kvm.arch.gfn_direct_bits
    return not bits or bool(gfn & bits)


def is_mirror_sp(sp: kvm_mmu_page) -> bool:
    return bool(sp.role.is_mirror)


def is_mirror_sptep(sptep: SptePtr) -> bool:
    return is_mirror_sp(sptep[0])


class RoleCopy(NamedTuple):
    """A ``union kvm_mmu_page_role`` by value (the kernel's local ``role``)."""

    word: RoleWord

    @property
    def smm(self) -> int:
        return self.word[2]


class V6_14(Kernel):
    """v6.9 plus the TDX MMU prep series (merged for v6.14): a VM with mirrored TDP
    (``kvm_has_mirrored_tdp()``) gives each vCPU a mirror root beside its direct root;
    private faults map into the mirror root, and every change of a mirror SPTE is
    propagated to the external (S-EPT) page table through x86 ops that the model keeps
    as their locking rules only. Roots are matched by type; the fast zap and the
    mmu_notifier release leave valid mirror roots alone; uninit zaps them holding
    mmu_lock for write (35be969d1ef2, B13), because removing external SPTEs needs it."""

    NAME = "v6.14"
    COMMIT = ("35be969d1ef2 (Zap invalid roots with mmu_lock holding for write at uninit), "
              "fabaa7650148, 94faba8999b9, a89ecbb56bc7, df4af9f89cd8")

    # -- root types (de86ef7bf50f, fabaa7650148) ------------------------------------------
    @inline
    def tdp_mmu_root_match(self, root: kvm_mmu_page, only_valid: bool) -> bool:
        # The v6.9-shaped callers pass only_valid; v6.14's pass root types.
        types = only_valid if isinstance(only_valid, KvmTdpMmuRootTypes) else (
            KVM_VALID_ROOTS if only_valid else KVM_ALL_ROOTS)
        if WARN_ON_ONCE(not types & KVM_VALID_ROOTS, "!(types & KVM_VALID_ROOTS)"):
            return False
        if root.role.invalid and not types & KVM_INVALID_ROOTS:
            return False
        return bool(types & (KVM_MIRROR_ROOTS if is_mirror_sp(root) else KVM_DIRECT_ROOTS))

    # df4af9f89cd8: the mmu_notifier release zaps direct roots, valid or not; valid mirror
    # roots are torn down at uninit. (A root-types mask in only_valid's place.)
    ZAP_ALL_ROOTS = cast(bool, KVM_DIRECT_ROOTS | KVM_INVALID_ROOTS)

    def kvm_tdp_mmu_invalidate_roots(self, kvm: Kvm, root_types: KvmTdpMmuRootTypes) -> Steps:
        """kvm_tdp_mmu_invalidate_all_roots() with a root-type filter (a89ecbb56bc7)."""
        if WARN_ON_ONCE(root_types & KVM_INVALID_ROOTS, "root_types & KVM_INVALID_ROOTS"):
            root_types &= ~KVM_INVALID_ROOTS
        self.tdp_mmu_invalidate_lockdep(kvm)
        yield Op("walk roots")
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            if self.tdp_mmu_root_match(root, cast(bool, root_types)):
                self.tdp_mmu_invalidate_root(kvm, root)

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        """The fast zap's call (kvm_mmu_zap_all_fast() is otherwise v6.9's): mirror roots
        cannot be fast-zapped, so it invalidates direct roots only."""
        yield from self.kvm_tdp_mmu_invalidate_roots(kvm, KVM_DIRECT_ROOTS)

    # -- zapping invalidated roots for read or write (35be969d1ef2) ------------------------
    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm, shared: bool = True) -> Steps:
        if shared:
            yield from read_lock(kvm.mmu_lock)
        else:
            yield from write_lock(kvm.mmu_lock)
        yield from self.zap_invalidated_roots_walk(kvm)
        if shared:
            yield from read_unlock(kvm.mmu_lock)
        else:
            yield from write_unlock(kvm.mmu_lock)

    @inline
    def zap_then_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        # tdp_mmu_zap_root(kvm, root, shared): the model's loop body keeps v6.9's
        # signature, so `shared` is read back from how the caller took mmu_lock.
        yield from self.tdp_mmu_zap_root(kvm, root, held_for_read(kvm.mmu_lock))
        yield from self.kvm_tdp_mmu_put_root(kvm, root)

    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Steps:
        yield from self.kvm_tdp_mmu_invalidate_roots(kvm, KVM_VALID_ROOTS)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm, False)

    # -- mirror roots (fabaa7650148) -------------------------------------------------------
    def mmu_alloc_direct_roots(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        if kvm_has_mirrored_tdp(vcpu.kvm) and not VALID_PAGE(vcpu.arch.mmu.mirror_root_hpa):
            yield from self.kvm_tdp_mmu_alloc_root(vcpu, True)
        return (yield from super().mmu_alloc_direct_roots(vcpu))

    def kvm_tdp_mmu_alloc_root(self, vcpu: kvm_vcpu, mirror: bool = False) -> Generator[Op, int, int]:
        if not mirror:
            return (yield from super().kvm_tdp_mmu_alloc_root(vcpu))
        level, direct, smm, guest_mode, invalid, _ = vcpu.arch.mmu.root_role.word
        role = RoleCopy((level, direct, smm, guest_mode, invalid, True))  # role.is_mirror = true
        root = yield from self.tdp_mmu_get_or_alloc_root(vcpu, role)  # type: ignore[arg-type]
        vcpu.arch.mmu.mirror_root_hpa = root
        return 0

    def kvm_mmu_destroy(self, vcpu: kvm_vcpu) -> Steps:
        """The mirror root lives as long as the vCPU: not freed by kvm_mmu_unload()."""
        yield from super().kvm_mmu_destroy(vcpu)
        yield from read_lock(vcpu.kvm.mmu_lock)
        yield from self.mmu_free_root_page(vcpu.kvm, vcpu.arch.mmu, MIRROR)
        yield from read_unlock(vcpu.kvm.mmu_lock)

    def tdp_mmu_get_root_for_fault(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> kvm_mmu_page:
        if not kvm_is_addr_direct(vcpu.kvm, fault.addr):
            return vcpu.arch.mmu.mirror_root_hpa  # type: ignore[no-any-return]
        return super().tdp_mmu_get_root_for_fault(vcpu, fault)

    # -- external (S-EPT) page tables (77ac7079e66d, 94faba8999b9) -------------------------
    @inline
    def _tdp_mmu_set_spte_atomic(
        self, kvm: Kvm, it: TdpIter, new_spte: object
    ) -> Generator[Op, int, tuple[int, TdpIter]]:
        if is_mirror_sptep(it.sptep) and not is_removed_spte(new_spte):
            # Users of atomic zapping don't operate on mirror roots: bug the VM if seen.
            if KVM_BUG_ON(not is_shadow_present_pte(new_spte), kvm, "!is_shadow_present_pte(new_spte)"):
                return -EBUSY, it
            return (yield from self.set_external_spte_present(kvm, it, new_spte))
        return (yield from super()._tdp_mmu_set_spte_atomic(kvm, it, new_spte))

    @inline
    def set_external_spte_present(
        self, kvm: Kvm, it: TdpIter, new_spte: object
    ) -> Generator[Op, int, tuple[int, TdpIter]]:
        """Freeze the mirror SPTE while the external page table is updated (the TDX
        module call: link_external_spt / set_external_spte, which succeed here), then
        set it. ``old_spte`` is passed by value: a failed freeze does not refresh it."""
        lockdep_assert_held(kvm.mmu_lock)
        KVM_BUG_ON(is_shadow_present_pte(it.old_spte), kvm, "was_present")
        table, index = it.sptep
        yield Op("try_cmpxchg64", f"{table!r}[{index}]", f"{it.old_spte!r} -> {REMOVED_SPTE}")
        if table.spt[index] != it.old_spte:
            world().note(f"fails: now {table.spt[index]!r}")
            return -EBUSY, it
        kvm_tdp_mmu_write_spte(it.sptep, REMOVED_SPTE)
        yield Op("__kvm_tdp_mmu_write_spte", f"{table!r}[{index}]", f"{new_spte!r}")
        kvm_tdp_mmu_write_spte(it.sptep, new_spte)
        return 0, it

    @inline
    def tdp_mmu_set_spte(self, kvm: Kvm, sptep: SptePtr, old_spte: object, new_spte: object,
                         gfn: int, level: int) -> Generator[Op, int, object]:
        old_spte = yield from super().tdp_mmu_set_spte(kvm, sptep, old_spte, new_spte, gfn, level)
        # Users that do non-atomic setting of PTEs don't operate on mirror roots.
        if is_mirror_sptep(sptep):
            KVM_BUG_ON(is_shadow_present_pte(new_spte), kvm, "is_shadow_present_pte(new_spte)")
            self.remove_external_spte(kvm, gfn, old_spte, level)
        return old_spte

    @inline
    def handle_removed_pt_entry(self, kvm: Kvm, sp: kvm_mmu_page, gfn: int, old_spte: object,
                                shared: bool) -> Steps:
        yield from super().handle_removed_pt_entry(kvm, sp, gfn, old_spte, shared)
        if is_mirror_sp(sp):
            KVM_BUG_ON(shared, kvm, "shared")
            self.remove_external_spte(kvm, gfn, old_spte, sp.role.level)
        # After the loop, free_external_spt() hands the table back (no lock rule of its own).

    def remove_external_spte(self, kvm: Kvm, gfn: int, old_spte: object, level: int) -> None:
        """External SPTEs are 4K leaves; external tables go through free_external_spt()."""
        if not is_last_spte(old_spte, level):
            return
        # Zapping a leaf SPTE is allowed only when the write lock is held.
        lockdep_assert_held_write(kvm.mmu_lock)
        world().note(f"remove_external_spte(gfn {gfn})")  # the TDX module call
