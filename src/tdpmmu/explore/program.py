"""The interface a model offers the engine: how to build its threads, what to check.

Deliberately tiny (stateright's lesson): a program builds a fresh world and its threads,
and may check properties of a state and of a finished execution. Everything else (which
kernel, which mutant, which scenario) is the program's business.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from tdpmmu.explore.runtime import Thread, World


@dataclass
class ThreadSpec:
    name: str
    start: Callable[[], Thread]  # makes the thread's generator; called again to rebuild it
    daemon: bool = False  # e.g. the RCU callback runner: never keeps an execution alive
    group: str = ""  # threads with the same non-empty group run identical code (symmetry)
    owner: Any = None  # the object only this thread owns (its vCPU), renamed with it


class Program(Protocol):
    def build(self) -> tuple[World, list[ThreadSpec]]:
        """A fresh initial world and its threads (generators not yet started).

        Must be deterministic: replay rebuilds the program and re-runs a schedule."""
        ...

    def check_state(self, world: World) -> None:
        """Report (``world.report``) any invariant broken in the current state. A
        function of the shared cells alone: the engine runs it once per distinct world
        (``World.h``), not again after steps that changed no cell."""
        ...

    def check_final(self, world: World) -> None:
        """Report anything wrong once every non-daemon thread has finished."""
        ...

    # Optional: ``movers = False`` makes every left mover (``runtime.Op``) a scheduling
    # point of its own, the unreduced system the reduction is checked against.
    # ``memo = False`` runs every step's code (no step memo, explore.memo): the same
    # results, slower; for checking the memo and measuring it.
