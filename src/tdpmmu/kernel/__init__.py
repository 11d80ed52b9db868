"""Kernel primitives shaped like the kernel API, over the explorer's runtime (loom's
facade idea): model code calls ``read_lock(&kvm->mmu_lock)`` as
``yield from read_lock(kvm.mmu_lock)``, and each call is a scheduling point that knows
what it reads and writes."""
