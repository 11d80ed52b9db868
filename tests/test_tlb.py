"""The TLB ghost (B07 (b)): entries tagged by the root's frame, the local ASID flush and
Hyper-V's per-frame hypercall; and that a frame reused without a flush finds the old
root's translation (what the stale-tlb property of x86.py catches)."""

from __future__ import annotations

from conftest import Box, Prog, Shared, log, outcomes
from tdpmmu.explore.runtime import Op
from tdpmmu.kernel.memory import kzalloc
from tdpmmu.kernel.tlb import hyperv_flush_guest_mapping, tlb, tlb_fill, tlb_flush_asid, tlb_lookup

FRAME = 7


def setup() -> Shared:
    return Shared(a=kzalloc(tlb, "tlb0"), b=kzalloc(tlb, "tlb1"),
                  old=kzalloc(Box, "old_root"), new=kzalloc(Box, "new_root"))


def observe(s: Shared):
    return s.old.log


def run(body) -> set[object]:
    """The lookups one thread logs: the TLB ops are no scheduling points, so one step."""
    def t(s: Shared):
        yield Op("start", "")
        body(s)
    return outcomes(Prog(setup, [t], observe=observe))


def names(s: Shared, r: object) -> str:
    return "old" if r == s.old else "new" if r == s.new else "none"


def test_a_reused_frame_finds_the_old_roots_translation() -> None:
    """The hazard: nothing flushed, a new root at the old root's frame hits the old entry."""
    def body(s: Shared) -> None:
        tlb_fill(s.a, FRAME, 0, s.old)
        log(s.old, names(s, tlb_lookup(s.a, FRAME, 0)))  # the frame, not the root, is the tag
        log(s.old, names(s, tlb_lookup(s.a, FRAME, 1)))  # another gfn: a miss
        log(s.old, names(s, tlb_lookup(s.a, FRAME + 1, 0)))  # another frame: a miss
    assert run(body) == {("old", "none", "none")}


def test_asid_flush_drops_every_entry_of_its_vcpu_only() -> None:
    def body(s: Shared) -> None:
        tlb_fill(s.a, FRAME, 0, s.old)
        tlb_fill(s.a, FRAME + 1, 0, s.new)
        tlb_fill(s.b, FRAME, 0, s.old)
        tlb_flush_asid(s.a)
        log(s.old, (names(s, tlb_lookup(s.a, FRAME, 0)), names(s, tlb_lookup(s.a, FRAME + 1, 0)),
                    names(s, tlb_lookup(s.b, FRAME, 0))))
    assert run(body) == {(("none", "none", "old"),)}


def test_hyperv_flush_drops_one_frame_on_every_vcpu() -> None:
    def body(s: Shared) -> None:
        tlb_fill(s.a, FRAME, 0, s.old)
        tlb_fill(s.b, FRAME, 1, s.old)
        tlb_fill(s.b, FRAME + 1, 0, s.new)
        hyperv_flush_guest_mapping([s.a, s.b], FRAME)
        log(s.old, (names(s, tlb_lookup(s.a, FRAME, 0)), names(s, tlb_lookup(s.b, FRAME, 1)),
                    names(s, tlb_lookup(s.b, FRAME + 1, 0))))
    assert run(body) == {(("none", "none", "new"),)}
