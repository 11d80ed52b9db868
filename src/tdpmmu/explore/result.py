"""What a search returns: a verdict, the counts behind it, and a counterexample."""

from __future__ import annotations

from dataclasses import dataclass, field

from tdpmmu.explore.execution import Schedule, TraceStep
from tdpmmu.explore.runtime import Violation


@dataclass
class Limits:
    max_states: int = 0  # 0 = unlimited
    time_limit: float = 0.0  # seconds, 0 = unlimited
    max_steps: int = 200  # per thread per execution: more is reported as livelock
    shrink_time: float = 10.0  # seconds to spend looking for a shorter counterexample
    hang_seconds: float = 5.0  # a step that runs this long twice over is a model error


@dataclass
class Stats:
    states: int = 0  # distinct states visited (with the cache) or tree nodes (without)
    executions: int = 0  # paths explored to their end: a final state, a cut, a violation
    transitions: int = 0  # steps executed during the search, replays excluded
    replayed: int = 0  # steps re-executed to restore earlier states
    max_depth: int = 0
    seconds: float = 0.0


@dataclass
class Result:
    verdict: str  # "pass" | "violation" | "incomplete"
    stats: Stats
    violation: Violation | None = None
    schedule: Schedule = field(default_factory=list)
    trace: list[TraceStep] = field(default_factory=list)
    reason: str = ""  # for "incomplete": which limit stopped the search
    minimal: bool = False  # the counterexample is proved shortest (in steps)
