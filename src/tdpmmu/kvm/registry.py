"""Every name a user can pass: kernels, scenarios and mutants (the base ones and the
historical-bug corpus), in one place for the API, the CLI and the reports."""

from __future__ import annotations

from tdpmmu.kvm.corpus import CORPUS_MUTANTS, CORPUS_SCENARIOS
from tdpmmu.kvm.mutants import MUTANTS as BASE_MUTANTS
from tdpmmu.kvm.mutants import Mutant
from tdpmmu.kvm.scenarios import SCENARIOS as BASE_SCENARIOS
from tdpmmu.kvm.scenarios import Scenario
from tdpmmu.kvm.versions import DEFAULT_KERNEL, KERNELS

SCENARIOS: dict[str, Scenario] = {**BASE_SCENARIOS, **CORPUS_SCENARIOS}
MUTANTS: dict[str, Mutant] = {**BASE_MUTANTS, **CORPUS_MUTANTS}

__all__ = ["DEFAULT_KERNEL", "KERNELS", "MUTANTS", "SCENARIOS"]
