"""Schedules as strings a user can paste: "0,0,2,2:1,1" = thread ids in step order,
":N" after an id choosing branch N of a nondeterministic step (e.g. need_resched)."""

from __future__ import annotations

from tdpmmu.explore.execution import Schedule


class BadSchedule(ValueError):
    pass


def encode(schedule: Schedule) -> str:
    return ",".join(f"{tid}:{c}" if c else str(tid) for tid, c in schedule)


def decode(text: str) -> Schedule:
    out: Schedule = []
    for i, part in enumerate(p for p in text.replace(" ", "").split(",") if p):
        tid, _, choice = part.partition(":")
        try:
            out.append((int(tid), int(choice) if choice else 0))
        except ValueError:
            raise BadSchedule(f"step {i + 1} of the schedule is {part!r}, not TID or TID:BRANCH") from None
    return out
