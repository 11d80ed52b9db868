"""vCPU requests: kvm_make_request / kvm_check_request, and kvm_make_all_cpus_request
with KVM_REQUEST_WAIT waiting until no vCPU is in guest mode."""

from __future__ import annotations

from conftest import Box, Prog, Shared, expect_violation, log, outcomes
from tdpmmu.kernel.atomic import WRITE_ONCE
from tdpmmu.kernel.memory import Field, Struct, kzalloc
from tdpmmu.kernel.requests import (
    IN_GUEST_MODE,
    OUTSIDE_GUEST_MODE,
    kvm_check_request,
    kvm_make_all_cpus_request,
    kvm_make_request,
    kvm_request_pending,
)

REQ_A, REQ_B = 3, 31


class Vcpu(Struct):
    C_NAME = "vcpu"
    requests = Field(frozenset())
    mode = Field(OUTSIDE_GUEST_MODE)
    entries = Field(0)


def setup(nr: int = 2):
    def build() -> Shared:
        return Shared(b=kzalloc(Box, "b"), vcpus=tuple(kzalloc(Vcpu, f"vcpu{i}") for i in range(nr)))
    return build


def test_check_request_clears_the_bit() -> None:
    def t(s: Shared):
        v = s.vcpus[0]
        log(s.b, (yield from kvm_request_pending(v)))
        yield from kvm_make_request(REQ_A, v)
        yield from kvm_make_request(REQ_B, v)
        log(s.b, (yield from kvm_request_pending(v)))
        log(s.b, (yield from kvm_check_request(REQ_A, v)))
        log(s.b, (yield from kvm_check_request(REQ_A, v)))  # cleared by the first check
        log(s.b, v.requests)
        log(s.b, (yield from kvm_check_request(REQ_B, v)))
        log(s.b, (yield from kvm_request_pending(v)))
    prog = Prog(setup(1), [t], observe=lambda s: s.b.log)
    assert outcomes(prog) == {(False, True, True, False, frozenset({REQ_B}), True, False)}


def test_all_cpus_request_sets_every_vcpu() -> None:
    def t(s: Shared):
        yield from kvm_make_all_cpus_request(None, REQ_A, s.vcpus, wait=False)
    prog = Prog(setup(3), [t], observe=lambda s: tuple(v.requests for v in s.vcpus))
    assert outcomes(prog) == {(frozenset({REQ_A}),) * 3}


def vcpu_run(s: Shared, v: Vcpu):
    """One guest entry, as vcpu_enter_guest(): announce IN_GUEST_MODE, then recheck
    requests; handle the request once out of the guest."""
    yield from WRITE_ONCE(v, "mode", IN_GUEST_MODE)
    if (yield from kvm_request_pending(v)):
        v.mode = OUTSIDE_GUEST_MODE  # entry cancelled
    else:
        v.entries += 1  # in the guest until the exit below
        yield from WRITE_ONCE(v, "mode", OUTSIDE_GUEST_MODE)
    yield from kvm_check_request(REQ_A, v)


def vcpu0(s: Shared):
    yield from vcpu_run(s, s.vcpus[0])


def vcpu1(s: Shared):
    yield from vcpu_run(s, s.vcpus[1])


def requester(s: Shared, wait: bool):
    yield from kvm_make_all_cpus_request(None, REQ_A, s.vcpus, wait=wait)
    log(s.b, tuple(v.mode for v in s.vcpus))  # right after the request returned


def requester_wait(s: Shared):
    yield from requester(s, True)


def requester_nowait(s: Shared):
    yield from requester(s, False)


def nobody_in_guest(s: Shared) -> str | None:
    modes = s.b.log[0]
    return None if IN_GUEST_MODE not in modes else f"request returned with a vCPU in guest mode: {modes}"


def test_request_with_wait_waits_for_guest_exit() -> None:
    prog = Prog(setup(), [vcpu0, vcpu1, requester_wait], final=nobody_in_guest,
                observe=lambda s: tuple(v.entries for v in s.vcpus))
    # Non-vacuous: a vCPU may have been in the guest when the request was made.
    assert outcomes(prog) == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_request_without_wait_can_return_with_a_vcpu_in_guest() -> None:
    expect_violation(Prog(setup(), [vcpu0, vcpu1, requester_nowait], final=nobody_in_guest),
                     "final-check", "request returned with a vCPU in guest mode")


def test_vcpu_stuck_in_guest_blocks_the_requester() -> None:
    def stuck(s: Shared):
        yield from WRITE_ONCE(s.vcpus[0], "mode", IN_GUEST_MODE)
    expect_violation(Prog(setup(1), [stuck, requester_wait]), "deadlock", "wait for IPI ack")
