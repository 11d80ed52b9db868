"""Kernel versions: each is the base model (v6.9, ``x86.Kernel``) plus or minus the
patches that separate it from v6.9, one module per era.

Every class overrides only the functions the patches changed, and cites the commits.
- "v5.11": the TDP MMU's first era: a spinlock, a plain root list, an int root count (B01).
- "v5.13": the RCU root list, one reference per vCPU, the final put zapping inline (B02, B03).
- "v5.16.19": v5.16 with B04's fix backported: one reference per root, the final put
  zaps, the fast zap holds a reference to each root it invalidated (B04, B05).
- "v6.1": the async-worker era (v5.18..v6.5): roots are zapped by work items on a
  per-VM workqueue (B07, B08); "v6.5" is its last form, with the TDP MMU's own root
  reference of edbdb43fc96b (v6.4; B06, B10).
- "v6.8": v6.6..v6.8, before the series (B11); "v6.8+p6" and "v6.8+p7" are the series'
  intermediate states (patch 8 not applied): they never shipped, but the seed mail's
  question is about patch 7 alone.
- "v6.9": the base model; "v6.9+lockless-aging" (B15) and "v6.14" (TDX mirror roots, B13).
The kernels with ``CORPUS_ERA`` exist for the regression corpus (``kvm/corpus.py``).
"""

from __future__ import annotations

from tdpmmu.kvm.versions.v5_11 import V5_11
from tdpmmu.kvm.versions.v5_13 import V5_13
from tdpmmu.kvm.versions.v5_16 import V5_16
from tdpmmu.kvm.versions.v6_1 import V6_1
from tdpmmu.kvm.versions.v6_5 import V6_5
from tdpmmu.kvm.versions.v6_8 import V6_8, V6_8_P6, V6_8_P7
from tdpmmu.kvm.versions.v6_9_lockless_aging import V6_9_LocklessAging
from tdpmmu.kvm.versions.v6_14 import V6_14
from tdpmmu.kvm.x86 import Kernel

KERNELS: dict[str, type[Kernel]] = {
    k.NAME: k for k in (V5_11, V5_13, V5_16, V6_1, V6_5, V6_8, V6_8_P6, V6_8_P7, Kernel,
                        V6_9_LocklessAging, V6_14)
}
DEFAULT_KERNEL = Kernel.NAME

__all__ = ["DEFAULT_KERNEL", "KERNELS", "V5_11", "V5_13", "V5_16", "V6_1", "V6_5", "V6_8",
           "V6_8_P6", "V6_8_P7", "V6_14", "V6_9_LocklessAging"]
