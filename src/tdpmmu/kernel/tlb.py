"""The TLB entries a TDP root gives rise to, as far as KVM's flush rules see them.

Only guest-physical -> host-physical translations (NPT/EPT-derived) exist here: one
entry per (root frame, gfn), made when a vCPU runs the guest on a root whose tables map
the gfn, and remembering the root (the ``kvm_mmu_page``) whose tables it was read from.
Entries are tagged by the root's page frame (``sp.frame``: the nCR3/EPTP the hardware,
or an L0 hypervisor's shadow of the nested page tables, is keyed by), not by the root
object, so a frame reused by a later root finds the old root's entries until a flush
drops them. No operation is a scheduling point: a flush or a fill is one step of the
vCPU or the hypervisor, with nothing in between that the model could interleave.

Flushes (docs/kernel-notes.md §11):
- ``tlb_flush_asid``: the local ASID flush (``svm_flush_tlb_asid()``, SVM's
  ``TLB_CONTROL_FLUSH_ASID``): every entry of this vCPU. Under Hyper-V's
  ``EnlightenedNptTlb`` it flushes only translations derived from the first level
  (guest virtual) tables, which the model has none of: the caller skips it then.
- ``hyperv_flush_guest_mapping``: the hypercall
  ``HvCallFlushGuestPhysicalAddressSpace(nCR3)`` (arch/x86/hyperv/nested.c): the L0
  drops what it derived from the tables at that frame, for every vCPU.
"""

from __future__ import annotations

from collections.abc import Iterable

from tdpmmu.explore.runtime import world
from tdpmmu.kernel.memory import Field, Struct

# An entry: (frame, gfn, root): the root's frame, the gfn, the root it was read from.
TlbEntry = tuple[int, int, Struct]


class tlb(Struct):
    """One vCPU's TLB (ghost: not a kernel struct)."""

    C_NAME = "tlb"
    entries = Field(frozenset())


def tlb_lookup(t: tlb, frame: int, gfn: int) -> Struct | None:
    """The root the cached translation of ``gfn`` under ``frame`` was read from, if any."""
    for f, g, root in t.entries:
        if f == frame and g == gfn:
            return root  # type: ignore[no-any-return]
    return None


def tlb_fill(t: tlb, frame: int, gfn: int, root: Struct) -> None:
    """The walk of ``root``'s tables for ``gfn`` is cached (no entry there yet)."""
    t.entries = t.entries | {(frame, gfn, root)}


def tlb_flush_asid(t: tlb) -> None:
    if t.entries:
        world().note("{!r}: ASID flush drops {} entries", t, len(t.entries))
        t.entries = frozenset()


def hyperv_flush_guest_mapping(tlbs: Iterable[tlb], frame: int) -> None:
    """``hyperv_flush_guest_mapping(root_tdp)``: every vCPU's entries of ``frame``."""
    world().note("hyperv_flush_guest_mapping(frame {})", frame)
    for t in tlbs:
        kept = frozenset(e for e in t.entries if e[0] != frame)
        if kept != t.entries:
            t.entries = kept
