"""arch/x86/kvm/mmu/tdp_mmu.c: root lifetime, iteration, invalidation and zapping.

The base model is v6.9 (after "KVM: x86/mmu: Allow TDP MMU (un)load to run in parallel");
older kernels and mutants override single methods (``versions.py``, ``mutants.py``).
Each method mirrors the kernel function of the same name, step by step; every
``yield from`` is a call that contains scheduling points. Read with
docs/kernel-notes.md beside it (section numbers in the docstrings).
"""

from __future__ import annotations

from collections.abc import Callable, Generator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.bug import KVM_BUG_ON, WARN_ON, WARN_ON_ONCE
from tdpmmu.kernel.lockdep import (
    lockdep_assert_held,
    lockdep_assert_held_read,
    lockdep_assert_held_write,
)
from tdpmmu.kernel.memory import kfree, kzalloc, objects_of
from tdpmmu.kernel.rcu import call_rcu, rcu_barrier, rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import (
    list_add_rcu,
    list_del_rcu,
    list_empty,
    list_first_or_null_rcu,
    list_for_each,
    list_head,
    list_next_or_null_rcu,
)
from tdpmmu.kernel.refcount import (
    refcount_dec_and_test,
    refcount_inc_not_zero,
    refcount_read,
    refcount_set,
)
from tdpmmu.kernel.rwlock import read_lock, read_unlock
from tdpmmu.kernel.sched import cond_resched_rwlock_read, cond_resched_rwlock_write, need_resched
from tdpmmu.kernel.spinlock import spin_lock, spin_unlock
from tdpmmu.kvm.structs import (
    PG_LEVEL_1G,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    Kvm,
    kvm_mmu_page,
    kvm_mmu_page_role,
    kvm_vcpu,
)

Steps = Generator[Op, int, None]
ListFirst = Callable[[list_head], Generator[Op, int, list_head | None]]
ListNext = Callable[[list_head, list_head], Generator[Op, int, list_head | None]]


def kvm_mmu_page_as_id(root: kvm_mmu_page) -> int:
    return int(root.role.smm)


def kvm_mmu_role_as_id(role: kvm_mmu_page_role) -> int:
    return int(role.smm)


class TdpMmu:
    """tdp_mmu.c, v6.9."""

    # Zap passes of tdp_mmu_zap_root(), finest first (8ca983631f3c, v6.9).
    ZAP_ROOT_LEVELS: tuple[int, ...] = (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G, 0)

    # -- allocation and freeing (notes §1, §3) -------------------------------------------
    def tdp_mmu_alloc_sp(self, vcpu: kvm_vcpu) -> kvm_mmu_page:
        """From the vCPU's zeroed memory caches: cannot fail, no scheduling point."""
        n = len(objects_of(kvm_mmu_page)) + 1
        return kzalloc(kvm_mmu_page, name=f"root{n}")

    def tdp_mmu_init_sp(self, sp: kvm_mmu_page, role: kvm_mmu_page_role) -> None:
        sp.role.word = role.word
        sp.tdp_mmu_page = True

    def tdp_mmu_free_sp_rcu_callback(self, sp: kvm_mmu_page) -> None:
        """RCU callback: frees the page table and the header. Nothing else."""
        kfree(sp)

    def kvm_tdp_mmu_get_root(self, root: kvm_mmu_page) -> Generator[Op, int, bool]:
        return (yield from refcount_inc_not_zero(root.tdp_mmu_root_count))

    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        if not (yield from refcount_dec_and_test(root.tdp_mmu_root_count)):
            return
        # The TDP MMU holds a reference until the root is invalidated, so the last
        # reference can never be put on a valid root.
        KVM_BUG_ON(not root.tdp_mmu_page or not root.role.invalid, kvm,
                   "!is_tdp_mmu_page(root) || !root->role.invalid")
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        yield from list_del_rcu(root.link)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)
        yield from call_rcu(root, self.tdp_mmu_free_sp_rcu_callback)

    # -- iteration (notes §1.5, §2.3) ---------------------------------------------------
    def tdp_mmu_next_root(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        # Roots are RCU-protected, role.invalid is protected by mmu_lock.
        lockdep_assert_held(kvm.mmu_lock)
        yield from rcu_read_lock()
        next_root = yield from self.tdp_mmu_next_root_walk(kvm, prev_root, only_valid)
        yield from rcu_read_unlock()
        if prev_root is not None:
            yield from self.kvm_tdp_mmu_put_root(kvm, prev_root)
        return next_root

    @inline
    def tdp_mmu_next_root_walk(
        self, kvm: Kvm, prev_root: kvm_mmu_page | None, only_valid: bool,
        first: ListFirst = list_first_or_null_rcu, after: ListNext = list_next_or_null_rcu,
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        """The RCU walk inside tdp_mmu_next_root(): from prev_root (or the head) to the
        next root that passes the filter and whose reference could be taken."""
        head = kvm.arch.tdp_mmu_roots
        if prev_root is not None:
            pos = yield from after(head, prev_root.link)
        else:
            pos = yield from first(head)
        next_root = pos.container() if pos is not None else None
        while next_root is not None:
            if (not only_valid or not next_root.role.invalid) and (
                yield from self.kvm_tdp_mmu_get_root(next_root)
            ):
                break
            pos = yield from after(head, next_root.link)
            next_root = pos.container() if pos is not None else None
        return next_root  # type: ignore[no-any-return]

    # The for_each_*_yield_safe macros expand, at each call site, to:
    #     root = yield from self.tdp_mmu_next_root(kvm, None, only_valid)
    #     while root is not None:
    #         lockdep_assert_held(kvm.mmu_lock); <filter on as_id>; <body>
    #         root = yield from self.tdp_mmu_next_root(kvm, root, only_valid)
    # Python has no macros and a `for` loop cannot yield scheduling points, so the call
    # sites spell the expansion out, as the preprocessor would.

    # -- allocation of a vCPU root (notes §3.3) ----------------------------------------
    def kvm_tdp_mmu_alloc_root(self, vcpu: kvm_vcpu) -> Generator[Op, int, int]:
        mmu = vcpu.arch.mmu
        role = mmu.root_role
        as_id = kvm_mmu_role_as_id(role)
        kvm = vcpu.kvm

        # Check for an existing root before taking the pages lock: cheap when a
        # vCPU already created it.
        yield from read_lock(kvm.mmu_lock)
        root = yield from self.tdp_mmu_next_root(kvm, None, True)
        while root is not None:
            lockdep_assert_held(kvm.mmu_lock)
            if kvm_mmu_page_as_id(root) == as_id and root.role.word == role.word:
                break  # keep the iterator's reference: it becomes the vCPU's
            root = yield from self.tdp_mmu_next_root(kvm, root, True)
        if root is None:
            root = yield from self.tdp_mmu_alloc_root_slow(vcpu, kvm, role)
        yield from read_unlock(kvm.mmu_lock)
        # FREE_OBSOLETE_ROOTS keeps the vCPU out of the guest if the root is
        # invalidated from here on, and our reference keeps it alive.
        mmu.root.hpa = root
        mmu.root.pgd = 0
        return 0

    @inline
    def tdp_mmu_alloc_root_slow(
        self, vcpu: kvm_vcpu, kvm: Kvm, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page]:
        """The tail of kvm_tdp_mmu_alloc_root() after a fast-path miss (patch 7,
        dab285e4ec73): recheck and insert atomically under tdp_mmu_pages_lock."""
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        # Walk by hand: the standard iterators assume the pages lock is not held.
        found = None
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            if root.role.word == role.word:
                if not WARN_ON_ONCE(not (yield from self.kvm_tdp_mmu_get_root(root)),
                                    "!kvm_tdp_mmu_get_root(root)"):
                    found = root
                    break
        if found is None:
            found = yield from self.tdp_mmu_new_root(vcpu, role)
            yield from list_add_rcu(found.link, kvm.arch.tdp_mmu_roots)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)
        return found

    @inline
    def tdp_mmu_new_root(
        self, vcpu: kvm_vcpu, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page]:
        """tdp_mmu_alloc_sp() + tdp_mmu_init_sp() + refcount_set(): a root not yet
        published (the same three lines in every version)."""
        root = self.tdp_mmu_alloc_sp(vcpu)
        self.tdp_mmu_init_sp(root, role)
        # One reference for the vCPU, one for the TDP MMU itself; the latter is put
        # by kvm_tdp_mmu_zap_invalidated_roots() after the root is invalidated.
        yield from refcount_set(root.tdp_mmu_root_count, self.ROOT_INITIAL_REFS)
        return root

    ROOT_INITIAL_REFS = 2

    # -- invalidation and zapping (notes §4) -------------------------------------------
    CONFIG_PROVE_LOCKING = True

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        # Waived when the VM is being destroyed (no users) or was never set up.
        if self.CONFIG_PROVE_LOCKING and kvm.users_count and kvm.created_vcpus:
            lockdep_assert_held_write(kvm.mmu_lock)
        yield Op("kvm_tdp_mmu_invalidate_all_roots: walk roots")
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            self.tdp_mmu_invalidate_root(kvm, pos.container())

    @inline
    def tdp_mmu_invalidate_root(self, kvm: Kvm, root: kvm_mmu_page) -> None:
        """The loop body of kvm_tdp_mmu_invalidate_all_roots(): schedule and invalidate a
        valid root (together, under the write lock); already-invalid ones are left alone."""
        if not root.role.invalid:
            root.tdp_mmu_scheduled_root_to_zap = True
            root.role.invalid = True
            kvm.obsolete_roots_unannounced = True  # ghost: until the request is posted
            world().note(f"{root!r} invalid, scheduled to zap")

    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm) -> Steps:
        yield from read_lock(kvm.mmu_lock)
        root = yield from self.tdp_mmu_next_root(kvm, None, False)
        while root is not None:
            lockdep_assert_held(kvm.mmu_lock)
            yield from self.zap_invalidated_root(kvm, root)
            root = yield from self.tdp_mmu_next_root(kvm, root, False)
        yield from read_unlock(kvm.mmu_lock)

    @inline
    def zap_invalidated_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """The loop body of kvm_tdp_mmu_zap_invalidated_roots()."""
        if not root.tdp_mmu_scheduled_root_to_zap:
            return
        root.tdp_mmu_scheduled_root_to_zap = False
        KVM_BUG_ON(not root.role.invalid, kvm, "!root->role.invalid")
        # No TLB flush: vCPUs flush when they load a new root.
        yield from self.tdp_mmu_zap_root(kvm, root, True)
        # Put the TDP MMU's reference *after* zapping: mmu_notifiers must still
        # find the root while it is being zapped.
        yield from self.kvm_tdp_mmu_put_root(kvm, root)

    def tdp_mmu_zap_root(self, kvm: Kvm, root: kvm_mmu_page, shared: bool) -> Steps:
        # The caller's reference keeps the root reachable by mmu_notifiers.
        WARN_ON_ONCE(not (yield from refcount_read(root.tdp_mmu_root_count)),
                     "!refcount_read(&root->tdp_mmu_root_count)")
        self.kvm_lockdep_assert_mmu_lock_held(kvm, shared)
        yield from rcu_read_lock()
        for level in self.ZAP_ROOT_LEVELS:
            yield from self._tdp_mmu_zap_root(kvm, root, shared, level)
        yield from rcu_read_unlock()

    def _tdp_mmu_zap_root(self, kvm: Kvm, root: kvm_mmu_page, shared: bool, zap_level: int) -> Steps:
        """``__tdp_mmu_zap_root`` (renamed: Python mangles "__" names in classes).

        Abstract SPTEs: leaf entries are zapped by the 4K pass (or the first pass if
        there is no 4K pass); each entry visited is a tdp_mmu_iter_cond_resched point."""
        if zap_level != self.ZAP_ROOT_LEVELS[0]:
            return
        for gfn in sorted(root.sptes):
            yield from self.tdp_mmu_iter_cond_resched(kvm, shared)
            yield from self.tdp_mmu_zap_spte_atomic(kvm, root, gfn)

    @inline
    def tdp_mmu_zap_spte_atomic(self, kvm: Kvm, root: kvm_mmu_page, gfn: int) -> Steps:
        yield Op("tdp_mmu_set_spte_atomic", f"{root!r} gfn {gfn}", "SHADOW_NONPRESENT_VALUE")
        if gfn not in root.sptes:
            return  # another zapper won the cmpxchg
        root.sptes = root.sptes - {gfn}
        self.check_no_guest_on_zapped_root(kvm, root)

    @inline
    def check_no_guest_on_zapped_root(self, kvm: Kvm, root: kvm_mmu_page) -> None:
        """Property: SPTEs of an invalid root are zapped without a TLB flush, which is
        safe only if no vCPU is running the guest on that root."""
        if not root.role.invalid:
            return
        for vcpu in kvm.vcpus:
            if vcpu.in_guest and vcpu.arch.mmu.root.hpa == root:
                world().report(
                    "stale-tlb",
                    f"SPTE of invalid {root!r} zapped without TLB flush while {vcpu!r} "
                    "runs the guest on it",
                )

    def tdp_mmu_iter_cond_resched(self, kvm: Kvm, shared: bool) -> Generator[Op, int, bool]:
        if not (yield from need_resched()):
            return False
        yield from rcu_read_unlock()
        if shared:
            yield from cond_resched_rwlock_read(kvm.mmu_lock, resched=True)
        else:
            yield from cond_resched_rwlock_write(kvm.mmu_lock, resched=True)
        yield from rcu_read_lock()
        return True

    def kvm_lockdep_assert_mmu_lock_held(self, kvm: Kvm, shared: bool) -> None:
        if shared:
            lockdep_assert_held_read(kvm.mmu_lock)
        else:
            lockdep_assert_held_write(kvm.mmu_lock)

    def kvm_tdp_mmu_zap_all(self, kvm: Kvm) -> Steps:
        lockdep_assert_held_write(kvm.mmu_lock)
        root = yield from self.tdp_mmu_next_root(kvm, None, False)
        while root is not None:
            lockdep_assert_held(kvm.mmu_lock)
            yield from self.tdp_mmu_zap_root(kvm, root, False)
            root = yield from self.tdp_mmu_next_root(kvm, root, False)

    # -- page faults (notes §4.11), abstract SPTEs ----------------------------------------
    def kvm_tdp_mmu_map(self, vcpu: kvm_vcpu, gfn: int) -> Generator[Op, int, int]:
        root = vcpu.arch.mmu.root.hpa
        yield from rcu_read_lock()
        yield Op("tdp_mmu_set_spte_atomic", f"{root!r} gfn {gfn}", "leaf")
        if root.role.invalid:
            world().report("spte-in-invalid-root",
                           f"{vcpu!r} installs an SPTE for gfn {gfn} in invalid {root!r}")
        root.sptes = root.sptes | {gfn}
        yield from rcu_read_unlock()
        return 0

    # -- VM teardown (notes §4.12) --------------------------------------------------------
    def kvm_mmu_uninit_tdp_mmu(self, kvm: Kvm) -> Steps:
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm)
        WARN_ON(not list_empty(kvm.arch.tdp_mmu_roots), "!list_empty(&kvm->arch.tdp_mmu_roots)")
        yield from rcu_barrier()

