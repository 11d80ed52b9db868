"""Named scenarios: which threads run against the VM. Each takes ``--vcpus N``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from tdpmmu.explore.program import ThreadSpec
from tdpmmu.kvm.structs import Kvm, kvm_vcpu
from tdpmmu.kvm.x86 import Kernel

ThreadsFn = Callable[[Kernel, Kvm, tuple[kvm_vcpu, ...]], list[ThreadSpec]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    threads: ThreadsFn
    gfns: int = 1  # default --gfns: the scenarios that fault on one gfn need no more


def _vcpus(k: Kernel, vcpus: tuple[kvm_vcpu, ...], gfns: tuple[int | None, ...],
           smm: tuple[int, ...] = ()) -> list[ThreadSpec]:
    return [ThreadSpec(f"vcpu{i}", partial(k.vcpu_run, v, gfns, smm), group="vcpu", owner=v)
            for i, v in enumerate(vcpus)]


def vcpu_load(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # Each vCPU loads a root, resets its MMU context (unload: frees its root), reloads.
    return _vcpus(k, vcpus, (None,), smm=(0,))


def memslot_delete(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    return [*_vcpus(k, vcpus, (0, 0)), ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm))]


def memslot_delete_roots(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # memslot-delete with the SPTEs left abstract: the same two guest entries (a root
    # loaded, then reloaded after the fast zap), without faults, so no page tables: the
    # roots' protocol alone, small enough for 3 vCPUs.
    return [*_vcpus(k, vcpus, (None, None)), ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm))]


def smm(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # vCPUs run, enter SMM (address space 1: a second root), while a memslot is deleted.
    return [*_vcpus(k, vcpus, (0,), smm=(1,)), ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm))]


def double_memslot_delete(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # The second entry does not fault: it is there to reload after a deletion.
    return [*_vcpus(k, vcpus, (0, None)),
            ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm, times=2))]


def _all_gfns(k: Kernel) -> tuple[int, ...]:
    return tuple(range(k.tdp_mmu_max_gfn_exclusive()))


def fault_vs_zap(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # Each vCPU faults on every gfn in turn, so the zapper can yield between gfns.
    return [*_vcpus(k, vcpus, _all_gfns(k)), ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm))]


def _mm_unmap(k: Kernel, kvm: Kvm) -> ThreadSpec:
    return ThreadSpec("mm", partial(k.mm_unmap_range, kvm, 0, k.tdp_mmu_max_gfn_exclusive()))


def mmu_notifier(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    return [*_vcpus(k, vcpus, _all_gfns(k)), _mm_unmap(k, kvm)]


def stress(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    return [*fault_vs_zap(k, kvm, vcpus), _mm_unmap(k, kvm)]


def _mm_age(k: Kernel, kvm: Kvm) -> ThreadSpec:
    return ThreadSpec("aging", partial(k.mm_age_range, kvm, 0, k.tdp_mmu_max_gfn_exclusive()))


def aging(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # The second entry does not fault: it services FREE_OBSOLETE_ROOTS, so the vCPU's
    # root can be freed while the mm is still aging.
    return [*_vcpus(k, vcpus, (*_all_gfns(k), None)), _mm_age(k, kvm),
            ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm))]


def aging_unmap(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    return [*_vcpus(k, vcpus, _all_gfns(k)), _mm_age(k, kvm), _mm_unmap(k, kvm)]


# The GPA shared bit of a TDX guest as a gfn bit (bit 47 or 51 of the GPA in the kernel),
# here any bit above the model's gfns: gfn g is a private access, g | bit a shared one.
TDX_SHARED_GFN_BIT = 1 << 8
KVM_X86_TDX_VM = 5


def tdx_teardown(k: Kernel, kvm: Kvm, vcpus: tuple[kvm_vcpu, ...]) -> list[ThreadSpec]:
    # A VM with mirrored TDP (on kernels without mirror roots, two faults on one root).
    kvm.arch.vm_type = KVM_X86_TDX_VM
    kvm.arch.gfn_direct_bits = TDX_SHARED_GFN_BIT
    # Each vCPU loads its mirror root and its direct root, faults on gfn 0 privately (the
    # mirror root) and then shared (the direct root), while a memslot is deleted.
    return [*_vcpus(k, vcpus, (0, TDX_SHARED_GFN_BIT)),
            ThreadSpec("memslot", partial(k.kvm_delete_memslot, kvm))]


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("vcpu-load", "vCPUs load, unload and reload roots concurrently", vcpu_load),
        Scenario("memslot-delete",
                 "vCPUs run and fault while a memslot is deleted (fast zap); then VM teardown",
                 memslot_delete),
        Scenario("memslot-delete-roots",
                 "memslot-delete without faults (SPTEs abstract): vCPUs load and reload roots "
                 "while a memslot is deleted; then VM teardown", memslot_delete_roots),
        Scenario("smm", "vCPUs use address spaces 0 and 1 (SMM) while a memslot is deleted", smm),
        Scenario("double-memslot-delete", "two memslot deletions in sequence while vCPUs run",
                 double_memslot_delete),
        Scenario("fault-vs-zap", "vCPUs fault on every gfn while a memslot is deleted",
                 fault_vs_zap, gfns=2),
        Scenario("mmu-notifier",
                 "vCPUs fault on every gfn while the mm unmaps all of them and frees the pages",
                 mmu_notifier, gfns=2),
        Scenario("stress", "fault-vs-zap and mmu-notifier at once: faults, a memslot deletion "
                 "and an unmap", stress, gfns=2),
        Scenario("aging", "vCPUs fault while the mm ages the range (clear_young, test_young) and "
                 "a memslot is deleted", aging),
        Scenario("aging-unmap", "vCPUs fault while the mm ages the range and, on another CPU, "
                 "unmaps it and frees the pages", aging_unmap),

        Scenario("tdx-teardown", "a TDX-like VM (v6.14 mirror roots): vCPUs fault privately and "
                 "shared while a memslot is deleted; then VM teardown", tdx_teardown),
    )
}
