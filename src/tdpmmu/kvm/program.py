"""A scenario on a kernel, as a program the explorer can run: builds the VM and its
threads, and states the properties checked in every state and at the end."""

from __future__ import annotations

from functools import partial

from tdpmmu.explore.program import ThreadSpec
from tdpmmu.explore.runtime import World, set_world
from tdpmmu.kernel.memory import kzalloc, objects_of
from tdpmmu.kernel.page import alloc_page, mm_struct
from tdpmmu.kernel.rcu import RCU, rcu_callback_thread, rcu_init
from tdpmmu.kernel.rculist import list_empty, list_for_each
from tdpmmu.kernel.workqueue import worker_thread, workqueue_struct
from tdpmmu.kvm.scenarios import Scenario
from tdpmmu.kvm.structs import Kvm, RoleWord, kvm_mmu_page, kvm_mmu_page_role, kvm_vcpu
from tdpmmu.kvm.x86 import Kernel


class KvmProgram:
    def __init__(self, kernel: type[Kernel], scenario: Scenario, vcpus: int,
                 gfns: int | None = None, movers: bool = True, memo: bool = True) -> None:
        self.kernel = kernel()
        self.movers = movers  # see explore.program.Program
        self.memo = memo
        self.kernel.max_gfn = gfns or scenario.gfns
        self.scenario = scenario
        self.nr_vcpus = vcpus
        self.kvm: Kvm | None = None

    def build(self) -> tuple[World, list[ThreadSpec]]:
        w = World()
        set_world(w)
        rcu_init()
        kvm = kzalloc(Kvm, name="kvm")
        self.kernel.kvm_mmu_init_tdp_mmu(kvm)
        # Guest memory is populated: the mm maps a page at every gfn.
        kvm.mm = kzalloc(mm_struct, name="mm", pte=tuple(
            alloc_page(f"page{gfn}") for gfn in range(self.kernel.max_gfn)))
        vcpus = tuple(
            kzalloc(kvm_vcpu, name=f"vcpu{i}", kvm=kvm) for i in range(self.nr_vcpus)
        )
        kvm.vcpus = vcpus
        kvm.created_vcpus = len(vcpus)
        threads = self.scenario.threads(self.kernel, kvm, vcpus)
        kvm.users_count = len(threads)  # each of them puts its reference when done
        self.kvm = kvm
        self.members = [(tid, t.owner.oid) for tid, t in enumerate(threads) if t.owner is not None]
        threads.append(ThreadSpec("destroy", partial(self.kernel.kvm_destroy_vm, kvm)))
        threads.append(ThreadSpec("rcu", rcu_callback_thread, daemon=True))
        # The workers of the workqueues the kernel allocated (v6.1's tdp_mmu_zap_wq).
        for wq in objects_of(workqueue_struct):
            threads += [ThreadSpec(f"kworker/u:{i}", partial(worker_thread, wq), daemon=True)
                        for i in range(wq.nr_workers)]
        return w, threads

    def symmetry(self, world: World) -> list[list[tuple[int, int]]] | None:
        """vCPU threads run the same code on their own vCPU, so they are interchangeable,
        until VM teardown starts (it unloads vCPUs in index order)."""
        assert self.kvm is not None
        if self.kvm.users_count == 0 or len(self.members) < 2:
            return None
        return [self.members]

    def check_state(self, world: World) -> None:
        """Invariants of every state (kernel-protocol.md §6)."""
        assert self.kvm is not None
        valid: dict[RoleWord, kvm_mmu_page] = {}  # role word -> the first valid root with it
        for pos in list_for_each(self.kvm.arch.tdp_mmu_roots):
            root = pos.container()
            assert isinstance(root, kvm_mmu_page)
            if root.tdp_mmu_scheduled_root_to_zap and not root.role.invalid:
                world.report("invariant", f"{root!r} is scheduled to zap but still valid")
            if not root.role.invalid:
                word = root.role.word
                if word in valid:
                    older, newer = sorted((valid[word], root), key=lambda r: r.oid)
                    world.report("duplicate-root", f"{older!r} and {newer!r} are both valid roots "
                                 f"with one role ({kvm_mmu_page_role.describe(word)})")
                valid.setdefault(word, root)

    def check_final(self, world: World) -> None:
        """After VM destruction: nothing on the list, every root freed, no callback left."""
        assert self.kvm is not None
        if not list_empty(self.kvm.arch.tdp_mmu_roots):
            world.report("leak", "tdp_mmu_roots not empty after VM destruction")
        for obj in objects_of(kvm_mmu_page, live_only=True):
            world.report("leak", f"{obj!r} never freed (refcount {self.kernel.tdp_mmu_root_refs(obj)})")
        if RCU.pending:
            world.report("leak", f"{len(RCU.pending)} RCU callbacks never ran")
