"""Kernel versions: each is the base model (v6.9, ``x86.Kernel``) plus or minus the
patches that separate it from v6.9, one module per era.

Every class overrides only the functions the patches changed, and cites the commits.
"v6.8+p6" and "v6.8+p7" are the series' intermediate states (patch 8 not applied):
they never shipped, but the seed mail's question is about patch 7 alone. "v6.1" is the
async-worker era (v5.18..v6.5): roots are zapped by work items on a per-VM workqueue;
"v6.5" is its last form, with the TDP MMU's own root reference of edbdb43fc96b (v6.4).
"""

from __future__ import annotations

from tdpmmu.kvm.versions.v6_1 import V6_1
from tdpmmu.kvm.versions.v6_5 import V6_5
from tdpmmu.kvm.versions.v6_8 import V6_8, V6_8_P6, V6_8_P7
from tdpmmu.kvm.versions.v6_9_lockless_aging import V6_9_LocklessAging
from tdpmmu.kvm.versions.v6_14 import V6_14
from tdpmmu.kvm.x86 import Kernel

KERNELS: dict[str, type[Kernel]] = {
    k.NAME: k for k in (V6_1, V6_5, V6_8, V6_8_P6, V6_8_P7, Kernel, V6_9_LocklessAging, V6_14)
}
DEFAULT_KERNEL = Kernel.NAME

__all__ = ["DEFAULT_KERNEL", "KERNELS", "V6_1", "V6_5", "V6_8", "V6_8_P6", "V6_8_P7", "V6_14",
           "V6_9_LocklessAging"]
