"""The library entry point: check one scenario on one kernel (and maybe a mutant).

Everything the CLI, the tests and the benchmarks run goes through ``check``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tdpmmu.explore.result import Limits, Result
from tdpmmu.explore.search.base import Progress, Search
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.explore.search.random_walk import RandomPct
from tdpmmu.explore.search.shrink import shortest
from tdpmmu.kvm.mutants import build_kernel
from tdpmmu.kvm.program import KvmProgram
from tdpmmu.kvm.registry import MUTANTS, SCENARIOS
from tdpmmu.kvm.versions import DEFAULT_KERNEL, KERNELS


class BadInput(ValueError):
    """An unknown name or a bad number: the CLI prints it on one line and exits 2."""


# Exhaustive searches, both with the visited-state cache and vCPU symmetry: partial-order
# reduction, or plain depth-first search; "auto" picks the one measured faster for the
# number of vCPUs. With the step memo a step costs little, and at up to two vCPUs DPOR
# visits about as many states as plain search, whose bookkeeping is much lighter: plain
# search is as fast or faster on every scenario there (1.8-3.7x where DPOR takes over a
# second); from three vCPUs DPOR's fewer states count (bench/results/plain-vs-dpor-
# 20261202.txt, docs/design.md "The step memo").
SEARCHES = {"auto": "plain up to 2 vCPUs, dpor from 3", "dpor": "partial-order reduction (DPOR, sleep sets)",
            "plain": "depth-first, every interleaving"}
PLAIN_UP_TO_VCPUS = 2


def _pick(kind: str, name: str, table: dict[str, object]) -> None:
    if name not in table:
        raise BadInput(f"unknown {kind} {name!r}; known: {', '.join(table)}")


def kernel_for(mutant: str | None) -> str:
    """The kernel to run when none is named: the one the mutant is written against."""
    return MUTANTS[mutant].kernel if mutant in MUTANTS else DEFAULT_KERNEL


@dataclass(frozen=True)
class Config:
    scenario: str
    kernel: str = DEFAULT_KERNEL
    mutant: str | None = None
    vcpus: int = 2
    gfns: int | None = None  # guest frames under each root; None: the scenario's default
    cache: bool = True
    symmetry: bool = True  # vCPU symmetry (with the cache; DPOR renames cached summaries)
    movers: bool = True  # run left movers (releases) with the step before them
    memo: bool = True  # replay steps run before from the step memo (explore.memo); same results
    search: str = "auto"  # "auto" | "dpor" | "plain"; --preemptions and --random are searches of their own
    shrink: bool = True  # look for a shortest counterexample (Limits.shrink_time)
    preemptions: int | None = None  # bound the search to schedules with this many preemptions
    random_runs: int = 0  # > 0: random PCT search with this many runs instead
    seed: int = 0

    def validate(self) -> None:
        _pick("scenario", self.scenario, SCENARIOS)  # type: ignore[arg-type]
        _pick("kernel", self.kernel, KERNELS)  # type: ignore[arg-type]
        _pick("search", self.search, SEARCHES)  # type: ignore[arg-type]
        if self.mutant is not None:
            _pick("mutant", self.mutant, MUTANTS)  # type: ignore[arg-type]
            base = MUTANTS[self.mutant].kernel
            if not MUTANTS[self.mutant].runs_on(self.kernel):
                raise BadInput(f"mutant {self.mutant} changes code of {base}, which kernel "
                               f"{self.kernel} does not run: use --kernel {base}")
        if not 1 <= self.vcpus <= 8:
            raise BadInput(f"--vcpus must be between 1 and 8, not {self.vcpus}")
        if self.gfns is not None and not 1 <= self.gfns <= 4:
            raise BadInput(f"--gfns must be between 1 and 4 (two levels of 2 entries), not {self.gfns}")
        if self.preemptions is not None and self.preemptions < 0:
            raise BadInput(f"--preemptions must be 0 or more, not {self.preemptions}")
        if self.random_runs < 0:
            raise BadInput(f"--random must be 0 or more, not {self.random_runs}")
        if self.random_runs and self.preemptions is not None:
            raise BadInput("--random and --preemptions are separate searches: pick one")
        if self.random_runs and self.search != "auto":
            raise BadInput(f"--random is a search of its own: it does not take --search {self.search}")
        if self.seed and not self.random_runs:
            raise BadInput("--seed is the seed of --random: give --random RUNS too")

    @property
    def effective_search(self) -> str:
        """The search ``check`` runs."""
        if self.random_runs:
            return "random"
        if self.preemptions is not None:
            return "preemption-bounded"
        if self.search == "auto":
            return "plain" if self.vcpus <= PLAIN_UP_TO_VCPUS else "dpor"
        return self.search

    @property
    def nr_gfns(self) -> int:
        """``gfns``, or the scenario's default."""
        return self.gfns or SCENARIOS[self.scenario].gfns

    def program(self) -> KvmProgram:
        self.validate()
        kernel = build_kernel(KERNELS[self.kernel], MUTANTS[self.mutant] if self.mutant else None)
        return KvmProgram(kernel, SCENARIOS[self.scenario], self.vcpus, self.nr_gfns, self.movers, self.memo)


def check(config: Config, limits: Limits | None = None, progress: Progress | None = None) -> Result:
    """Explore every interleaving of the scenario (within the limits)."""
    program = config.program()
    limits = limits or Limits()
    symmetry = config.symmetry and config.cache
    search: Search
    if config.random_runs:
        search = RandomPct(program, limits, progress, runs=config.random_runs, seed=config.seed)
    elif config.effective_search == "dpor":
        search = Dpor(program, limits, progress, cache=config.cache, symmetry=symmetry)
    else:
        search = DepthFirst(program, limits, progress, cache=config.cache, symmetry=symmetry,
                            preemptions=config.preemptions)
    result = search.run()
    if result.verdict == "violation" and config.shrink:
        if limits.time_limit:  # (the shortening is part of the run the user bounded)
            left = max(0.0, limits.time_limit - result.stats.seconds)
            limits = replace(limits, shrink_time=min(limits.shrink_time, left))
        result = shortest(program, result, limits, symmetry=symmetry)
    return result
