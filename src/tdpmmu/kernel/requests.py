"""vCPU requests: kvm_make_request, kvm_make_all_cpus_request, kvm_check_request.

A vCPU is any struct with ``requests`` (a frozenset of request numbers) and ``mode``.
``kvm_make_all_cpus_request`` with KVM_REQUEST_WAIT waits until no vCPU is still in guest
mode: the kick's IPI makes each one exit, and a vCPU that has not entered yet will see
the request in its pre-entry check (``kvm_request_pending`` after setting IN_GUEST_MODE).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from enum import IntEnum
from typing import Any

from tdpmmu.explore.runtime import Op, primitive, world


class VcpuMode(IntEnum):
    OUTSIDE_GUEST_MODE = 0
    IN_GUEST_MODE = 1

    def __str__(self) -> str:
        return self.name


OUTSIDE_GUEST_MODE = VcpuMode.OUTSIDE_GUEST_MODE
IN_GUEST_MODE = VcpuMode.IN_GUEST_MODE


@primitive
def kvm_make_request(req: int, vcpu: Any) -> Generator[Op, int, None]:
    yield Op("kvm_make_request", req, vcpu)
    vcpu.requests = vcpu.requests | {req}


@primitive
def kvm_make_all_cpus_request(
    kvm: Any, req: int, vcpus: Sequence[Any], wait: bool = True
) -> Generator[Op, int, None]:
    yield Op("kvm_make_all_cpus_request", req)
    for vcpu in vcpus:
        vcpu.requests = vcpu.requests | {req}
    if wait:
        yield Op(
            "kvm_make_all_cpus_request(wait for IPI ack)",
            guard=lambda: all(v.mode != IN_GUEST_MODE for v in vcpus),
        )


@primitive
def kvm_check_request(req: int, vcpu: Any) -> Generator[Op, int, bool]:
    yield Op("kvm_check_request", req, vcpu)
    if req in vcpu.requests:
        vcpu.requests = vcpu.requests - {req}
        world().note("pending: handled")
        return True
    return False


@primitive
def kvm_request_pending(vcpu: Any) -> Generator[Op, int, bool]:
    yield Op("kvm_request_pending", vcpu)
    return bool(vcpu.requests)
