"""WARN_ON, WARN_ON_ONCE, BUG, BUG_ON and KVM_BUG_ON: report, and let the thread go on like the kernel.

None of these is a scheduling point. Each records a violation (the first one wins); the
engine ends the execution after the current step, so the trace stops at the splat.
"""

from __future__ import annotations

from typing import Any

from tdpmmu.explore.runtime import world


def WARN_ON(cond: object, text: str = "") -> bool:
    if cond:
        world().report("WARNING", text or "WARN_ON")
    return bool(cond)


def BUG(text: str = "") -> None:
    """``BUG()``: the kernel oopses here; the model reports and ends the execution."""
    world().report("BUG", text or "BUG()")


def BUG_ON(cond: object, text: str = "") -> bool:
    if cond:
        BUG(f"BUG_ON({text})" if text else "BUG_ON")
    return bool(cond)


WARN_ON_ONCE = WARN_ON  # the engine stops at the first WARN, so "once" is automatic


def kvm_vm_bugged(kvm: Any) -> None:
    """Mark the VM bugged and dead (every vCPU gets KVM_REQ_VM_DEAD and exits -EIO)."""
    kvm.vm_bugged = True
    kvm.vm_dead = True


def KVM_BUG_ON(cond: object, kvm: Any, text: str = "") -> bool:
    if cond and not kvm.vm_bugged:
        world().report("KVM_BUG_ON", f"KVM_BUG_ON({text})" if text else "KVM_BUG_ON")
        kvm_vm_bugged(kvm)
    return bool(cond)
