"""Model code that loops without reaching a scheduling point is a model error, not a hang."""

from __future__ import annotations

from tdpmmu.explore.program import ThreadSpec
from tdpmmu.explore.result import Limits
from tdpmmu.explore.runtime import Op, Thread, World, set_world
from tdpmmu.explore.search.dfs import DepthFirst


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
