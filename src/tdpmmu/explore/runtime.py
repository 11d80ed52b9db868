"""The private runtime under every model: shared memory, scheduling points, violations.

Model threads are Python generators. A thread runs its own code atomically between two
scheduling points; at each point it yields an :class:`Op` saying what it is about to do
and whether it can do it now (its guard). The engine picks which thread to resume.

All shared state lives in one :class:`World` as a flat map of cells ``(oid, field) ->
immutable value``. Keeping it flat buys three things the search needs on every step:
an O(1) incremental fingerprint, a per-step record of what was read and written, and a
single place to poison freed memory.

This module knows nothing about kernels or KVM; ``tdpmmu.kernel`` builds the kernel API
on top of it and ``tdpmmu.explore`` drives it.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from types import CodeType
from typing import Any, TypeVar

Key = tuple[int, str]
Guard = Callable[[], bool]
Thread = Generator["Op", int, None]
"""A model thread: yields an Op at each scheduling point, receives the chosen branch."""

_MISSING = object()
F = TypeVar("F", bound=Callable[..., Any])


class Op:
    """What a thread is about to do at a scheduling point.

    ``guard`` is None for steps that are always enabled; otherwise the thread is
    blocked (disabled, not spinning) until ``guard()`` is true. ``choices > 1`` makes the
    step a nondeterministic branch: the engine explores each index and sends it back.
    The label is built lazily from ``name`` and ``args`` because only traces need it.

    ``moves_left`` marks a *left mover* (Lipton, CACM 1975): an operation that never
    blocks and commutes with every step another thread can take just before it (a
    release). It ends its effect with ``yield MOVED``. The engine runs it with the
    thread's previous step, saving a scheduling point, where that loses no final state,
    deadlock or violation: the code after it touches no shared memory, it disables no
    waiting thread, and the invariant reads nothing it writes (``Execution._run_mover``;
    docs/design.md, "Left movers", also says why each release commutes).
    """

    __slots__ = ("args", "choices", "guard", "moves_left", "name")

    def __init__(
        self, name: str, *args: object, guard: Guard | None = None, choices: int = 1,
        moves_left: bool = False,
    ) -> None:
        self.name = name
        self.args = args
        self.guard = guard
        self.choices = choices
        self.moves_left = moves_left

    def label(self) -> str:
        if not self.args and not self.name.isidentifier():
            return self.name  # a description ("walk roots"), not a call
        return f"{self.name}({', '.join(str(a) for a in self.args)})"


MoverRunner = Callable[[Any, "Op"], "Op | None"]


def advance(thread: Thread, value: int | None, run_mover: MoverRunner | None = None,
            fused: list[str] | None = None) -> Op:
    """Resume a thread and run it to its next scheduling point, through the left movers
    on the way if there is a ``run_mover`` (without one, movers are off: each is a point;
    the labels of those run go to ``fused`` for a trace). ``run_mover(thread, op)`` runs
    a left mover's effect and the thread's code after it, to its next point, and returns
    that point's op; or None, having undone both, where they must not run with the step
    before (``Execution._run_mover``): the mover is then a scheduling point of its own."""
    op = thread.send(value)  # type: ignore[arg-type]
    while True:
        if op is MOVED:  # the end of a mover's effect: no point, with movers or without
            op = thread.send(0)
        elif op.moves_left and run_mover is not None:
            nxt = run_mover(thread, op)
            if nxt is None:
                return op
            if fused is not None:
                fused.append(op.label())
            op = nxt
        else:
            return op


# A left mover yields MOVED where its effect ends (``yield Op(..., moves_left=True)``,
# the effect, ``yield MOVED``): the engine checks what runs after it (Execution._run_mover).
MOVED = Op("moved")


@dataclass
class Violation:
    """A property the model broke, as the primitive that noticed it describes it."""

    kind: str  # e.g. "KVM_BUG_ON", "WARNING", "use-after-free", "deadlock", "model-error"
    message: str
    function: str = ""
    thread: str = ""
    details: str = ""  # e.g. the Python traceback of a model error
    stack: list[str] = field(default_factory=list)  # model call chain at the report, outermost first


class StepAborted(Exception):
    """Raised in model code by the first violation of a step (``World.report``)."""


# Kinds of access in ``World.accesses``. MEMBER_READ / MEMBER_WRITE touch the cell as a
# whole only as far as one member is concerned (the member itself is logged as a cell of
# its own): two member writes commute, a member write does not commute with a read of
# the whole cell, a write of the whole cell commutes with nothing.
READ, WRITE, MEMBER_WRITE, MEMBER_READ = 0, 1, 2, 3


def member_key(key: Key, tid: int) -> Key:
    """The cell of thread ``tid``'s own member of ``key`` (as ``World.get_member`` logs it)."""
    return key[0], f"{key[1]}#T{int(tid)}"


def key_owner(key: Key) -> int | None:
    """The thread a member cell (``member_key``) belongs to, else None."""
    _, sep, member = key[1].partition("#T")
    return int(member) if sep else None


def rename_key(key: Key, tid_map: Mapping[int, int], oid_map: Mapping[int, int]) -> Key:
    """The cell ``key`` names once threads and objects are renamed (symmetry): its
    object, and the thread of a member cell."""
    oid, field = key
    owner = key_owner(key)
    renamed = oid_map.get(oid, oid), field.partition("#T")[0]
    return renamed if owner is None else member_key(renamed, tid_map.get(owner, owner))


# Types whose values never name a thread or an object (a Tid is not an int here: types
# are compared exactly). ``symmetry`` adds any other type it finds to be so.
INERT_TYPES: set[type] = {int, bool, str, float, bytes, type(None), type, CodeType}

NEXT_OID: Key = (-1, "next_oid")
NAME = "__name__"
LIVE = "__live__"  # False once the object is freed (poisoned)


class Numbered:
    """The name of an object numbered among those given the same ``Numbered`` (the
    n-th "root" is "root<n>", in allocation order): worked out when shown, so that the
    step that names it does the same in every history (see World.set_name)."""

    __slots__ = ("kind", "prefix")

    def __init__(self, kind: type, prefix: str) -> None:
        self.kind = kind
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        return type(other) is Numbered and (other.kind, other.prefix) == (self.kind, self.prefix)

    def __hash__(self) -> int:
        return hash((self.kind, self.prefix))


class Tid(int):
    """A thread id stored in shared state (a lock owner, an RCU reader): typed, so that
    symmetry reduction can rename thread ids without mistaking counters for them."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"T{int(self)}"


class World:
    """Shared memory of one execution, plus who is running now.

    ``h`` is the XOR of ``hash((key, value))`` over all cells, updated on every write, so
    fingerprinting a state costs nothing extra. ``freed`` mirrors the poisoned objects
    so that the use-after-free check on every field access is a set lookup.

    While a thread steps, every value it reads is appended to ``log`` (the thread's own
    input log): a thread is a deterministic function of its reads and branch choices, so
    ``ReplayWorld`` can rebuild its generator from the log alone, without re-running
    anyone else.
    """

    __slots__ = (
        "accesses",
        "cells",
        "freed",
        "h",
        "log",
        "names_log",
        "naming",
        "notes",
        "stepping",
        "thread_names",
        "tid",
        "tracing",
        "violation",
    )

    def __init__(self) -> None:
        self.cells: dict[Key, Hashable] = {NEXT_OID: 1}
        self.h = hash((NEXT_OID, 1))
        # Every cell that ever held a value that may name a thread or an object (a
        # superset: cells are never dropped from it, and a restore may leave keys that
        # no longer exist): what symmetry renames besides the members' own cells.
        self.naming: set[Key] = set()
        self.freed: set[int] = set()
        self.names_log: list[tuple[int, object]] | None = None  # see set_name
        self.tid: int = Tid(-1)
        self.thread_names: list[str] = []
        self.violation: Violation | None = None
        self.stepping = False  # a thread's step is running (see report)
        self.tracing = False
        self.notes: list[str] = []
        self.log: list[Any] | None = None
        # Per-step (key, kind) log, kept only when a search needs dependencies.
        self.accesses: list[tuple[Key, int]] | None = None

    # -- memory ---------------------------------------------------------------------
    def get(self, key: Key) -> Any:
        # (``peek`` inlined: this is the model's every field read.)
        if key[0] in self.freed:
            self.use_after_free(key)
        accesses = self.accesses
        if accesses is not None:  # whether it is a use-after-free depends on this too
            accesses.append(((key[0], LIVE), READ))
        value = self.cells[key]
        if self.log is not None:
            self.log.append(value)
        if accesses is not None:
            accesses.append((key, READ))
        return value

    def peek(self, key: Key) -> Any:
        """Read without the use-after-free check (metadata such as names and types)."""
        value = self.cells[key]
        if self.log is not None:
            self.log.append(value)
        if self.accesses is not None:
            self.accesses.append((key, READ))
        return value

    def set(self, key: Key, value: Hashable) -> None:
        if key[0] in self.freed:
            self.use_after_free(key)
        cells = self.cells
        old = cells.get(key, _MISSING)
        if self.accesses is not None:
            self.accesses.append(((key[0], LIVE), READ))
            # Storing the value a cell holds changes nothing: it only depends on the
            # cell, like a read, and commutes with other reads of it.
            self.accesses.append((key, WRITE if old is _MISSING or old != value else READ))
        self._store(key, old, value)

    # A set-valued cell whose members belong to threads (a lock's readers, RCU's
    # readers): a thread reading or updating only its own member commutes with another
    # thread doing the same with *its* member, though both store the whole cell.
    def get_member(self, key: Key, member: int) -> Any:
        """Read ``key`` where only what it says about ``member`` is used."""
        if key[0] in self.freed:
            self.use_after_free(key)
        if self.accesses is not None:
            self.accesses += [((key[0], LIVE), READ), (key, MEMBER_READ), (member_key(key, member), READ)]
        value = self.cells[key]
        if self.log is not None:
            self.log.append(value)
        return value

    def set_member(self, key: Key, value: Hashable, member: int) -> None:
        """Store ``key`` where the new value differs from the old in ``member`` only."""
        if key[0] in self.freed:
            self.use_after_free(key)
        old = self.cells.get(key, _MISSING)
        if self.accesses is not None:
            changed = old is _MISSING or old != value
            self.accesses += [((key[0], LIVE), READ), (key, MEMBER_WRITE if changed else MEMBER_READ),
                              (member_key(key, member), WRITE if changed else READ)]
        self._store(key, old, value)

    def _store(self, key: Key, old: object, value: Hashable) -> None:
        if old is not _MISSING:
            if old == value:
                return
            self.h ^= hash((key, old))
        self.h ^= hash((key, value))
        self.cells[key] = value
        if type(value) not in INERT_TYPES:
            self.naming.add(key)

    def alloc(self, kind: type, name: str) -> int:
        """A new object id. Ids count up in each execution, so replaying a schedule
        yields the same ids."""
        oid: int = self.peek(NEXT_OID)
        self.set(NEXT_OID, oid + 1)
        self.set((oid, "__type__"), kind)
        self.set_name(oid, name or f"{getattr(kind, 'C_NAME', '') or kind.__name__}{oid}")
        self.set((oid, LIVE), True)
        return oid

    def set_name(self, oid: int, name: object) -> None:
        """A display name (a string, or a ``Numbered``) is not state: it is kept out of
        the fingerprint (``h``), so that states equal up to renaming symmetric objects
        fingerprint alike. Names set are also put in ``names_log`` when it is a list
        (the step memo replays them)."""
        self.cells[(oid, NAME)] = name
        if self.names_log is not None:
            self.names_log.append((oid, name))

    def apply(self, writes: tuple[tuple[Key, Hashable], ...], freed: tuple[int, ...]) -> None:
        """Store what a step wrote, unlogged (a step replayed from the memo)."""
        cells = self.cells
        for key, value in writes:
            self._store(key, cells.get(key, _MISSING), value)
        self.freed.update(freed)

    def type_of(self, oid: int) -> Any:
        return self.peek((oid, "__type__"))

    def name_of(self, oid: int) -> str:
        """An object's display name. Names are not state: reading one is not logged (no
        thread's behaviour depends on it, and a dependency on it would be spurious)."""
        name = self.cells.get((oid, NAME), f"#{oid}")
        if type(name) is Numbered:
            cells = self.cells
            rank = sum(1 for o in range(1, oid) if cells.get((o, NAME)) == name)
            return f"{name.prefix}{rank + 1}"
        return str(name)

    def oids(self) -> range:
        return range(1, self.peek(NEXT_OID))

    def is_freed(self, oid: int) -> bool:
        return not self.peek((oid, LIVE))

    def free(self, oid: int) -> None:
        """Poison an object: from now on any access to it is a use-after-free."""
        self.set((oid, LIVE), False)
        self.freed.add(oid)

    def use_after_free(self, key: Key) -> None:
        self.report("use-after-free", f"access to {key[1]} of freed {self.name_of(key[0])}")

    # -- snapshots (restoring an ancestor state in a depth-first search) -------------
    def snapshot(self) -> tuple[dict[Key, Hashable], int, frozenset[int]]:
        return self.cells.copy(), self.h, frozenset(self.freed)

    def restore(self, snap: tuple[dict[Key, Hashable], int, frozenset[int]]) -> None:
        cells, self.h, freed = snap
        self.cells = cells.copy()
        self.freed = set(freed)
        self.violation = None

    # -- reporting ------------------------------------------------------------------
    def report(self, kind: str, message: str) -> None:
        """Record a violation. The execution ends with it: a thread's step stops here
        (``StepAborted``), since nothing it does next can be explored; what the kernel
        would do after a WARN or KVM_BUG_ON may never reach a scheduling point (a zap
        that retries a failed SPTE update forever)."""
        if self.violation is None:
            stack = _model_stack()
            self.violation = Violation(kind, message, function=stack[-1] if stack else "", stack=stack)
            if self.stepping:
                raise StepAborted(kind)

    def note(self, text: str, *args: object) -> None:
        """Say what a step did (e.g. a refcount's new value); kept only for traces, so
        ``text.format(*args)`` is built only when tracing."""
        if self.tracing:
            self.notes.append(text.format(*args) if args else text)

    @property
    def thread_name(self) -> str:
        return self.thread_names[self.tid] if self.tid >= 0 else "?"


class ReplayWorld(World):
    """What a thread sees while its generator is rebuilt: its own logged reads, in order.
    Writes, frees and reports are dropped: they already happened in the real world."""

    __slots__ = ("_reads", "_size")

    def __init__(self, reads: list[Any], tid: int, thread_names: list[str]) -> None:
        super().__init__()
        self._reads = iter(reads)
        self._size = len(reads)
        self.tid = tid
        self.thread_names = thread_names

    def get(self, key: Key) -> Any:
        return next(self._reads)

    @property
    def position(self) -> int:
        """How many logged reads the rebuilt thread has consumed."""
        return self._size - operator.length_hint(self._reads)

    def peek(self, key: Key) -> Any:
        return next(self._reads)

    def get_member(self, key: Key, member: int) -> Any:
        return next(self._reads)

    def set(self, key: Key, value: Hashable) -> None:
        pass

    def set_member(self, key: Key, value: Hashable, member: int) -> None:
        pass

    def free(self, oid: int) -> None:
        pass

    def report(self, kind: str, message: str) -> None:
        pass

    def name_of(self, oid: int) -> str:
        return f"#{oid}"  # nothing a rebuilt thread says is shown


def _model_stack() -> list[str]:
    """The model functions on the Python stack, outermost first: who hit the WARN/BUG
    and how it got there (the splat's Call Trace)."""
    out = []
    f = sys._getframe(2)
    while f is not None:
        code = f.f_code
        if code.co_name in ("check_state", "check_final"):
            return []  # a Program's invariant: the engine names the step instead
        module = f.f_globals.get("__name__", "")
        if module.startswith("tdpmmu.kvm") and code not in INLINE_CODE:
            out.append(code.co_name)
        f = f.f_back  # type: ignore[assignment]
    return out[::-1]


@dataclass
class _Current:
    world: World = field(default_factory=World)


CURRENT = _Current()
"""Holds the world of the execution being stepped; ``world()`` reads it. The field
descriptors (``tdpmmu.kernel.memory``) read ``CURRENT.world`` directly: they run on
every field access, and a function call there is measurable."""


def world() -> World:
    """The world of the execution being stepped (the facade's handle on the runtime)."""
    return CURRENT.world


def set_world(w: World) -> None:
    CURRENT.world = w


# Code objects of primitives: traces name the innermost frame that is *not* one of these,
# so a step reads "kvm_tdp_mmu_put_root: refcount_dec_and_test(...)".
PRIMITIVE_CODE: set[CodeType] = set()


def primitive(fn: F) -> F:
    """Mark a function as a kernel primitive (a scheduling point, not model code)."""
    PRIMITIVE_CODE.add(fn.__code__)
    return fn


# Code objects of model helpers that are part of their caller in the kernel (a loop
# body or a block split out so that a version or mutant can override just that part).
# Traces and splats attribute their steps to the calling kernel function.
INLINE_CODE: set[CodeType] = set()


def inline(fn: F) -> F:
    """Mark a model helper as part of its caller (see INLINE_CODE)."""
    INLINE_CODE.add(fn.__code__)
    return fn
