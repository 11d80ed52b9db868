"""The async-worker era after "KVM: x86: Preserve TDP MMU roots until they are explicitly
invalidated" (edbdb43fc96b, v6.4), modeled on v6.5: B10."""

from __future__ import annotations

from collections.abc import Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.lockdep import lockdep_assert_held
from tdpmmu.kernel.rcu import rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import list_first_or_null_rcu, list_next_or_null_rcu
from tdpmmu.kernel.workqueue import destroy_workqueue
from tdpmmu.kvm.structs import Kvm, kvm_mmu_page
from tdpmmu.kvm.tdp_mmu import ListFirst, ListNext, Steps, TdpMmu
from tdpmmu.kvm.versions.v6_1 import V6_1


class V6_5(V6_1):
    """v6.4..v6.5: the async zap worker of ``V6_1`` (v5.18..), with edbdb43fc96b "KVM:
    x86: Preserve TDP MMU roots until they are explicitly invalidated" (v6.4) on top:
    - a root starts with two references, the vCPU's and the TDP MMU's own, which the
      TDP MMU holds until the root is invalidated; so a valid root's last reference is
      never put, and kvm_tdp_mmu_put_root() no longer makes "defunct" roots
      (kvm_tdp_root_mark_invalid() is gone): a final put on a valid root is
      ``KVM_BUG_ON(!is_tdp_mmu_page(root) || !root->role.invalid)``, as on v6.9;
    - kvm_tdp_mmu_invalidate_all_roots() takes no reference: it gifts the TDP MMU's to
      each valid root's work item. It waives its lockdep assertion when the VM has no
      users or no vCPUs (the destruction and KVM_CREATE_VM-failure paths call it without
      mmu_lock: B10 (a)), so it walks the roots under rcu_read_lock() with
      list_for_each_entry_rcu(): a worker may free a root it has just been given while
      the walk goes on (B10 (b));
    - kvm_mmu_uninit_tdp_mmu() invalidates every root (which puts the TDP MMU's
      references through the workers) before destroy_workqueue() waits for them.
    Removed by 0df9dab891ff (v6.6), which zaps synchronously with the scheduled flag."""

    NAME = "v6.5"
    CORPUS_ERA = True
    COMMIT = ("v6.5 (the zap workers, with edbdb43fc96b: Preserve TDP MMU roots until they are "
              "explicitly invalidated, v6.4)")
    ROOT_INITIAL_REFS = 2

    @inline  # one frame in traces: v6.9's, which has the same name
    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        # kvm_lockdep_assert_mmu_lock_held(kvm, shared), then v6.9's body (the same
        # since edbdb43fc96b: KVM_BUG_ON on a valid root, unlink, call_rcu).
        lockdep_assert_held(kvm.mmu_lock)
        yield from TdpMmu.kvm_tdp_mmu_put_root(self, kvm, root)

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        """Mark every valid root invalid and queue its work item, gifted the TDP MMU's
        reference. Without mmu_lock at destruction, so under RCU."""
        self.tdp_mmu_invalidate_lockdep(kvm)
        yield from rcu_read_lock()
        yield from self.tdp_mmu_invalidate_roots_walk(kvm)
        yield from rcu_read_unlock()

    @inline
    def tdp_mmu_invalidate_roots_walk(
        self, kvm: Kvm, first: ListFirst = list_first_or_null_rcu,
        after: ListNext = list_next_or_null_rcu,
    ) -> Steps:
        """``list_for_each_entry_rcu(root, &kvm->arch.tdp_mmu_roots, link)`` and its body.
        The list can change under the walk at destruction (a worker's final put unlinks
        its root), so every step along it is a scheduling point."""
        head = kvm.arch.tdp_mmu_roots
        pos = yield from first(head)
        while pos is not None:
            yield from self.tdp_mmu_invalidate_and_schedule(kvm, pos.container())
            pos = yield from after(head, pos)

    @inline
    def tdp_mmu_invalidate_and_schedule(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """The loop body: a valid root is marked invalid and scheduled; an invalid one
        already gave its TDP MMU reference to a work item."""
        self.fast_zap_visits(root)
        if not root.role.invalid:
            self.tdp_mmu_set_root_invalid(kvm, root)
            world().note(f"{root!r} invalid")
            yield from self.tdp_mmu_schedule_zap_root(kvm, root)

    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Generator[Op, int, None]:
        # Invalidating schedules every root for zapping, which puts the TDP MMU's
        # references; destroying the workqueue flushes it first.
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        yield from destroy_workqueue(kvm.arch.tdp_mmu_zap_wq)
