"""A watchdog for model code that never reaches a scheduling point (an infinite Python
loop between two yields): such a step would hang the checker, so after ``seconds``
without a completed step it raises ``ModelHang`` inside the model code, which the engine
reports as a model error like any other exception in model code. Only inside model
code: the engine's own work between two steps (a symmetry canonical form over many
tied vCPUs, say) is slow, not hung, and must not be blamed on the model."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import CodeType, FrameType


class ModelHang(Exception):
    pass


class _Progress:
    steps = 0  # incremented by the engine after every step


PROGRESS = _Progress()

# The engine's functions that run model code (a thread's step, the invariant, the final
# check): the watchdog fires only in a frame called from one of them.
MODEL_ENTRIES: set[CodeType] = set()


def _in_model(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in MODEL_ENTRIES:
            return True
        frame = frame.f_back
    return False


@contextmanager
def watchdog(seconds: float = 10.0) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield  # signals only reach the main thread; elsewhere, no watchdog
        return
    last = [-1]

    def check(signum: int, frame: FrameType | None) -> None:
        if PROGRESS.steps == last[0] and _in_model(frame):
            raise ModelHang(f"a model step ran {seconds:g}s without reaching a scheduling point")
        last[0] = PROGRESS.steps

    old = signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, seconds, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
