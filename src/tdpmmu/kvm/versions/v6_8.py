"""The series' own steps: v6.8 (before it) and its intermediate states v6.8+p6 and
v6.8+p7 (patch 8 not applied), which never shipped but are what the seed mail's
question is about."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline
from tdpmmu.kernel.lockdep import lockdep_assert_held_write
from tdpmmu.kernel.rculist import list_add_rcu, list_for_each
from tdpmmu.kernel.rwlock import read_lock, read_unlock, write_lock, write_unlock
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock
from tdpmmu.kvm.structs import PG_LEVEL_1G, Kvm, kvm_mmu, kvm_mmu_page, kvm_mmu_page_role, kvm_vcpu
from tdpmmu.kvm.tdp_mmu import kvm_mmu_page_as_id, kvm_mmu_role_as_id
from tdpmmu.kvm.x86 import Kernel


class V6_8_P7(Kernel):
    """v6.9 without patch 8, 576a15de8d29 "KVM: x86/mmu: Free TDP MMU roots while
    holding mmu_lock for read": every root is freed under mmu_lock held for write."""

    NAME = "v6.8+p7"
    COMMIT = "dab285e4ec73 (patch 7/8: alloc TDP MMU roots while holding mmu_lock for read)"

    def tdp_roots_freed_shared(self, mmu: kvm_mmu) -> bool:
        return False


class V6_8_P6(V6_8_P7):
    """Without patch 7, dab285e4ec73: after a miss under the read lock, the slow path
    retakes mmu_lock for *write* and rechecks with the valid-root iterator
    (f5238c2a60f1, "KVM: x86/mmu: Check for usable TDP MMU root while holding
    mmu_lock for read"; the '-' side of the seed mail's diff)."""

    NAME = "v6.8+p6"
    COMMIT = "f5238c2a60f1 (patch 6/8: check for a usable root while holding mmu_lock for read)"

    def kvm_tdp_mmu_try_get_root(self, vcpu: kvm_vcpu) -> Generator[Op, int, kvm_mmu_page | None]:
        role = vcpu.arch.mmu.root_role
        as_id = kvm_mmu_role_as_id(role)
        kvm = vcpu.kvm
        root = yield from self.tdp_mmu_next_root(kvm, None, True)
        while root is not None:
            if kvm_mmu_page_as_id(root) == as_id and root.role.word == role.word:
                return root  # the iterator's reference becomes the vCPU's
            root = yield from self.tdp_mmu_next_root(kvm, root, True)
        return None

    def kvm_tdp_mmu_alloc_root(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        mmu = vcpu.arch.mmu
        kvm = vcpu.kvm
        yield from read_lock(kvm.mmu_lock)
        root = yield from self.kvm_tdp_mmu_try_get_root(vcpu)
        yield from read_unlock(kvm.mmu_lock)
        if root is None:
            yield from write_lock(kvm.mmu_lock)
            # Recheck: another vCPU may have created a usable root since read_unlock.
            root = yield from self.kvm_tdp_mmu_try_get_root(vcpu)
            if root is None:
                root = yield from self.tdp_mmu_new_root(vcpu, mmu.root_role)
                yield from self.tdp_mmu_link_root(kvm, root)
            yield from write_unlock(kvm.mmu_lock)
        mmu.root.hpa = root
        mmu.root.pgd = 0
        return 0

    @inline
    def tdp_mmu_link_root(self, kvm: Kvm, root: kvm_mmu_page) -> Generator[Op, int, None]:
        """Before patch 7 the pages lock was taken just around list_add_rcu()."""
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        yield from list_add_rcu(root.link, kvm.arch.tdp_mmu_roots)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)


class V6_8(V6_8_P6):
    """Before the series: roots are looked up and created in one write-side critical
    section, kvm_tdp_mmu_get_vcpu_root_hpa() called by mmu_alloc_direct_roots() under
    write_lock(mmu_lock); tdp_mmu_zap_root() zaps in two passes (1G, then root level)
    until 8ca983631f3c (patch 1/8)."""

    NAME = "v6.8"
    COMMIT = "v6.8 (before 8ca983631f3c..576a15de8d29)"
    ZAP_ROOT_LEVELS: tuple[int, ...] = (PG_LEVEL_1G, 0)

    def mmu_alloc_direct_roots(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        kvm = vcpu.kvm
        mmu = vcpu.arch.mmu
        yield from write_lock(kvm.mmu_lock)
        # make_mmu_pages_available(): shadow pages only.
        root = yield from self.kvm_tdp_mmu_get_vcpu_root_hpa(vcpu)
        mmu.root.hpa = root
        mmu.root.pgd = 0
        yield from write_unlock(kvm.mmu_lock)
        return 0

    def kvm_tdp_mmu_get_vcpu_root_hpa(self, vcpu: kvm_vcpu) -> Generator[Op, int, kvm_mmu_page]:
        role = vcpu.arch.mmu.root_role
        kvm = vcpu.kvm
        lockdep_assert_held_write(kvm.mmu_lock)
        root = yield from self.tdp_mmu_find_vcpu_root(kvm, role)
        if root is not None:
            return root
        root = yield from self.tdp_mmu_new_root(vcpu, role)
        yield from self.tdp_mmu_link_root(kvm, root)
        return root

    @inline
    def tdp_mmu_find_vcpu_root(
        self, kvm: Kvm, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        """The for_each_tdp_mmu_root() walk of that function: a referenced root for
        ``role``, or None. Valid and invalid roots (role.word holds `invalid`). In a
        function of its own, so that its cursor ends with it (as v6.9's
        tdp_mmu_recheck_roots: a cursor left in the caller's frame would tell apart
        states that differ in nothing else)."""
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            lockdep_assert_held_write(kvm.mmu_lock)
            if kvm_mmu_page_as_id(root) != kvm_mmu_role_as_id(role):
                continue
            if root.role.word == role.word and (yield from self.kvm_tdp_mmu_get_root(root)):
                return root
        return None
