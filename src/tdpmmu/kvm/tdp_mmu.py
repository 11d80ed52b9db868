"""arch/x86/kvm/mmu/tdp_mmu.c: root lifetime, iteration, invalidation and zapping.

The base model is v6.9 (after "KVM: x86/mmu: Allow TDP MMU (un)load to run in parallel");
older kernels and mutants override single methods (``versions.py``, ``mutants.py``).
Each method mirrors the kernel function of the same name, step by step; every
``yield from`` is a call that contains scheduling points. Read with
docs/kernel-notes.md beside it (section numbers in the docstrings).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

from tdpmmu.explore.runtime import Op, inline, world
from tdpmmu.kernel.bug import BUG, KVM_BUG_ON, WARN_ON, WARN_ON_ONCE
from tdpmmu.kernel.lockdep import (
    lockdep_assert_held,
    lockdep_assert_held_read,
    lockdep_assert_held_write,
)
from tdpmmu.kernel.memory import kfree, kzalloc, next_name, objects_of, set_name
from tdpmmu.kernel.page import mark_page_accessed
from tdpmmu.kernel.rcu import call_rcu, rcu_barrier, rcu_read_lock, rcu_read_unlock
from tdpmmu.kernel.rculist import (
    INIT_LIST_HEAD,
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
from tdpmmu.kvm.spte import (
    KVM_PAGES_PER_HPAGE,
    REMOVED_SPTE,
    SHADOW_NONPRESENT_VALUE,
    SPTE_ENT_PER_PAGE,
    TDP_ROOT_LEVEL,
    Spte,
    is_accessed_spte,
    is_last_spte,
    is_removed_spte,
    is_shadow_present_pte,
    make_nonleaf_spte,
    make_spte,
    shadow_accessed_mask,
    spte_to_child_pt,
)
from tdpmmu.kvm.structs import (
    PG_LEVEL_1G,
    PG_LEVEL_2M,
    PG_LEVEL_4K,
    Kvm,
    RoleWord,
    kvm_mmu_page,
    kvm_mmu_page_role,
    kvm_page_fault,
    kvm_vcpu,
)
from tdpmmu.kvm.tdp_iter import (
    SptePtr,
    TdpIter,
    kvm_tdp_mmu_write_spte,
    tdp_iter_next,
    tdp_iter_start,
    tdp_iter_valid,
    tdp_mmu_clear_spte_bits,
)

Steps = Generator[Op, int, None]
EBUSY = 16
RET_PF_CONTINUE, RET_PF_RETRY, RET_PF_FIXED, RET_PF_SPURIOUS = 0, 1, 3, 4
ListFirst = Callable[[list_head], Generator[Op, int, list_head | None]]
ListNext = Callable[[list_head, list_head], Generator[Op, int, list_head | None]]


def kvm_mmu_page_as_id(root: kvm_mmu_page) -> int:
    return int(root.role.smm)


def kvm_mmu_role_as_id(role: kvm_mmu_page_role) -> int:
    return int(role.smm)


def root_leaves(sp: kvm_mmu_page) -> Iterator[tuple[int, kvm_mmu_page, Spte]]:
    """Every present leaf SPTE under a live table: (gfn, table, SPTE). For properties
    only: reads the tables directly, outside any scheduling point."""
    for i, spte in enumerate(sp.spt):
        if not is_shadow_present_pte(spte):
            continue
        assert isinstance(spte, Spte)
        if spte.leaf:
            yield sp.gfn + i * KVM_PAGES_PER_HPAGE(sp.role.level), sp, spte
        else:
            yield from root_leaves(spte.pfn)  # type: ignore[arg-type]


def live_roots() -> list[kvm_mmu_page]:
    """Every root not yet freed, on the list or not (a property's view of the slab)."""
    return [sp for sp in objects_of(kvm_mmu_page, live_only=True)
            if sp.role.level == TDP_ROOT_LEVEL]


def mapped_leaves(pfn: object) -> list[tuple[int, kvm_mmu_page]]:
    """Where ``pfn`` is mapped: (gfn, table) of each leaf SPTE pointing to it."""
    return [(gfn, sp) for root in live_roots() for gfn, sp, spte in root_leaves(root)
            if spte.pfn == pfn]


class TdpMmu:
    """tdp_mmu.c, v6.9."""

    # Zap passes of tdp_mmu_zap_root(), finest first (8ca983631f3c, v6.9).
    ZAP_ROOT_LEVELS: tuple[int, ...] = (PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G, 0)

    # -- allocation and freeing (notes §1, §3) -------------------------------------------
    def tdp_mmu_alloc_sp(self, vcpu: kvm_vcpu) -> kvm_mmu_page:
        """From the vCPU's zeroed memory caches: cannot fail, no scheduling point."""
        return kzalloc(kvm_mmu_page)

    def tdp_mmu_init_sp(self, sp: kvm_mmu_page, gfn: int, role: RoleWord) -> None:
        sp.role.word = role
        sp.gfn = gfn
        sp.tdp_mmu_page = True

    def tdp_mmu_init_child_sp(self, child_sp: kvm_mmu_page, it: TdpIter) -> None:
        parent_sp = it.pt_path[it.level - 1]
        level, *rest = parent_sp.role.word
        set_name(child_sp, next_name(kvm_mmu_page, "pt"))
        self.tdp_mmu_init_sp(child_sp, it.gfn, (level - 1, *rest))

    def tdp_mmu_free_sp(self, sp: kvm_mmu_page) -> None:
        """Immediate free: only for a table that was never made visible."""
        kfree(sp)

    def tdp_mmu_free_sp_rcu_callback(self, sp: kvm_mmu_page) -> None:
        """RCU callback: frees the page table and the header. Nothing else."""
        kfree(sp)

    def tdp_mmu_max_gfn_exclusive(self) -> int:
        """The guest physical address space the walks cover (``--gfns``)."""
        return self.max_gfn

    max_gfn = 2

    def tdp_mmu_root_refs(self, root: kvm_mmu_page) -> int:
        """Ghost, for reports: the references a root holds (v5.11 counts in an int)."""
        return int(root.tdp_mmu_root_count.refs)

    def kvm_tdp_mmu_get_root(self, root: kvm_mmu_page) -> Generator[Op, int, bool]:
        return (yield from refcount_inc_not_zero(root.tdp_mmu_root_count))

    def kvm_tdp_mmu_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        if not (yield from refcount_dec_and_test(root.tdp_mmu_root_count)):
            return
        # The TDP MMU holds a reference until the root is invalidated, so the last
        # reference can never be put on a valid root.
        KVM_BUG_ON(not root.tdp_mmu_page or not root.role.invalid, kvm,
                   "!is_tdp_mmu_page(root) || !root->role.invalid")
        yield from self.tdp_mmu_unlink_and_free_root(kvm, root)

    @inline
    def tdp_mmu_unlink_and_free_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """The tail of kvm_tdp_mmu_put_root() once the last reference is gone: unlink the
        root, free it after a grace period (the same four lines since 2bdb3d84cebc; v5.13
        zaps the root between the two, versions/v5_13.py)."""
        yield from self.tdp_mmu_unlink_root(kvm, root)
        yield from call_rcu(root, self.tdp_mmu_free_sp_rcu_callback)

    @inline
    def tdp_mmu_unlink_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """``list_del_rcu(&root->link)`` under tdp_mmu_pages_lock (since 2bdb3d84cebc)."""
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        yield from list_del_rcu(root.link)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)

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
            if self.tdp_mmu_root_match(next_root, only_valid) and (
                yield from self.kvm_tdp_mmu_get_root(next_root)
            ):
                break
            pos = yield from after(head, next_root.link)
            next_root = pos.container() if pos is not None else None
        return next_root  # type: ignore[no-any-return]

    @inline
    def tdp_mmu_root_match(self, root: kvm_mmu_page, only_valid: bool) -> bool:
        """The filter of tdp_mmu_next_root(): ``!only_valid || !root->role.invalid``
        (v6.14 names it and filters by root types, versions.py)."""
        return not only_valid or not root.role.invalid

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
        root = yield from self.tdp_mmu_get_or_alloc_root(vcpu, mmu.root_role)
        # FREE_OBSOLETE_ROOTS keeps the vCPU out of the guest if the root is
        # invalidated from here on, and our reference keeps it alive.
        mmu.root.hpa = root
        mmu.root.pgd = 0
        return 0

    @inline
    def tdp_mmu_get_or_alloc_root(
        self, vcpu: kvm_vcpu, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page]:
        """kvm_tdp_mmu_alloc_root() from read_lock() to read_unlock(): a referenced root
        for ``role`` (v6.14 also calls it with the mirror role)."""
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
        return root

    @inline
    def tdp_mmu_alloc_root_slow(
        self, vcpu: kvm_vcpu, kvm: Kvm, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page]:
        """The tail of kvm_tdp_mmu_alloc_root() after a fast-path miss (patch 7,
        dab285e4ec73): recheck and insert atomically under tdp_mmu_pages_lock."""
        yield from spin_lock(kvm.arch.tdp_mmu_pages_lock)
        root = yield from self.tdp_mmu_recheck_roots(kvm, role)
        if root is None:
            root = yield from self.tdp_mmu_new_root(vcpu, role)
            yield from list_add_rcu(root.link, kvm.arch.tdp_mmu_roots)
        yield from spin_unlock(kvm.arch.tdp_mmu_pages_lock)
        return root

    @inline
    def tdp_mmu_recheck_roots(
        self, kvm: Kvm, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page | None]:
        """The list_for_each_entry() recheck of that tail, under tdp_mmu_pages_lock: a
        referenced root for ``role``, or None. In a function of its own so that the
        walk's variables end with it: the kernel's loop leaves only ``root`` behind, and
        a cursor left in the caller's frame would tell apart states that differ in
        nothing else (how a vCPU came by its root: found, or allocated after passing an
        invalid one), 17,454 states of 893,498 at 2 vCPUs."""
        # Walk by hand: the standard iterators assume the pages lock is not held.
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            root = pos.container()
            if root.role.word == role.word and not WARN_ON_ONCE(
                    not (yield from self.kvm_tdp_mmu_get_root(root)), "!kvm_tdp_mmu_get_root(root)"):
                return root
        return None

    @inline
    def tdp_mmu_new_root(
        self, vcpu: kvm_vcpu, role: kvm_mmu_page_role
    ) -> Generator[Op, int, kvm_mmu_page]:
        """tdp_mmu_alloc_sp() + tdp_mmu_init_sp() + refcount_set(): a root not yet
        published (the same three lines in every version)."""
        root = self.tdp_mmu_alloc_sp(vcpu)
        set_name(root, next_name(kvm_mmu_page, "root"))
        self.tdp_mmu_init_sp(root, 0, role.word)
        self.root_page_frame(vcpu, root)
        # One reference for the vCPU, one for the TDP MMU itself; the latter is put
        # by kvm_tdp_mmu_zap_invalidated_roots() after the root is invalidated.
        yield from refcount_set(root.tdp_mmu_root_count, self.ROOT_INITIAL_REFS)
        return root

    ROOT_INITIAL_REFS = 2

    @inline
    def root_page_frame(self, vcpu: kvm_vcpu, root: kvm_mmu_page) -> None:
        """Ghost, where TLBs are modeled (kernel/tlb.py): the page under ``root->spt`` is
        the lowest frame no live root holds, so a freed root's page is the next root's,
        as the page allocator's per-CPU free lists (last in, first out) tend to make it."""
        if vcpu.arch.tlb is None:
            return
        held = {sp.frame for sp in live_roots() if sp != root}
        root.frame = min(f for f in range(len(held) + 1) if f not in held)
        world().note("{!r} at frame {}", root, root.frame)

    # -- invalidation and zapping (notes §4) -------------------------------------------
    CONFIG_PROVE_LOCKING = True

    def kvm_tdp_mmu_invalidate_all_roots(self, kvm: Kvm) -> Steps:
        self.tdp_mmu_invalidate_lockdep(kvm)
        yield Op("walk roots")
        for pos in list_for_each(kvm.arch.tdp_mmu_roots):
            self.tdp_mmu_invalidate_root(kvm, pos.container())

    @inline
    def tdp_mmu_invalidate_lockdep(self, kvm: Kvm) -> None:
        # Waived when the VM is being destroyed (no users) or was never set up.
        if self.CONFIG_PROVE_LOCKING and kvm.users_count and kvm.created_vcpus:
            lockdep_assert_held_write(kvm.mmu_lock)

    @inline
    def tdp_mmu_invalidate_root(self, kvm: Kvm, root: kvm_mmu_page) -> None:
        """The loop body of kvm_tdp_mmu_invalidate_all_roots(): schedule and invalidate a
        valid root (together, under the write lock); already-invalid ones are left alone."""
        self.fast_zap_visits(root)
        if not root.role.invalid:
            root.tdp_mmu_scheduled_root_to_zap = True
            self.tdp_mmu_set_root_invalid(kvm, root)
            world().note("{!r} invalid, scheduled to zap", root)

    @inline
    def fast_zap_visits(self, root: kvm_mmu_page) -> None:
        """Ghost: the invalidation saw this root, so kvm_mmu_zap_all_fast() must leave it
        empty (x86.py check_fast_zap_complete()). A root created after it may map only
        memslots that outlive the update (the kernel marks the slot invalid before the
        fast zap; the model has no memslot to mark), so it is not checked."""
        root.fast_zapped = True

    @inline
    def tdp_mmu_set_root_invalid(self, kvm: Kvm, root: kvm_mmu_page) -> None:
        """``root->role.invalid = true`` of the fast zap's invalidation, under mmu_lock
        held for write; vCPUs may still run on the root until they are told."""
        root.role.invalid = True
        kvm.obsolete_roots_unannounced = True  # ghost: until the request is posted

    def kvm_tdp_mmu_zap_invalidated_roots(self, kvm: Kvm) -> Steps:
        yield from read_lock(kvm.mmu_lock)
        yield from self.zap_invalidated_roots_walk(kvm)
        yield from read_unlock(kvm.mmu_lock)

    @inline
    def zap_invalidated_roots_walk(self, kvm: Kvm) -> Steps:
        """The for_each_tdp_mmu_root_yield_safe() loop of kvm_tdp_mmu_zap_invalidated_roots()
        (v6.14 takes mmu_lock around it for read or write)."""
        root = yield from self.tdp_mmu_next_root(kvm, None, False)
        while root is not None:
            lockdep_assert_held(kvm.mmu_lock)
            yield from self.zap_invalidated_root(kvm, root)
            root = yield from self.tdp_mmu_next_root(kvm, root, False)

    @inline
    def zap_invalidated_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """The loop body of kvm_tdp_mmu_zap_invalidated_roots()."""
        if not root.tdp_mmu_scheduled_root_to_zap:
            return
        root.tdp_mmu_scheduled_root_to_zap = False
        if not root.role.invalid:  # (which root, for the trace)
            world().note("{!r} is valid", root)
        KVM_BUG_ON(not root.role.invalid, kvm, "!root->role.invalid")
        yield from self.zap_then_put_root(kvm, root)

    @inline
    def zap_then_put_root(self, kvm: Kvm, root: kvm_mmu_page) -> Steps:
        """The tail of that loop body, the order a mutant changes."""
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
            # 0 is root->role.level; the model's roots sit at level 2, so the 1G pass
            # of a real 4-level root is the pass over the root's own entries here.
            root_level = root.role.level
            yield from self._tdp_mmu_zap_root(kvm, root, shared, min(level or root_level, root_level))
        yield from rcu_read_unlock()

    def _tdp_mmu_zap_root(self, kvm: Kvm, root: kvm_mmu_page, shared: bool, zap_level: int,
                          can_yield: bool = True) -> Steps:
        """``__tdp_mmu_zap_root`` (renamed: Python mangles "__" names in classes).
        ``can_yield=False``: zap_gfn_range() from a root's final put in v5.13 and v5.16,
        which may not drop mmu_lock (versions/v5_13.py, v5_16.py)."""
        end = self.tdp_mmu_max_gfn_exclusive()
        it = tdp_iter_start(root, zap_level, 0)
        while tdp_iter_valid(it, end):
            # retry:
            if can_yield:
                it = yield from self.tdp_mmu_iter_cond_resched(kvm, it, False, shared)
            if it.yielded or not is_shadow_present_pte(it.old_spte) or it.level > zap_level:
                it = tdp_iter_next(it)
                continue
            if not shared:
                it = yield from self.tdp_mmu_iter_set_spte(kvm, it, SHADOW_NONPRESENT_VALUE)
            else:
                r, it = yield from self.tdp_mmu_set_spte_atomic(kvm, it, SHADOW_NONPRESENT_VALUE)
                if r:
                    continue  # goto retry, with the fresh old_spte
                self.check_no_guest_on_zapped_root(kvm, root)
            it = tdp_iter_next(it)

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

    def tdp_mmu_iter_cond_resched(
        self, kvm: Kvm, it: TdpIter, flush: bool, shared: bool
    ) -> Generator[Op, int, TdpIter]:
        """Returns the iterator, ``yielded`` set if the lock was dropped: the walk then
        restarts from the root, since the tables on its path may be gone."""
        WARN_ON_ONCE(it.yielded, "iter->yielded")
        # Ensure forward progress: never yield twice at the same gfn.
        if it.next_last_level_gfn == it.yielded_gfn:
            return it
        if not (yield from need_resched()):
            return it
        if flush:
            world().note("kvm_flush_remote_tlbs()")
        yield from rcu_read_unlock()
        if shared:
            yield from cond_resched_rwlock_read(kvm.mmu_lock, resched=True)
        else:
            yield from cond_resched_rwlock_write(kvm.mmu_lock, resched=True)
        yield from rcu_read_lock()
        WARN_ON_ONCE(it.gfn > it.next_last_level_gfn, "iter->gfn > iter->next_last_level_gfn")
        return it._replace(yielded=True)

    # -- SPTE changes (tdp_mmu.c: handle_changed_spte and its callers) -------------------
    def tdp_mmu_set_spte_atomic(
        self, kvm: Kvm, it: TdpIter, new_spte: object
    ) -> Generator[Op, int, tuple[int, TdpIter]]:
        """Under mmu_lock held for read: cmpxchg, and on failure return -EBUSY with the
        iterator's ``old_spte`` refreshed, so the caller retries on fresh data."""
        lockdep_assert_held_read(kvm.mmu_lock)
        r, it = yield from self._tdp_mmu_set_spte_atomic(kvm, it, new_spte)
        if r:
            return r, it
        yield from self.handle_changed_spte(kvm, it.gfn, it.old_spte, new_spte, it.level, True)
        return 0, it

    @inline
    def _tdp_mmu_set_spte_atomic(
        self, kvm: Kvm, it: TdpIter, new_spte: object
    ) -> Generator[Op, int, tuple[int, TdpIter]]:
        """``__tdp_mmu_set_spte_atomic`` (renamed: Python mangles "__" names): the cmpxchg."""
        WARN_ON_ONCE(it.yielded or is_removed_spte(it.old_spte),
                     "iter->yielded || is_removed_spte(iter->old_spte)")
        table, index = it.sptep
        yield Op("try_cmpxchg64", f"{table!r}[{index}]", f"{it.old_spte!r} -> {new_spte!r}")
        current = table.spt[index]
        if current != it.old_spte:
            world().note("fails: now {!r}", current)
            return -EBUSY, it._replace(old_spte=current)
        kvm_tdp_mmu_write_spte((table, index), new_spte)
        return 0, it

    def tdp_mmu_iter_set_spte(self, kvm: Kvm, it: TdpIter, new_spte: object) -> Generator[Op, int, TdpIter]:
        WARN_ON_ONCE(it.yielded, "iter->yielded")
        yield from self.tdp_mmu_set_spte(kvm, it.sptep, it.old_spte, new_spte, it.gfn, it.level)
        return it._replace(old_spte=new_spte)

    @inline
    def tdp_mmu_set_spte(self, kvm: Kvm, sptep: SptePtr, old_spte: object, new_spte: object,
                         gfn: int, level: int) -> Generator[Op, int, object]:
        """mmu_lock held for write, so a plain write; no other thread can touch the SPTE."""
        lockdep_assert_held_write(kvm.mmu_lock)
        WARN_ON_ONCE(is_removed_spte(old_spte) or is_removed_spte(new_spte),
                     "is_removed_spte(old_spte) || is_removed_spte(new_spte)")
        table, index = sptep
        old_spte = table.spt[index]
        kvm_tdp_mmu_write_spte((table, index), new_spte)
        yield from self.handle_changed_spte(kvm, gfn, old_spte, new_spte, level, False)
        return old_spte

    def handle_changed_spte(self, kvm: Kvm, gfn: int, old_spte: object, new_spte: object,
                            level: int, shared: bool) -> Steps:
        """Bookkeeping after an SPTE changed: free the tables under a removed non-leaf
        SPTE, write the Accessed bit of a young leaf that is removed (or made old) back
        to its page."""
        was_present = is_shadow_present_pte(old_spte)
        is_present = is_shadow_present_pte(new_spte)
        was_leaf = was_present and is_last_spte(old_spte, level)
        is_leaf = is_present and is_last_spte(new_spte, level)
        pfn_changed = not (was_present and is_present and old_spte.pfn == new_spte.pfn)  # type: ignore[attr-defined]
        if was_leaf and is_leaf and pfn_changed:
            BUG(f"Invalid SPTE change: cannot replace a present leaf SPTE with another "
                f"present leaf SPTE mapping a different PFN! gfn {gfn}: {old_spte!r} -> {new_spte!r}")
            return
        if old_spte == new_spte or (not was_present and not is_present):
            return
        if was_present and not was_leaf and (is_leaf or pfn_changed):
            child = spte_to_child_pt(old_spte, level)
            assert isinstance(child, kvm_mmu_page)
            yield from self.handle_removed_pt(kvm, child, shared)
        if was_leaf and is_accessed_spte(old_spte) and (
                not is_present or not is_accessed_spte(new_spte) or pfn_changed):
            # The A/D write-back: kvm_set_pfn_accessed().
            assert isinstance(old_spte, Spte)
            mark_page_accessed(old_spte.pfn)  # type: ignore[arg-type]

    def handle_removed_pt(self, kvm: Kvm, sp: kvm_mmu_page, shared: bool) -> Steps:
        """A non-leaf SPTE was removed: freeze every entry of the unreachable child
        table with REMOVED_SPTE (so a walker still in it backs off), handle each old
        entry, and free the table after a grace period (walkers hold rcu_read_lock)."""
        level = sp.role.level
        base_gfn = sp.gfn
        self.tdp_mmu_unlink_sp(kvm, sp, shared)
        for i in range(SPTE_ENT_PER_PAGE):
            gfn = base_gfn + i * KVM_PAGES_PER_HPAGE(level)
            if shared:
                while True:  # another thread may have frozen it: wait
                    yield Op("xchg", f"{sp!r}[{i}]", REMOVED_SPTE)
                    old_spte = sp.spt[i]
                    kvm_tdp_mmu_write_spte((sp, i), REMOVED_SPTE)
                    if not is_removed_spte(old_spte):
                        break
            else:
                old_spte = sp.spt[i]
                if not is_shadow_present_pte(old_spte):
                    continue
                kvm_tdp_mmu_write_spte((sp, i), REMOVED_SPTE)
            yield from self.handle_removed_pt_entry(kvm, sp, gfn, old_spte, shared)
        yield from call_rcu(sp, self.tdp_mmu_free_sp_rcu_callback)

    @inline
    def handle_removed_pt_entry(self, kvm: Kvm, sp: kvm_mmu_page, gfn: int, old_spte: object,
                                shared: bool) -> Steps:
        """The tail of handle_removed_pt()'s loop body, once the entry is frozen (v6.14 adds
        the mirror root's external-SPTE removal)."""
        yield from self.handle_changed_spte(kvm, gfn, old_spte, REMOVED_SPTE, sp.role.level, shared)

    def tdp_mmu_unlink_sp(self, kvm: Kvm, sp: kvm_mmu_page, shared: bool) -> None:
        kvm.arch.tdp_mmu_pages -= 1  # tdp_unaccount_mmu_page(); no NX huge pages here

    def tdp_mmu_link_sp(self, kvm: Kvm, it: TdpIter, sp: kvm_mmu_page,
                        shared: bool) -> Generator[Op, int, tuple[int, TdpIter]]:
        spte = make_nonleaf_spte(sp)
        if shared:
            r, it = yield from self.tdp_mmu_set_spte_atomic(kvm, it, spte)
            if r:
                return r, it
        else:
            it = yield from self.tdp_mmu_iter_set_spte(kvm, it, spte)
        kvm.arch.tdp_mmu_pages += 1  # tdp_account_mmu_page()
        return 0, it

    def kvm_lockdep_assert_mmu_lock_held(self, kvm: Kvm, shared: bool) -> None:
        if shared:
            lockdep_assert_held_read(kvm.mmu_lock)
        else:
            lockdep_assert_held_write(kvm.mmu_lock)

    def kvm_tdp_mmu_zap_all(self, kvm: Kvm) -> Steps:
        lockdep_assert_held_write(kvm.mmu_lock)
        root = yield from self.tdp_mmu_next_root(kvm, None, self.ZAP_ALL_ROOTS)
        while root is not None:
            lockdep_assert_held(kvm.mmu_lock)
            yield from self.tdp_mmu_zap_root(kvm, root, False)
            root = yield from self.tdp_mmu_next_root(kvm, root, self.ZAP_ALL_ROOTS)

    # tdp_mmu_next_root()'s only_valid for kvm_tdp_mmu_zap_all(): every root, valid or not
    # (v6.14 passes root types here, versions.py).
    ZAP_ALL_ROOTS: bool = False

    # -- page faults (notes §4.11) ---------------------------------------------------------
    def kvm_tdp_mmu_map(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> Generator[Op, int, int]:
        """Install the translation for ``fault.gfn``: walk from the vCPU's root, link
        missing tables, set the leaf. Every install is a cmpxchg that can lose a race;
        the fault then returns RET_PF_RETRY and the guest faults again. Never yields."""
        kvm = vcpu.kvm
        ret = RET_PF_RETRY
        yield from rcu_read_lock()
        root = self.tdp_mmu_get_root_for_fault(vcpu, fault)
        it = tdp_iter_start(root, PG_LEVEL_4K, fault.gfn)  # tdp_mmu_for_each_pte
        while tdp_iter_valid(it, fault.gfn + 1):
            if is_removed_spte(it.old_spte):
                break  # frozen by another thread: goto retry
            if it.level == fault.goal_level:
                ret = yield from self.tdp_mmu_map_handle_target_level(vcpu, fault, it)
                break  # map_target_level
            if is_shadow_present_pte(it.old_spte):
                it = tdp_iter_next(it)  # step down into the existing table
                continue
            sp = self.tdp_mmu_alloc_sp(vcpu)
            self.tdp_mmu_init_child_sp(sp, it)
            r, it = yield from self.tdp_mmu_link_sp(kvm, it, sp, True)
            if r:
                self.tdp_mmu_free_sp(sp)
                break  # goto retry
            self.check_spte_in_valid_root(vcpu, root, fault.gfn)
            it = tdp_iter_next(it)
        else:
            WARN_ON_ONCE(it.level == fault.goal_level, "iter.level == fault->goal_level")
        yield from rcu_read_unlock()
        return ret

    def tdp_mmu_get_root_for_fault(self, vcpu: kvm_vcpu, fault: kvm_page_fault) -> kvm_mmu_page:
        """``root_to_sp(vcpu->arch.mmu->root.hpa)`` (v6.14 names it: private faults of a
        VM with mirrored TDP go to the mirror root)."""
        return vcpu.arch.mmu.root.hpa  # type: ignore[no-any-return]

    def tdp_mmu_map_handle_target_level(self, vcpu: kvm_vcpu, fault: kvm_page_fault,
                                        it: TdpIter) -> Generator[Op, int, int]:
        sp = it.pt_path[it.level - 1]
        if WARN_ON_ONCE(sp.role.level != fault.goal_level, "sp->role.level != fault->goal_level"):
            return RET_PF_RETRY
        new_spte = make_spte(fault.pfn)  # type: ignore[arg-type]
        if new_spte == it.old_spte:
            return RET_PF_SPURIOUS
        r, it = yield from self.tdp_mmu_set_spte_atomic(vcpu.kvm, it, new_spte)
        if r:
            return RET_PF_RETRY
        self.check_spte_in_valid_root(vcpu, it.pt_path[it.root_level - 1], fault.gfn)
        return RET_PF_FIXED

    @inline
    def check_spte_in_valid_root(self, vcpu: kvm_vcpu, root: kvm_mmu_page, gfn: int) -> None:
        """Property: no SPTE is created in an invalid root (its zapper may have passed
        that gfn already, leaving the SPTE, and the table under it, behind)."""
        if root.role.invalid:
            world().report("spte-in-invalid-root",
                           f"{vcpu!r} installs an SPTE for gfn {gfn} in invalid {root!r}")

    # -- mmu_notifier unmap (notes §4.7, §4.9) ------------------------------------------
    def tdp_mmu_zap_leafs(self, kvm: Kvm, root: kvm_mmu_page, start: int, end: int,
                          can_yield: bool, flush: bool) -> Generator[Op, int, bool]:
        end = min(end, self.tdp_mmu_max_gfn_exclusive())
        lockdep_assert_held_write(kvm.mmu_lock)
        yield from rcu_read_lock()
        it = tdp_iter_start(root, PG_LEVEL_4K, start)
        while tdp_iter_valid(it, end):
            if can_yield:
                it = yield from self.tdp_mmu_iter_cond_resched(kvm, it, flush, False)
                if it.yielded:
                    flush = False  # flushed before yielding
                    it = tdp_iter_next(it)
                    continue
            if not is_shadow_present_pte(it.old_spte) or not is_last_spte(it.old_spte, it.level):
                it = tdp_iter_next(it)
                continue
            it = yield from self.tdp_mmu_iter_set_spte(kvm, it, SHADOW_NONPRESENT_VALUE)
            # Zapping SPTEs in invalid roots doesn't require a TLB flush (fcdffe97f80e).
            if not root.role.invalid:
                flush = True
            it = tdp_iter_next(it)
        yield from rcu_read_unlock()
        return flush

    def kvm_tdp_mmu_unmap_gfn_range(self, kvm: Kvm, as_id: int, start: int, end: int,
                                    may_block: bool, flush: bool) -> Generator[Op, int, bool]:
        """Invalid roots too: their zapper may still be on its way (B04, d62007edf01f)."""
        root = yield from self.tdp_mmu_next_root(kvm, None, self.UNMAP_ONLY_VALID)
        while root is not None:
            lockdep_assert_held(kvm.mmu_lock)
            if kvm_mmu_page_as_id(root) == as_id:
                flush = yield from self.tdp_mmu_zap_leafs(kvm, root, start, end, may_block, flush)
            root = yield from self.tdp_mmu_next_root(kvm, root, self.UNMAP_ONLY_VALID)
        return flush

    UNMAP_ONLY_VALID = False

    # -- mmu_notifier aging: clear_young / test_young (kernel-protocol.md §5 B15) --------
    def kvm_tdp_mmu_age_gfn_range(self, kvm: Kvm, as_id: int, start: int,
                                  end: int) -> Generator[Op, int, bool]:
        return (yield from self.kvm_tdp_mmu_handle_gfn(kvm, as_id, start, end, False))

    def kvm_tdp_mmu_test_age_gfn(self, kvm: Kvm, as_id: int, start: int,
                                 end: int) -> Generator[Op, int, bool]:
        return (yield from self.kvm_tdp_mmu_handle_gfn(kvm, as_id, start, end, True))

    def kvm_tdp_mmu_handle_gfn(self, kvm: Kvm, as_id: int, start: int, end: int,
                               test_only: bool) -> Generator[Op, int, bool]:
        """v6.9: every root of the address space, valid or invalid
        (``for_each_tdp_mmu_root``: no references, which is safe because mmu_lock is held
        for write: no root can be put, and the list cannot change), one RCU section per
        root; the handler, age_gfn_range() or test_age_gfn(), is ``test_only``. Never
        yields. Later kernels rewrote it as ``__kvm_tdp_mmu_age_gfn_range`` (versions.py)."""
        ret = False
        head = kvm.arch.tdp_mmu_roots
        # list_for_each_entry(), spelled out because the body has scheduling points.
        pos = head.next
        while pos != head:
            root = pos.container()
            lockdep_assert_held_write(kvm.mmu_lock)
            if kvm_mmu_page_as_id(root) == as_id:
                yield from rcu_read_lock()
                ret |= yield from self.tdp_mmu_age_leafs(kvm, root, start, end, test_only)
                yield from rcu_read_unlock()
            pos = pos.next
        return ret

    @inline
    def tdp_mmu_age_leafs(self, kvm: Kvm, root: kvm_mmu_page, start: int, end: int,
                          test_only: bool) -> Generator[Op, int, bool]:
        """``tdp_root_for_each_leaf_pte(iter, root, start, end)`` with the handler as its
        body: is any leaf young; unless ``test_only``, make every young leaf old. With
        ``test_only`` the walk stops at the first young leaf (51192ebdd145; v6.9's
        test_age_gfn() reads on, which changes nothing: reads are no steps here)."""
        young = False
        end = min(end, self.tdp_mmu_max_gfn_exclusive())
        it = tdp_iter_start(root, PG_LEVEL_4K, start)
        while tdp_iter_valid(it, end):
            if (is_shadow_present_pte(it.old_spte) and is_last_spte(it.old_spte, it.level)
                    and is_accessed_spte(it.old_spte)):
                young = True
                if test_only:
                    break
                it = yield from self.kvm_tdp_mmu_age_spte(kvm, it)
            it = tdp_iter_next(it)
        return young

    def kvm_tdp_mmu_age_spte(self, kvm: Kvm, it: TdpIter) -> Generator[Op, int, TdpIter]:
        """Make a young leaf old (A/D bits enabled; A/D-disabled SPTEs are marked for
        access tracking instead, which the model leaves out). v6.9 (age_gfn_range()):
        tdp_mmu_clear_spte_bits(), a plain store of ``iter->old_spte`` without the
        Accessed bit: nothing else writes SPTEs while mmu_lock is held for write."""
        old_spte = yield from tdp_mmu_clear_spte_bits(it.sptep, it.old_spte, shadow_accessed_mask)
        return it._replace(old_spte=old_spte)

    # -- VM teardown (notes §4.12) --------------------------------------------------------
    def kvm_mmu_init_tdp_mmu(self, kvm: Kvm) -> None:
        """At VM creation, before any thread runs (not a scheduling point)."""
        INIT_LIST_HEAD(kvm.arch.tdp_mmu_roots)

    def kvm_mmu_uninit_tdp_mmu(self, kvm: Kvm) -> Steps:
        yield from self.tdp_mmu_uninit_put_roots(kvm)
        WARN_ON(kvm.arch.tdp_mmu_pages, "atomic64_read(&kvm->arch.tdp_mmu_pages)")
        WARN_ON(not list_empty(kvm.arch.tdp_mmu_roots), "!list_empty(&kvm->arch.tdp_mmu_roots)")
        yield from rcu_barrier()

    @inline
    def tdp_mmu_uninit_put_roots(self, kvm: Kvm) -> Steps:
        """The head of kvm_mmu_uninit_tdp_mmu(): put the TDP MMU's own reference to every
        root left (the vCPUs have put theirs) by invalidating and zapping them (v6.14
        passes root types and zaps holding mmu_lock for write, versions.py)."""
        yield from self.kvm_tdp_mmu_invalidate_all_roots(kvm)
        yield from self.kvm_tdp_mmu_zap_invalidated_roots(kvm)
