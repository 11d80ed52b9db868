"""The model: every kernel version passes every scenario, every mutant is caught.

These are the checker's own acceptance tests: a pass here is an exhaustive exploration
of the scenario (symmetry-reduced), and a mutant counts as caught only with the
violation kind it is documented to produce.
"""

from __future__ import annotations

import pytest

from tdpmmu.api import BadInput, Config, check
from tdpmmu.explore.execution import Execution
from tdpmmu.explore.result import Limits
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.kvm.mutants import MUTANTS
from tdpmmu.kvm.registry import MUTANTS as MUTANTS_ALL
from tdpmmu.kvm.scenarios import SCENARIOS
from tdpmmu.kvm.versions import KERNELS

FAST = Limits(shrink_time=0)


# stress at its default two gfns takes ~1 min per kernel at one vCPU: it runs with one
# gfn in tests/test_page_tables.py, with two in bench/verify_matrix.py.
# The corpus's era kernels leave out the aging scenarios (~25 s each): their aging is
# v6.9's code in the model, and their rows are about roots.
ONE_VCPU_MATRIX = [(k, s) for k in KERNELS for s in SCENARIOS
                   if s != "stress" and not (KERNELS[k].CORPUS_ERA and s.startswith("aging"))]


@pytest.mark.parametrize(("kernel", "scenario"), ONE_VCPU_MATRIX)
def test_kernel_passes_scenario_at_one_vcpu(kernel: str, scenario: str) -> None:
    r = check(Config(scenario, kernel, None, 1), FAST)
    assert r.verdict == "pass", r.violation
    assert r.stats.states > 10


# At two vCPUs every kernel runs vcpu-load (root allocation and freeing, what the
# series changed) and mmu-notifier (faults against an unmap, page tables and struct
# pages). With page tables under the roots, memslot-delete, smm, double-memslot-delete,
# fault-vs-zap and stress at two vCPUs take 4 to 10+ minutes each on a 2-core machine:
# they run at one vCPU above and at two in bench/verify_matrix.py, to keep the suite
# within its 10-minute budget.
# (v6.9+lockless-aging runs v6.9's code there: only aging differs, tested at one vCPU.)
# The corpus's era kernels run vcpu-load only: their mmu-notifier at two vCPUs takes 55 s
# (v5.11), 40 s (v5.16.19), 80 s (v5.13), every fault serialized on the write lock (bench).
TWO_VCPU_MATRIX = [(k, s) for k in KERNELS if k != "v6.9+lockless-aging"
                   for s in ("vcpu-load", "mmu-notifier")
                   if s == "vcpu-load" or not KERNELS[k].CORPUS_ERA]


@pytest.mark.slow
@pytest.mark.parametrize(("kernel", "scenario"), TWO_VCPU_MATRIX)
def test_kernel_passes_scenario_at_two_vcpus(kernel: str, scenario: str) -> None:
    r = check(Config(scenario, kernel, None, 2), FAST)
    assert r.verdict == "pass", r.violation


# Every mutant on every kernel where it must be caught (put-before-zap: harmless on v6.9,
# a bug on v6.1).
CAUGHT = [(name, kernel) for name, m in MUTANTS.items() for kernel in m.caught_kernels]


@pytest.mark.parametrize(("name", "kernel"), CAUGHT, ids=[f"{n}-{k}" for n, k in CAUGHT])
def test_mutant_is_caught_with_its_violation(name: str, kernel: str) -> None:
    m = MUTANTS[name]
    config = Config(m.scenario, kernel, name, m.vcpus)
    r = check(config, Limits(shrink_time=5))
    assert r.verdict == "violation"
    assert r.violation is not None and r.violation.kind in m.expect, r.violation
    # The counterexample is real: replaying its schedule reaches the same violation.
    replayed = Execution.replay(config.program(), r.schedule, tracing=True)
    assert replayed.world.violation is not None
    assert replayed.world.violation.kind == r.violation.kind


UNMUTATED = sorted({(m.scenario, k) for m in MUTANTS.values() for k in (m.kernel, *m.caught_kernels)}
                   - {("stress", k) for k in KERNELS if k == "v6.1" or KERNELS[k].CORPUS_ERA})
# (stress on v6.1 and the era kernels, 20-40 s each at two gfns: tests/test_page_tables.py
# runs it at one, test_corpus unmutated for the rows that use it.)


@pytest.mark.parametrize(("scenario", "kernel"), UNMUTATED)
def test_unmutated_kernel_passes_the_mutants_scenarios(scenario: str, kernel: str) -> None:
    """No false positive: without the mutations the same configurations are clean."""
    r = check(Config(scenario, kernel, None, 1), FAST)
    assert r.verdict == "pass"


def test_seed_question_zap_invalidated_roots_meets_a_new_valid_root() -> None:
    """Yilun Xu's scenario: a vCPU allocates a valid root under mmu_lock held for read
    while kvm_tdp_mmu_zap_invalidated_roots() walks the roots. The real code skips it
    (it is not scheduled); zapping it would hit KVM_BUG_ON(!root->role.invalid)."""
    r = check(Config("memslot-delete", "v6.9", "zap-unscheduled-roots", 2), FAST)
    assert r.violation is not None
    assert r.violation.function == "kvm_tdp_mmu_zap_invalidated_roots"
    actions = [(s.thread, s.action) for s in r.trace]
    allocs = [i for i, (t, a) in enumerate(actions) if a.startswith("list_add_rcu(")]
    zapper_lock = [i for i, (t, a) in enumerate(actions) if t == "memslot" and a.startswith("read_lock(")]
    # the root that trips it is published after the invalidation (under the read lock)
    invalidation = next(i for i, s in enumerate(r.trace) if s.function == "kvm_tdp_mmu_invalidate_all_roots")
    assert len(allocs) == 2 and allocs[1] > invalidation
    assert zapper_lock


def test_shrinking_finds_a_shorter_proved_trace() -> None:
    config = Config("vcpu-load", "v6.9", "no-recheck", 2)
    first = check(config, Limits(shrink_time=0))
    short = check(config, Limits(shrink_time=30))
    assert len(short.schedule) <= len(first.schedule)
    assert short.minimal


@pytest.mark.parametrize(
    "bad",
    [Config("nope"), Config("vcpu-load", "v5.0"), Config("vcpu-load", mutant="nope"),
     Config("vcpu-load", vcpus=0), Config("vcpu-load", vcpus=99)],
)
def test_bad_input_is_rejected(bad: Config) -> None:
    with pytest.raises(BadInput):
        check(bad)


# Where a mutant runs (Mutant.runs_on): a kernel it is claimed on, or one derived from
# such a kernel that still has that kernel's version of everything the mutant overrides.
def test_a_mutant_is_refused_where_its_code_was_replaced() -> None:
    # v5.11 derives from v6.9 but replaces tdp_mmu_next_root: no RCU walk to break.
    with pytest.raises(BadInput, match="next-root-no-rcu"):
        Config("vcpu-load", "v5.11", "next-root-no-rcu", 1).validate()
    # v6.1 sets ROOT_INITIAL_REFS = 1 itself: refcount-one would change nothing.
    with pytest.raises(BadInput, match="refcount-one"):
        Config("vcpu-load", "v6.1", "refcount-one", 1).validate()


@pytest.mark.parametrize("name", ["get-root-refcount-inc", "next-root-no-rcu-unchecked",
                                  "put-root-no-pages-lock"])
def test_b02_mutants_run_on_v5_13_and_are_harmless_there(name: str) -> None:
    """v5.13 keeps v6.9's get_root, next_root and unlink, so B02's other three mutants
    run on it; every reader and list mutator there holds mmu_lock for write (but the fast
    zap's teardown, which takes no reference), so they break nothing (docs/corpus.md,
    "The v5.13 kernel"): exhaustive passes."""
    r = check(Config(MUTANTS_ALL[name].scenario, "v5.13", name, 1), FAST)
    assert r.verdict == "pass", r.violation


def test_v6_1_with_two_zap_workers() -> None:
    """v6.1 runs tdp_mmu_zap_wq's items on one worker thread by default (an
    under-approximation of the kernel's unbound pool); with two, zaps of two roots can
    overlap, and the scenarios still pass (one vCPU)."""
    from tdpmmu.kvm.program import KvmProgram
    from tdpmmu.kvm.versions import V6_1

    class TwoWorkers(V6_1):
        TDP_MMU_ZAP_WQ_WORKERS = 2

    for scenario in ("vcpu-load", "memslot-delete"):
        program = KvmProgram(TwoWorkers, SCENARIOS[scenario], 1)
        assert [t.name for t in program.build()[1]][-2:] == ["kworker/u:0", "kworker/u:1"]
        r = Dpor(program, FAST).run()
        assert r.verdict == "pass", r.violation


@pytest.mark.slow
def test_seed_question_roots_only_at_two_vcpus() -> None:
    """memslot-delete with the SPTEs abstract (the scenario the README runs at 3 vCPUs):
    v6.9 passes at 2 vCPUs, and Yilun Xu's KVM_BUG_ON is reachable in it once the zap
    stops skipping unscheduled roots."""
    assert check(Config("memslot-delete-roots", "v6.9", None, 2), FAST).verdict == "pass"
    r = check(Config("memslot-delete-roots", "v6.9", "zap-unscheduled-roots", 2), FAST)
    assert r.verdict == "violation" and r.violation is not None
    assert r.violation.kind == "KVM_BUG_ON"
