"""Schedules as strings a user can paste: "0*3,2,2:1,1" = thread ids in step order,
"*N" repeating a step N times, ":B" after an id choosing branch B of a nondeterministic
step (e.g. need_resched)."""

from __future__ import annotations

from tdpmmu.explore.execution import Schedule


class BadSchedule(ValueError):
    pass


def encode(schedule: Schedule) -> str:
    parts: list[str] = []
    i = 0
    while i < len(schedule):
        j = i
        while j + 1 < len(schedule) and schedule[j + 1] == schedule[i]:
            j += 1
        tid, c = schedule[i]
        step = f"{tid}:{c}" if c else str(tid)
        parts.append(f"{step}*{j - i + 1}" if j > i else step)
        i = j + 1
    return ",".join(parts)


MAX_STEPS = 1_000_000  # a longer schedule is a typo, not an execution


def decode(text: str) -> Schedule:
    out: Schedule = []
    parts = text.replace(" ", "").split(",")
    for i, part in enumerate(parts if text.strip() else []):
        step, _, times = part.partition("*")
        tid, _, choice = step.partition(":")
        try:
            n = int(times) if times else 1
            if n < 1 or int(tid) < 0 or (choice and int(choice) < 0):
                raise ValueError
        except ValueError:
            raise BadSchedule(
                f"part {i + 1} of the schedule is {part!r}, not TID, TID:BRANCH or TID*COUNT"
            ) from None
        if len(out) + n > MAX_STEPS:
            raise BadSchedule(f"the schedule has more than {MAX_STEPS} steps (part {i + 1}: {part!r})")
        out.extend([(int(tid), int(choice) if choice else 0)] * n)
    return out
