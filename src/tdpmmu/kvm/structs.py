"""The KVM structs the root protocol touches, field names as in the kernel.

Only fields that some modeled step reads or writes exist. ``hpa`` fields hold the root's
``kvm_mmu_page`` handle (the model's ``__pa(root->spt)``) or ``INVALID_PAGE``.
Fields marked *ghost* are not in the kernel: they record history a property needs.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from tdpmmu.kernel.memory import Embedded, Field, Struct
from tdpmmu.kernel.rculist import list_head
from tdpmmu.kernel.refcount import refcount_t
from tdpmmu.kernel.rwlock import rwlock_t
from tdpmmu.kernel.spinlock import mutex, spinlock_t
from tdpmmu.kernel.workqueue import work_struct
from tdpmmu.kvm.spte import SHADOW_NONPRESENT_VALUE, SPTE_ENT_PER_PAGE, TDP_ROOT_LEVEL

INVALID_PAGE = None
PG_LEVEL_4K, PG_LEVEL_2M, PG_LEVEL_1G, PG_LEVEL_512G = 1, 2, 3, 4
KVM_MMU_NUM_PREV_ROOTS = 3



class Request(IntEnum):
    """vCPU requests (include/linux/kvm_host.h, arch/x86/include/asm/kvm_host.h)."""

    KVM_REQ_VM_DEAD = 1
    # v5.11 (until v5.18): (1 | WAIT | NO_WAKEUP), number 1 before KVM_REQ_VM_DEAD took
    # it; the model's numbers only tell requests apart.
    KVM_REQ_MMU_RELOAD = 2
    KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = 31  # KVM_ARCH_REQ_FLAGS(31, WAIT | NO_WAKEUP)

    def __str__(self) -> str:
        return self.name


KVM_REQ_VM_DEAD = Request.KVM_REQ_VM_DEAD
KVM_REQ_MMU_RELOAD = Request.KVM_REQ_MMU_RELOAD
KVM_REQ_MMU_FREE_OBSOLETE_ROOTS = Request.KVM_REQ_MMU_FREE_OBSOLETE_ROOTS

# kvm_mmu_free_roots() masks
KVM_MMU_ROOT_CURRENT = 1 << 0


def KVM_MMU_ROOT_PREVIOUS(i: int) -> int:
    return 1 << (1 + i)


KVM_MMU_ROOTS_ALL = (1 << (1 + KVM_MMU_NUM_PREV_ROOTS)) - 1


def VALID_PAGE(hpa: object) -> bool:
    return hpa is not INVALID_PAGE


RoleWord = tuple[int, bool, int, bool, bool, bool]


class kvm_mmu_page_role(Struct):
    """``union kvm_mmu_page_role``: compared as a whole through ``word``."""

    level = Field(TDP_ROOT_LEVEL)  # the model's roots are two levels up (spte.py)
    direct = Field(True)
    smm = Field(0)  # address space: as_id 1 is SMM
    guest_mode = Field(False)
    invalid = Field(False)
    is_mirror = Field(False)  # v6.14 (6961ab0bae52): a TDX mirror root and its tables

    @property
    def word(self) -> RoleWord:
        return (self.level, self.direct, self.smm, self.guest_mode, self.invalid, self.is_mirror)

    @word.setter
    def word(self, value: RoleWord) -> None:
        self.level, self.direct, self.smm, self.guest_mode, self.invalid, self.is_mirror = value

    @staticmethod
    def describe(word: RoleWord) -> str:
        """A role word's fields by name, for messages (reads no memory)."""
        level, direct, smm, guest_mode, invalid, is_mirror = word
        return (f"level {level}, direct {int(direct)}, smm {smm}, guest_mode {int(guest_mode)}, "
                f"invalid {int(invalid)}, is_mirror {int(is_mirror)}")


class kvm_mmu_page(Struct):
    """A TDP MMU page table: a root (on ``tdp_mmu_roots``, refcounted) or a child
    table linked from its parent's SPTE. ``spt`` is the table itself, one SPTE value
    per entry (spte.py)."""

    C_NAME = "sp"
    role = Embedded(kvm_mmu_page_role)
    gfn = Field(0)  # first gfn this table maps
    spt = Field((SHADOW_NONPRESENT_VALUE,) * SPTE_ENT_PER_PAGE)
    tdp_mmu_page = Field(True)
    tdp_mmu_root_count = Embedded(refcount_t)
    root_count = Field(0)  # ..v5.12: an int changed under mmu_lock (shadow pages too)
    tdp_mmu_scheduled_root_to_zap = Field(False)  # v6.6+ (0df9dab891ff)
    # v5.18..v6.5: the root's work item on tdp_mmu_zap_wq, and its kvm (efd995dae5eb)
    tdp_mmu_async_work = Embedded(work_struct)
    tdp_mmu_async_data = Field(None)
    link = Embedded(list_head)
    # ghost: on tdp_mmu_roots when kvm_tdp_mmu_invalidate_all_roots() walked it
    fast_zapped = Field(False)
    # ghost: a root's page frame (the number behind __pa(root->spt), its nCR3/EPTP), the
    # TLB's tag; a freed root's frame goes to the next root. Set only where TLBs are
    # modeled (kernel/tlb.py), else None.
    frame = Field(None)


class kvm_page_fault(NamedTuple):
    """``struct kvm_page_fault`` (mmu_internal.h): the fields the TDP fault path uses."""

    gfn: int
    goal_level: int
    pfn: object = None  # the struct page, once kvm_faultin_pfn() resolved it
    mmu_seq: int = 0
    addr: int = 0  # the faulting gfn as the guest gave it (fault->addr), shared bit included


class kvm_mmu_root_info(Struct):
    pgd = Field(0)
    hpa = Field(INVALID_PAGE)


class kvm_mmu(Struct):
    root = Embedded(kvm_mmu_root_info)
    mirror_root_hpa = Field(INVALID_PAGE)  # v6.14 (fabaa7650148): TDX's mirror root
    root_role = Embedded(kvm_mmu_page_role)
    prev_roots = Field((INVALID_PAGE,) * KVM_MMU_NUM_PREV_ROOTS)  # their hpa only


class kvm_vcpu_arch(Struct):
    root_mmu = Embedded(kvm_mmu)
    tlb = Field(None)  # ghost: the vCPU's TLB (kernel/tlb.py); None: TLBs not modeled

    @property
    def mmu(self) -> kvm_mmu:
        """``vcpu->arch.mmu``: always root_mmu here (nested TDP is not modeled)."""
        return self.root_mmu


class kvm_vcpu(Struct):
    C_NAME = "vcpu"
    kvm = Field(None)
    requests = Field(frozenset())
    mode = Field(0)  # OUTSIDE_GUEST_MODE / IN_GUEST_MODE
    in_guest = Field(False)  # ghost: past the last request check, running the guest
    arch = Embedded(kvm_vcpu_arch)


class kvm_arch(Struct):
    tdp_mmu_roots = Embedded(list_head)
    tdp_mmu_pages_lock = Embedded(spinlock_t)
    tdp_mmu_pages = Field(0)  # atomic64_t: linked non-root page tables
    tdp_mmu_zap_wq = Field(None)  # v5.18..v6.5: the workqueue of root zaps
    mmu_valid_gen = Field(0)
    vm_type = Field(0)  # KVM_X86_DEFAULT_VM; KVM_X86_TDX_VM has mirrored TDP (v6.14)
    gfn_direct_bits = Field(0)  # TDX: the GPA shared bit, as a gfn bit (3fc3f7185112)
    # SVM under Hyper-V with EnlightenedNptTlb: svm_hv_init_vmcb() sets the bit in every
    # vCPU's VMCB when the L0 offers HV_X64_NESTED_ENLIGHTENED_TLB (it always does on
    # AMD); the model keeps it per VM. Only read where TLBs are modeled.
    hv_enlightened_npt_tlb = Field(False)


class kvm(Struct):
    C_NAME = "kvm"
    mmu_lock = Embedded(rwlock_t)
    slots_lock = Embedded(mutex)
    arch = Embedded(kvm_arch)
    users_count = Field(1)
    created_vcpus = Field(0)
    vcpus = Field(())
    vm_bugged = Field(False)
    vm_dead = Field(False)
    mm = Field(None)  # the VMM's mm_struct (guest memory: gfn == hva)
    mmu_invalidate_seq = Field(0)
    mmu_invalidate_in_progress = Field(0)
    mmu_invalidate_range_start = Field(None)  # INVALID_GPA
    mmu_invalidate_range_end = Field(None)
    # ghost: roots were invalidated and KVM_REQ_MMU_FREE_OBSOLETE_ROOTS is not yet posted
    obsolete_roots_unannounced = Field(False)


Kvm = kvm  # for annotations, where a parameter is itself called ``kvm``
