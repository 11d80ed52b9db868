"""v5.16 as patched by the 5.16.19 stable release (B04, B05)."""

from __future__ import annotations

from tdpmmu.kvm.versions.v5_13 import V5_13


class V5_16(V5_13):
    """Linux 5.16.19: v5.16 (df0cc57e057f) with the stable backports of B04's fix, d62007edf01f
    "KVM: x86/mmu: Zap _all_ roots when unmapping gfn range in TDP MMU", and its preps
    04dc4e6ce274 "Move "invalid" check out of kvm_tdp_mmu_get_root()" and 83b83a02073e
    "Use common TDP MMU zap helper for MMU notifier unmap hook" (merged for v5.18-rc1, in
    5.16.19 as "[PATCH 5.16 0860/1017]"): the v5.16 tag itself still has B04's bug, which
    the mutant notifier-skips-invalid-roots puts back. B05's fix, a955cad84cda "Retry page
    fault if root is invalidated by memslot update" (with 18c841e1f411), is in v5.16, as
    is B03's, 7533377215b6.

    Between v5.13 and v5.16.19 the root protocol did not change: roots start with one
    reference, the vCPU's; the final put of any root unlinks it and zaps it without
    yielding; the fast zap references every root it invalidates and tears the invalid
    ones down with next_invalidated_root(), one zap_gfn_range() pass each, under the read
    lock; no scheduled flag, no worker, nothing to put at uninit. ``V5_13`` models that
    with the very fixes listed above applied, so this class adds nothing but its name:
    B04's and B05's rows run on the kernel that shipped their fixes.
    """

    NAME = "v5.16.19"
    CORPUS_ERA = True
    COMMIT = ("v5.16 + 83b83a02073e, 04dc4e6ce274, d62007edf01f (stable 5.16.19); "
              "B05's a955cad84cda is in v5.16")
