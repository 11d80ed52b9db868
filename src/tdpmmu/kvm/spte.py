"""SPTE values and the paging geometry (arch/x86/kvm/mmu/spte.h, mmu.h).

The model's paging structure is two levels deep under each root: the root (level
``TDP_ROOT_LEVEL``) holds non-leaf SPTEs pointing to level-1 page tables, whose entries
are 4KiB leaf SPTEs. The real root is 4 or 5 levels up; the levels in between behave
like the root's (a present non-leaf entry, zapped by the upper passes), so two levels
show every kind of SPTE transition the protocol has. ``SPTE_ENT_PER_PAGE`` is 2 instead
of 512: what matters is that a walk steps sideways, not how far.

An SPTE is a hashable value: ``SHADOW_NONPRESENT_VALUE``, ``REMOVED_SPTE`` (frozen by
``handle_removed_pt``) or a present :class:`Spte` pointing to a page (leaf) or a child
page table (non-leaf). Of the SPTE's bits only the Accessed bit is modeled (A/D bits
enabled, the EPT default): a fault installs a young leaf, aging clears the bit. The CPU
setting it again on a guest access is not modeled (aging may miss it: harmless, as the
kernel clears it without a TLB flush anyway).
"""

from __future__ import annotations

from typing import NamedTuple

from tdpmmu.kernel.memory import Struct

SPTE_ENT_PER_PAGE = 2
SPTE_LEVEL_BITS = 1  # log2(SPTE_ENT_PER_PAGE)
TDP_ROOT_LEVEL = 2

SHADOW_NONPRESENT_VALUE = 0
REMOVED_SPTE = "REMOVED_SPTE"  # FROZEN_SPTE: has no Accessed bit (so clearing it is a no-op)
shadow_accessed_mask = "shadow_accessed_mask"  # the only bit a mask may name here


class Spte(NamedTuple):
    """A shadow-present SPTE: ``pfn`` is the page (leaf) or the child table (non-leaf)."""

    pfn: Struct
    leaf: bool
    accessed: bool = True  # shadow_accessed_mask

    def __repr__(self) -> str:
        return f"{'leaf' if self.leaf else 'table'}({self.pfn!r}{'' if self.accessed else ', !A'})"


def is_shadow_present_pte(spte: object) -> bool:
    return type(spte) is Spte


def is_removed_spte(spte: object) -> bool:
    return spte == REMOVED_SPTE


def is_last_spte(spte: object, level: int) -> bool:
    return type(spte) is Spte and spte.leaf


def is_accessed_spte(spte: object) -> bool:
    return type(spte) is Spte and spte.accessed


def spte_clear_bits(spte: object, mask: str) -> object:
    """``spte & ~mask``: only a present SPTE carries the Accessed bit."""
    assert mask == shadow_accessed_mask
    return spte._replace(accessed=False) if type(spte) is Spte else spte


def spte_to_pfn(spte: Spte) -> Struct:
    return spte.pfn


def make_spte(pfn: Struct) -> Spte:
    return Spte(pfn, True)


def make_nonleaf_spte(child: Struct) -> Spte:
    return Spte(child, False)


def spte_to_child_pt(spte: object, level: int) -> Struct | None:
    """The child table of a present non-leaf SPTE, else None."""
    if not is_shadow_present_pte(spte) or is_last_spte(spte, level):
        return None
    assert isinstance(spte, Spte)
    return spte.pfn


def KVM_PAGES_PER_HPAGE(level: int) -> int:
    """gfns covered by one SPTE at ``level``."""
    return 1 << ((level - 1) * SPTE_LEVEL_BITS)


def SPTE_INDEX(gfn: int, level: int) -> int:
    return (gfn >> ((level - 1) * SPTE_LEVEL_BITS)) & (SPTE_ENT_PER_PAGE - 1)


def round_gfn_for_level(gfn: int, level: int) -> int:
    return gfn & -KVM_PAGES_PER_HPAGE(level)
