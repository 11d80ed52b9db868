"""tdpmmu: an executable model of the Linux KVM x86 TDP MMU root protocol, and a checker
that explores every interleaving of it.

Layers, data flowing one way: ``kvm`` (the model, one function per kernel function) is
written against ``kernel`` (primitives shaped like the kernel API), which runs on the
``explore`` runtime; ``explore`` (the engine) knows nothing of KVM. ``api.check`` ties a
scenario, a kernel version and a mutant to a search; ``report`` and ``cli`` sit on top.
"""

__version__ = "0.1.0"
