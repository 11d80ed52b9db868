"""Symmetry reduction is sound: same verdicts and the same final states (up to renaming
vCPUs) as the plain search, with fewer states."""

from __future__ import annotations

import random

import pytest

from tdpmmu.api import Config, check
from tdpmmu.explore.execution import Execution
from tdpmmu.explore.result import Limits
from tdpmmu.explore.runtime import NAME, Tid
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.explore.symmetry import make_rename
from tdpmmu.kvm.mutants import MUTANTS
from tdpmmu.kvm.versions import KERNELS

FAST = Limits(shrink_time=0)


def _both(config: Config) -> tuple[DepthFirst, DepthFirst]:
    program = config.program()
    plain, reduced = DepthFirst(program, FAST), DepthFirst(program, FAST, symmetry=True)
    return plain, reduced


# vcpu-load runs v6.9's code on v6.9+lockless-aging (only aging differs). At 3 vCPUs the
# plain search of v6.1 (a zap worker beside the vCPUs) takes ~4 minutes: v6.1 is compared
# at 2 vCPUs, within the suite's budget; so are the corpus's era kernels (v5.11: 34 s at
# 3 vCPUs, v5.16.19: ~1 minute).
SYMMETRY_RUNS = [(k, v) for k in KERNELS if k != "v6.9+lockless-aging" for v in (2, 3)
                 if v == 2 or not (k == "v6.1" or KERNELS[k].CORPUS_ERA)]


@pytest.mark.parametrize(("kernel", "vcpus"), SYMMETRY_RUNS)
def test_same_final_states_fewer_states(kernel: str, vcpus: int) -> None:
    plain, reduced = _both(Config("vcpu-load", kernel, None, vcpus))
    a, b = plain.run(), reduced.run()
    assert a.verdict == b.verdict == "pass"
    assert plain.final_canonical == reduced.final_canonical
    assert b.stats.states < a.stats.states


# Symmetry needs two vCPUs; the page-table mutants are exercised at one (m.vcpus).
@pytest.mark.parametrize("name", [n for n, m in MUTANTS.items() if m.vcpus >= 2])
def test_same_verdict_on_mutants(name: str) -> None:
    m = MUTANTS[name]
    plain, reduced = _both(Config(m.scenario, m.kernel, name, 2))
    a, b = plain.run(), reduced.run()
    assert a.verdict == b.verdict == "violation"
    assert a.violation is not None and b.violation is not None
    assert a.violation.kind in m.expect and b.violation.kind in m.expect


def test_renamed_world_hash_is_the_hash_of_the_renamed_cells() -> None:
    """The renamed world's hash is ``World.h`` updated for the cells a renaming changes
    (remembered per world, and per member and values); it must equal the hash of every
    cell renamed, on states along random executions, memo hit or not."""
    rng = random.Random(7)
    renamed_states = 0
    for _ in range(20):
        ex = Execution(Config("memslot-delete", vcpus=3).program())
        ids: dict[object, int] = {}
        while enabled := ex.enabled():
            if ex.step(rng.choice(enabled)) is not None:
                break
            groups = ex.program.symmetry(ex.world)  # type: ignore[attr-defined]
            if not groups:
                continue
            tids = [t for t, _ in groups[0]]
            oids = [o for _, o in groups[0]]
            order = rng.sample(range(len(tids)), len(tids))
            tid_map = {t: Tid(tids[i]) for t, i in zip(tids, order, strict=True)}
            oid_map = {o: oids[i] for o, i in zip(oids, order, strict=True)}
            rename = make_rename(tid_map, oid_map)
            ex.canonical()  # (lists the members' cells)
            # an id per renaming, as Execution gives them (not to collide with its own)
            rename_id = 1000 + ids.setdefault((tuple(tid_map.items()), tuple(oid_map.items())), len(ids))
            full = 0
            for (oid, f), v in ex.world.cells.items():
                if f != NAME:
                    full ^= hash(((oid_map.get(oid, oid), f), rename(v)))
            for _ in range(2):  # the second from the memo
                assert ex._renamed_world_hash(oid_map, rename_id, rename) == full
            renamed_states += 1
    assert renamed_states > 100


def test_too_many_tied_vcpus_leave_the_state_as_it_is() -> None:
    """Eight vCPUs at their start tie 8! ways: trying every order would take minutes
    per state, so such a state is not reduced (its own fingerprint); four tie 4! ways,
    all tried, and a state and its permutations still agree."""
    eight = Execution(Config("vcpu-load", vcpus=8).program())
    assert eight.canonical() == (eight.fingerprint(), None)
    r = check(Config("vcpu-load", vcpus=8), Limits(max_states=300))
    assert r.verdict == "incomplete" and r.stats.states == 300
    four = Execution(Config("vcpu-load", vcpus=4).program())
    first = four.enabled()[0]
    assert four.step(first) is None
    fp = four.canonical()[0]
    other = Execution(Config("vcpu-load", vcpus=4).program())
    assert other.step((first[0] + 1, first[1])) is None  # the next vCPU, the same step
    assert other.canonical()[0] == fp
