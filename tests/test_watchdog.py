"""Model code that loops without reaching a scheduling point is a model error, not a hang."""

from __future__ import annotations

import time

from tdpmmu.explore.program import ThreadSpec
from tdpmmu.explore.result import Limits
from tdpmmu.explore.runtime import Op, Thread, World, set_world
from tdpmmu.explore.search.dfs import DepthFirst
from tdpmmu.explore.search.dpor import Dpor
from tdpmmu.explore.watchdog import watchdog


class Spinner:
    def build(self) -> tuple[World, list[ThreadSpec]]:
        w = World()
        set_world(w)

        def spin() -> Thread:
            yield Op("start")
            while True:
                pass

        return w, [ThreadSpec("spinner", spin)]

    def check_state(self, world: World) -> None:
        pass

    def check_final(self, world: World) -> None:
        pass


def test_a_step_that_never_yields_is_a_model_error() -> None:
    r = DepthFirst(Spinner(), Limits(hang_seconds=0.2)).run()
    assert r.verdict == "violation"
    assert r.violation is not None and r.violation.kind == "model-error"
    assert "scheduling point" in r.violation.message


class SpinningGuard(Spinner):
    """A guard (model code the engine evaluates, not a step) that never returns."""

    def build(self) -> tuple[World, list[ThreadSpec]]:
        w = World()
        set_world(w)

        def forever() -> bool:
            while True:
                pass

        def wait() -> Thread:
            yield Op("wait", guard=forever)

        return w, [ThreadSpec("waiter", wait)]


def test_a_guard_that_never_returns_is_a_model_error() -> None:
    for search in (DepthFirst, Dpor):
        r = search(SpinningGuard(), Limits(hang_seconds=0.2)).run()
        assert r.violation is not None and r.violation.kind == "model-error", search


def test_slow_engine_work_between_steps_is_not_a_model_hang() -> None:
    """The engine's own work (a canonical form over many tied vCPUs) may take longer
    than the watchdog's period without any step: that is not the model's fault."""
    with watchdog(0.05):
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:  # (no model frame on the stack)
            pass
