"""wait_event: block until a condition on shared state holds (a disabled thread, not a
spinning one)."""

from __future__ import annotations

from collections.abc import Callable, Generator

from tdpmmu.explore.runtime import Op, primitive


@primitive
def wait_event(what: str, condition: Callable[[], bool]) -> Generator[Op, int, None]:
    yield Op("wait_event", what, guard=condition)
