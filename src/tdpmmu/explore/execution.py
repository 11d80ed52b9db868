"""One execution of a program: its world, its threads, stepping and fingerprinting.

Python generators cannot be copied, so how an earlier state comes back decides the
explorer's speed (numbers in docs/design.md):

* the world is a flat dict, copied into a snapshot whenever the depth-first search
  pushes a state, and copied back when it returns there;
* every value a thread reads while it steps goes into that thread's input log. A thread
  is a deterministic function of its reads and branch choices, so after a restore a
  thread whose generator ran ahead is rebuilt *lazily*, only when it next steps, by
  re-running its own code against its own log (``ReplayWorld``), not the whole schedule.
"""

from __future__ import annotations

import gc
import itertools
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import CellType, CodeType, FrameType, FunctionType, GeneratorType
from typing import Any

from tdpmmu.explore.memo import MISSING, Mover, Step, StepMemo, Writes, frozen
from tdpmmu.explore.program import Program, ThreadSpec
from tdpmmu.explore.runtime import (
    INLINE_CODE,
    LIVE,
    MEMBER_READ,
    MEMBER_WRITE,
    MOVED,
    NAME,
    NEXT_OID,
    PRIMITIVE_CODE,
    READ,
    WRITE,
    Key,
    Op,
    ReplayWorld,
    StepAborted,
    Tid,
    Violation,
    World,
    advance,
    set_world,
)
from tdpmmu.explore.symmetry import Rename, Renaming, frame_hash, make_rename, member_delta, naming_delta
from tdpmmu.explore.watchdog import MODEL_ENTRIES, PROGRESS

Transition = tuple[int, int]  # (thread id, branch index)
Schedule = list[Transition]

DONE_FP = 0  # fingerprint of a finished thread


@dataclass
class TraceStep:
    index: int
    tid: int
    thread: str
    function: str  # innermost model function (kernel name) running the step
    stack: list[str]  # model call chain, outermost first
    action: str  # the primitive, e.g. "read_lock(mmu_lock)"
    notes: list[str] = field(default_factory=list)  # what it did, e.g. "2 -> 1"


class ThreadState:
    __slots__ = (
        "alive",
        "choices",
        "daemon",
        "fp_at",
        "gen",
        "group",
        "log",
        "marks",
        "name",
        "pending",
        "pos",
        "spec",
        "steps",
    )

    def __init__(self, spec: ThreadSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.daemon = spec.daemon
        self.group = spec.group
        self.gen: Any = spec.start()
        self.pending: Op | None = None
        self.alive = True
        self.steps = 0  # steps taken in the current state
        # Steps the live generator has taken: < steps after memo hits (it catches up from
        # the log), -1 when it is of no use (it ran ahead of a restored state).
        self.pos = 0
        self.log: list[Any] = []  # values read, in order
        self.marks: list[int] = []  # marks[n] = len(log) after n steps
        self.fp_at: list[int] = []  # fp_at[n] = the thread's fingerprint after n steps
        self.choices: list[int] = []  # branch sent at each step


# steps, alive, pending, fingerprint, frames, their hashes
ThreadSnap = tuple[int, bool, "Op | None", int, tuple[tuple[Any, ...], ...], tuple[int, ...]]


@dataclass
class Snapshot:
    world: tuple[Any, ...]
    threads: list[ThreadSnap]
    depth: int


def _frames(gen: GeneratorType) -> list[FrameType]:  # type: ignore[type-arg]
    """The chain of generator frames a thread is suspended in, outermost first."""
    out = []
    g: Any = gen
    while isinstance(g, GeneratorType) and g.gi_frame is not None:
        out.append(g.gi_frame)
        g = g.gi_yieldfrom
    return out


def model_stack(gen: GeneratorType) -> list[str]:  # type: ignore[type-arg]
    return [f.f_code.co_name for f in _frames(gen)
            if f.f_code not in PRIMITIVE_CODE and f.f_code not in INLINE_CODE]


def _closure(v: Any) -> object:
    return (v.__code__, *(_value(c.cell_contents) for c in v.__closure__ or ()))


def _cell(v: Any) -> object:
    try:
        return (CellType, _value(v.cell_contents))
    except ValueError:  # an empty cell
        return CellType


def _iterator(v: Any) -> object:
    _, (seq, *_), *position = v.__reduce__()
    return (type(v), tuple(seq), *position)


# How frame slots that are not plain values are fingerprinted: a closure (a wait
# condition) by its code and captures, an iterator by its sequence and position, a cell
# by its contents, a generator (the next frame of the chain, fingerprinted on its own)
# by a marker, the world (a local ``w = world()``) by a marker too: it is the one the
# thread runs in; never by identity, so a rebuilt thread fingerprints like the original,
# and a thread state fingerprints alike in every execution of the program.
_SPECIAL: dict[type, Any] = {
    FunctionType: _closure,
    CellType: _cell,
    GeneratorType: lambda v: GeneratorType,
    World: lambda v: World,
    **{type(it): _iterator for it in (iter(()), iter([]), iter(range(0)), iter(""))},
}


def _value(v: object) -> object:
    special = _SPECIAL.get(type(v))
    return v if special is None else special(v)


def _stack(g: Any) -> list[object]:
    """Everything the generator's frame holds, value stack included (a for-loop's
    iterator, the pending left operand of ``a + (yield from f())``), which ``f_locals``
    does not show: the frame's slots follow its function and code in gc's referents."""
    refs = gc.get_referents(g)
    code = g.gi_code
    for i in range(len(refs) - 1):
        if refs[i + 1] is code and type(refs[i]) is FunctionType:
            return refs[i + 2:]
    return refs


_SLOT_NAMES: dict[CodeType, tuple[str, ...]] = {}


def _slot_names(code: CodeType) -> tuple[str, ...]:
    """The names of a frame's local slots, in slot order (plain locals, then the cells
    that are not arguments, then the free variables)."""
    names = _SLOT_NAMES.get(code)
    if names is None:
        names = _SLOT_NAMES[code] = (*code.co_varnames,
                                     *(c for c in code.co_cellvars if c not in code.co_varnames),
                                     *code.co_freevars)
    return names


def thread_frames(gen: GeneratorType) -> tuple[tuple[Any, ...], ...]:  # type: ignore[type-arg]
    """Position (code, instruction offset), the names of the bound locals and the whole
    value stack of every frame of a thread: what a thread's fingerprint hashes, kept so
    that symmetry can rename it later. The names go in slot order, not in the order of
    ``f_locals``: that dict is kept with the frame and updated in place, so its order
    is the order in which its locals were first seen bound, which depends on when it
    was read (a generator rebuilt from its log is read at other points than the one it
    replaces), not on the state."""
    parts = []
    special = _SPECIAL.get
    g: Any = gen
    while isinstance(g, GeneratorType):
        f = g.gi_frame
        if f is None:
            break
        bound = f.f_locals
        # (_value, inlined: this runs for every slot of every frame at every step)
        parts.append((g.gi_code, f.f_lasti, *[n for n in _slot_names(g.gi_code) if n in bound],
                      *[v if (fp := special(type(v))) is None else fp(v) for v in _stack(g)]))
        g = g.gi_yieldfrom
    return tuple(parts)


class Execution:
    """A program being run under the engine's control."""

    def __init__(self, program: Program, *, tracing: bool = False, max_steps: int = 0,
                 memo: StepMemo | None = None) -> None:
        """``memo``: a step memo to share with the search's other executions of the
        program (by default each has its own, unless the program turns it off)."""
        self.program = program
        # Left movers run with the step before them (runtime.Op), unless the program
        # says otherwise (to compare with the unreduced system).
        self.movers: bool = getattr(program, "movers", True)
        self._mover_runner = self._run_mover if self.movers else None  # (bound once: every step)
        world, specs = program.build()
        self.world = world
        world.tracing = tracing
        world.thread_names = [s.name for s in specs]
        self.threads = [ThreadState(s) for s in specs]
        self.tids = [Tid(i) for i in range(len(specs))]
        self.fps = [DONE_FP] * len(self.threads)
        self.frames: list[tuple[tuple[Any, ...], ...]] = [()] * len(self.threads)
        self.frame_hashes: list[tuple[int, ...]] = [()] * len(self.threads)  # per frame
        self.max_steps = max_steps
        self.trace: list[TraceStep] = []
        self.depth = 0
        self.rebuilt = 0  # steps re-run to rebuild generators (a cost measure)
        self.check_from = 0  # see step()
        # Worlds (World.h) whose invariant check passed. Many steps change no shared
        # cell, and many states share a world; the check reads nothing else. (DPOR
        # learns which fields the check reads from its first run on a world: the same
        # cells, so the same fields, every time.)
        self._checked: set[int] = set()
        # Cells a left mover's effect wrote and cells the invariant read: they must not
        # meet (_run_mover), and either may be learned first.
        self._mover_writes: dict[tuple[int, str], str | None] = {}  # cell -> the mover's label
        self._invariant_reads: dict[tuple[int, str], str | None] = {}  # (values unused)
        self._unfused: tuple[tuple[Any, ...], ...] | None = None  # see _run_mover
        # Steps looked up instead of run (explore.memo), unless the program says
        # otherwise or the execution is traced (a trace shows what each step ran).
        self.memo = None if tracing or not getattr(program, "memo", True) else memo or StepMemo()
        # While a step is run for the memo: the left movers fused in it, each with the
        # memory at the mover, where its log of accesses stood, and what its effect
        # stored (as Mover.effect, wrote, label); and whether one was not fused because
        # it disabled a waiter.
        self._fused: list[tuple[dict[Key, Any], int, Writes, tuple[tuple[Key, int], ...], str]] | None = None
        self._mover_disabled = False
        # Per thread, generators that ran ahead of a restored state, by the fingerprint
        # of the thread state they stand in: a rebuild to a history that passes through
        # that state catches one up from there (a thread's state recurs in many
        # histories), instead of re-running the thread from its start.
        self._parked: list[dict[int, Any]] = [{} for _ in self.threads]
        # Renamings canonical() used, by the groups and the order their members are put
        # in: each with a small id, its rename function and maps (None: the identity).
        # The maps are the same object for the same renaming (DPOR relies on it).
        self._renamings: dict[object, tuple[int, Rename, Renaming] | None] = {}
        self._rename_ids = itertools.count()
        # Renamed thread fingerprints by (renaming id, the thread's own fingerprint):
        # few distinct thread states occur. (Keyed by hash, like the state cache.)
        self._thread_memo: dict[tuple[int, int], int] = {}
        # canonical's anonymising renaming of each group (its id and function), and the
        # cells of every group's members' own objects
        self._groups: dict[tuple[tuple[int, int], ...], tuple[int, Rename]] = {}
        self._member_cells: dict[int, list[tuple[int, str]]] = {}
        self._own_memo: dict[tuple[int, tuple[Any, ...]], int] = {}  # _member_orders' hashes
        # The renamed world's hash, a function of the world alone: by (renaming id, World.h)
        self._world_memo: dict[tuple[int, int], int] = {}
        self._delta_memo: dict[tuple[int, int, tuple[Any, ...]], int] = {}  # member_delta's
        self._canonical_memo: dict[int, tuple[int, Renaming | None]] = {}  # see canonical
        set_world(world)
        for tid in range(len(self.threads)):  # run each thread to its first point
            self._resume(tid, None)

    # -- stepping -------------------------------------------------------------------
    def _resume(self, tid: int, choice: int | None) -> None:
        t = self.threads[tid]
        w = self.world
        w.tid = self.tids[tid]
        w.log = t.log
        try:
            # (Frozen: restored with a snapshot, or replayed from the memo, the op must
            # still say what it said here, whatever its generator has done since.)
            t.pending = frozen(self._send(t, choice))
            PROGRESS.steps += 1
        except (StopIteration, StepAborted):
            self._end(t, tid)
        except Exception as exc:  # model code raised: a model error, never a crash
            self._end(t, tid)
            self._model_error(exc)
        else:
            try:
                frames = self._unfused
                if frames is None:
                    frames = thread_frames(t.gen)
                else:  # the generator ran past the mover it stopped at: rebuild it
                    self._unfused = None
                    t.pos = -1
                hashes = tuple(map(hash, frames))
                self.fps[tid] = hash(hashes)
                self.frames[tid] = frames
                self.frame_hashes[tid] = hashes
            except TypeError as exc:  # an unhashable local: the model must use values
                w.report("model-error", f"thread {t.name} holds an unhashable local: {exc}")
        finally:
            w.log = None
        if choice is not None and t.pos >= 0:
            t.pos += 1
        self._took(t, tid, choice)

    def _took(self, t: ThreadState, tid: int, choice: int | None) -> None:
        """Keep the thread's history: the branch it took (None: its run to its first
        point), and where its log and its fingerprint stand after it."""
        if choice is not None:
            t.choices.append(choice)
            t.steps += 1
        t.marks.append(len(t.log))
        t.fp_at.append(self.fps[tid])

    def _send(self, t: ThreadState, choice: int | None) -> Op:
        """Run the thread's code to its next scheduling point (a violation reported in
        it ends the step: ``World.report``). Left movers on the way are part of the
        step; a trace shows them after its action."""
        w = self.world
        w.stepping = True
        fused: list[str] | None = [] if w.tracing and self.trace else None
        try:
            return advance(t.gen, choice, self._mover_runner, fused)
        finally:
            w.stepping = False
            if fused:
                self.trace[-1].action = "; ".join((self.trace[-1].action, *fused))

    def _run_mover(self, gen: Any, op: Op) -> Op | None:
        """Run a left mover's effect (to its ``MOVED``) and the thread's code after it, to
        its next scheduling point, with the step before (docs/design.md, "Left movers").
        That code moves with the effect, so it must touch no shared memory (no read, no
        write, no violation): if it does, both are undone and None says the mover is a
        scheduling point of its own here. (Whether it does depends only on the thread's
        own state, so a replay decides alike.) What the effect writes is kept: the
        invariant must not read it, for the states skipped differ in it."""
        w = self.world
        log, accesses, notes = w.log, w.accesses, w.notes
        assert log is not None
        undo = w.snapshot(), len(log), len(accesses) if accesses is not None else 0, len(notes)
        log.append(MOVED)  # marks a fused mover in the log, for a rebuild (_rebuild)
        frames = thread_frames(gen)  # the thread's state if the mover is not run now
        waiting = self._guards_holding(w.tid)
        effect: list[tuple[tuple[int, str], int]] = []
        w.accesses = effect
        try:
            nxt = gen.send(0)
        finally:
            w.accesses = accesses
            if accesses is not None:
                accesses += effect
        if nxt is not MOVED:
            w.report("model-error", f"{op.label()} is declared a left mover but does not yield MOVED")
        # A release only enables: a thread waiting for the lock to be *held* would lose
        # its chance to run before it.
        disables = bool(waiting - self._guards_holding(w.tid))
        self._mover_disabled |= disables
        mark = len(log), w.h
        try:
            nxt = gen.send(0)
        except Exception:  # StopIteration: the thread's end must not move left with it
            pass           # (it ends the execution, if it is the last, and so disables the
                           # daemons); a violation or an error: it touched something
        else:
            if (len(log), w.h) == mark and not disables:
                self._learn(effect, (WRITE, MEMBER_WRITE), op.label())
                if self._fused is not None:  # (for the memo)
                    cells = w.cells
                    wrote = tuple((key, kind) for key, kind in effect if kind in (WRITE, MEMBER_WRITE))
                    stored = tuple((key, cells[key]) for key, _ in wrote if key in cells)
                    self._fused.append((undo[0][0], undo[2], stored, wrote, op.label()))
                return nxt  # type: ignore[no-any-return]
        world, n_log, n_accesses, n_notes = undo
        w.restore(world)
        del log[n_log:], notes[n_notes:]
        if accesses is not None:
            del accesses[n_accesses:]
        self._unfused = frames
        return None

    def _guards_holding(self, me: int) -> set[int]:
        """The threads but ``me`` blocked on a guard that holds now (read unlogged: this
        is the engine looking, not the stepping thread)."""
        w = self.world
        log, accesses = w.log, w.accesses
        w.log = w.accesses = None
        try:
            return {tid for tid, t in enumerate(self.threads)
                    if tid != me and t.pending is not None and t.pending.guard is not None
                    and self.guard_holds(t.pending.guard)}
        finally:
            w.log, w.accesses = log, accesses

    def _learn(self, accesses: Sequence[tuple[tuple[int, str], int]], kinds: tuple[int, int],
               mover: str | None) -> None:
        """Keep the cells a fused mover's effect wrote (``mover``: its label) or the
        invariant read (None), and report where the two meet: the states the mover skips
        differ from the visited ones in those cells, and the invariant would miss them."""
        mine, theirs = ((self._mover_writes, self._invariant_reads) if mover is not None
                        else (self._invariant_reads, self._mover_writes))
        for key, kind in accesses:
            if kind in kinds and key[0] >= 0 and key not in mine:
                mine[key] = mover
                if key in theirs:
                    w = self.world
                    w.report("model-error", f"the invariant reads {w.name_of(key[0])}.{key[1]}, "
                             f"which {self._mover_writes[key]} writes: running it as a left mover "
                             "skips states the invariant must see (run with --movers off)")

    def _end(self, t: ThreadState, tid: int) -> None:
        t.pending = None
        t.alive = False
        self.fps[tid] = DONE_FP
        self.frames[tid] = ()
        self.frame_hashes[tid] = ()

    def _model_error(self, exc: Exception) -> None:
        tb = traceback.extract_tb(exc.__traceback__)
        where = next((fr.name for fr in reversed(tb) if "tdpmmu/explore" not in fr.filename), "?")
        if self.world.violation is None:
            self.world.violation = Violation(
                "model-error", f"{type(exc).__name__}: {exc}", function=where,
                details="".join(traceback.format_exception(exc)),
            )

    PARKED = 32  # generators parked per thread, at most

    def _park(self, tid: int) -> None:
        """Put aside the generator of a thread that ran ahead (see ``_parked``)."""
        t = self.threads[tid]
        parked = self._parked[tid]
        if len(parked) >= self.PARKED:
            del parked[next(iter(parked))]
        parked[t.fp_at[t.pos]] = t.gen
        t.pos = -1

    def _rebuild(self, tid: int) -> None:
        """Bring a thread's generator to its current step from its own log: from where
        it stands if it is behind (memo hits), else from the latest state of its history
        a parked generator stands in, else from the start."""
        t = self.threads[tid]
        n = t.steps
        behind = 0 <= t.pos <= n
        if not behind:
            parked = self._parked[tid]
            for k in range(n, -1, -1):
                gen = parked.pop(t.fp_at[k], None)
                if gen is not None:
                    t.gen, t.pos, behind = gen, k, True
                    break
        start = t.pos if behind else 0
        offset = t.marks[start] if behind else 0
        replay = ReplayWorld(t.log[offset:], self.tids[tid], self.world.thread_names)
        set_world(replay)
        step_end = [t.marks[0]]  # where the log of the step being rebuilt ends (from offset)

        def replay_mover(gen: Any, op: Op) -> Op | None:
            # The mover ran with its step iff that step's log goes on (with the mark
            # _run_mover leaves, then the effect's reads).
            if replay.position >= step_end[0]:
                return None
            replay.get(NEXT_OID)  # the mark
            gen.send(0)
            return gen.send(0)  # type: ignore[no-any-return]
        run_mover = replay_mover if self.movers else None
        try:
            if behind:
                gen = t.gen
            else:
                gen = t.spec.start()
                advance(gen, None, run_mover)
            for c, end in zip(t.choices[start:n], t.marks[start + 1:], strict=False):
                step_end[0] = end - offset
                advance(gen, c, run_mover)
        finally:
            set_world(self.world)
        t.gen = gen
        t.pos = n
        self.rebuilt += n - start

    def step(self, tr: Transition) -> Violation | None:
        """Run one scheduling step. Returns the violation it caused, if any."""
        tid, choice = tr
        t = self.threads[tid]
        w = self.world
        set_world(w)
        memo = self.memo
        known = memo.lookup(tid, self.fps[tid], choice, w.cells) if memo is not None else None
        if known is not None and (not known.movers or self._replayable(tid, known)):
            self._replay(tid, choice, known)
        else:
            if t.pos != t.steps:
                self._rebuild(tid)
            if w.tracing:
                assert t.pending is not None
                stack = model_stack(t.gen)
                record = TraceStep(
                    self.depth, tid, t.name, stack[-1] if stack else t.name, stack,
                    t.pending.label() + (f" [branch {choice}]" if t.pending.choices > 1 else ""),
                )
                w.notes = record.notes
                self.trace.append(record)
            if memo is None:
                self._resume(tid, choice)
            else:
                self._run_and_keep(tid, choice, memo)
        self.depth += 1
        v = w.violation
        if v is None and self.max_steps and t.steps > self.max_steps:
            w.report("livelock", f"{t.name} took more than {self.max_steps} steps: unbounded retry?")
            v = w.violation
        if v is None:
            # Where the invariant's reads start in the step's access log (DPOR tells
            # the step's own accesses from the check's).
            self.check_from = len(w.accesses) if w.accesses is not None else 0
            if w.h not in self._checked:  # (a world that passed passes again)
                self._check_state()
                v = w.violation
                if v is None:
                    self._checked.add(w.h)
        if v is not None:
            if not v.thread:
                v.thread = t.name
            if not v.function:
                if t.alive and t.pos != t.steps:  # it ran past a release it stopped at
                    self._rebuild(tid)
                stack = model_stack(t.gen) if t.alive else []
                v.function = stack[-1] if stack else (self.trace[-1].function if self.trace else "")
        return v

    # -- the step memo (explore.memo) -------------------------------------------------
    def _run_and_keep(self, tid: int, choice: int, memo: StepMemo) -> None:
        """Run a step and keep what it did in the memo, if replaying it would be exact."""
        w, t = self.world, self.threads[tid]
        fp, before, h, n_log = self.fps[tid], w.cells.copy(), w.h, len(t.log)
        outer = w.accesses
        accesses = outer if outer is not None else []
        start = len(accesses)
        w.accesses = accesses
        names: list[tuple[int, object]] = []
        w.names_log = names
        fused: list[tuple[dict[Key, Any], int, Writes, tuple[tuple[Key, int], ...], str]] = []
        self._fused, self._mover_disabled = fused, False
        try:
            self._resume(tid, choice)
        finally:
            w.accesses = outer
            w.names_log = self._fused = None
        if w.violation is not None or self._mover_disabled:
            return
        step_accesses = tuple(accesses[start:])
        reads = {}  # every cell it accessed, first access first, with its value before
        for key, _ in step_accesses:
            if key not in reads:
                reads[key] = before.get(key, MISSING)
        cells = w.cells
        writes = []
        for key, old in reads.items():
            new = cells.get(key, MISSING)
            if new is not MISSING and new != old:
                writes.append((key, new))
                if old is not MISSING:
                    h ^= hash((key, old))
                h ^= hash((key, new))
        if h != w.h:
            return  # it changed a cell it did not access: no replay could know that
        undo: Writes = ()
        movers = []
        if fused:
            # What _replayable puts back: every cell the step stored to, even one stored
            # back to its old value later (its check replays the stores before a mover).
            written = dict.fromkeys(key for key, kind in step_accesses if kind in (WRITE, MEMBER_WRITE))
            undo = tuple((key, reads[key]) for key in written if key in cells or key in before)
            if any(old is MISSING for _, old in undo):
                return  # (an undo could not remove the cells it made)
            for mid, at, effect, wrote, label in fused:
                touched = dict.fromkeys(key for key, _ in accesses[start:at])
                movers.append(Mover(tuple((key, mid[key]) for key in touched
                                          if key in mid and mid[key] != before.get(key, MISSING)),
                                    effect, wrote, label))
        freed = tuple(key[0] for key, v in writes if key[1] == LIVE and v is False)
        memo.store(tid, fp, choice, tuple(reads.items()), Step(
            tuple(writes), freed, tuple(names), step_accesses, tuple(t.log[n_log:]), t.pending,
            self.frames[tid], self.frame_hashes[tid], self.fps[tid], tuple(movers), undo))

    def _replayable(self, tid: int, step: Step) -> bool:
        """Whether each left mover fused in ``step`` would be fused again here: the step
        is replayed up to each mover, whose effect must disable no waiter, as when it
        ran (``_run_mover``; all else it decided depends on the thread alone). If one
        would, the memory is put back and the step must run."""
        w = self.world
        for mover in step.movers:
            w.apply(mover.before, ())
            waiting = self._guards_holding(tid)
            w.apply(mover.effect, ())
            if waiting - self._guards_holding(tid):
                w.apply(step.undo, ())
                return False
        for mover in step.movers:  # (the memo may have it from another execution)
            self._learn(mover.wrote, (WRITE, MEMBER_WRITE), mover.label)
        return True

    def _replay(self, tid: int, choice: int, step: Step) -> None:
        """Do what ``step`` did, without running the thread (its generator falls behind)."""
        w, t = self.world, self.threads[tid]
        w.tid = self.tids[tid]
        w.apply(step.writes, step.freed)
        for oid, name in step.names:
            w.set_name(oid, name)
        if w.accesses is not None:
            w.accesses += step.accesses
        t.log += step.log
        if step.pending is None:
            self._end(t, tid)
        else:
            t.pending = step.pending
            self.frames[tid] = step.frames
            self.frame_hashes[tid] = step.hashes
            self.fps[tid] = step.fp
        PROGRESS.steps += 1
        self._took(t, tid, choice)
        self.memo.hits += 1  # type: ignore[union-attr]

    def _check_state(self) -> None:
        """The program's invariant; with movers, what it reads is kept (``_run_mover``)."""
        w = self.world
        outer = w.accesses
        if self.movers and outer is None:  # (DPOR logs them anyway, from check_from)
            w.accesses = []
        start = self.check_from if outer is not None else 0
        try:
            self.program.check_state(w)
        except Exception as exc:  # a broken invariant check is a model error too
            self._model_error(exc)
        finally:
            reads, w.accesses = w.accesses, outer
            if self.movers and reads is not None:
                self._learn(reads[start:], (READ, MEMBER_READ), None)

    # -- observing ------------------------------------------------------------------
    def finished(self) -> bool:
        return not any(t.alive and not t.daemon for t in self.threads)

    def enabled(self) -> list[Transition]:
        """Every transition that can run now. Empty once all non-daemon threads are done."""
        if self.finished():
            return []
        set_world(self.world)
        out = []
        for tid, t in enumerate(self.threads):
            op = t.pending
            if op is None:
                continue
            g = op.guard
            if g is None or self.guard_holds(g):
                if op.choices == 1:
                    out.append((tid, 0))
                else:
                    out.extend((tid, c) for c in range(op.choices))
        return [] if self.world.violation is not None else out  # (a guard's error ends it)

    def guard_holds(self, guard: Callable[[], bool]) -> bool:
        """Evaluate a thread's guard (model code): an exception in it is a model error,
        which ends the execution (``enabled`` then offers nothing)."""
        try:
            return guard()
        except Exception as exc:
            self._model_error(exc)
            return False

    def why_not(self, tid: int, choice: int) -> str:
        """Why thread ``tid`` cannot take branch ``choice`` now (for a user's schedule)."""
        names = ", ".join(f"{i}={t.name}" for i, t in enumerate(self.threads))
        if not 0 <= tid < len(self.threads):
            return f"there is no thread {tid} (threads: {names})"
        t = self.threads[tid]
        op = t.pending
        if not t.alive or op is None:
            return f"thread {tid} ({t.name}) has finished"
        if choice >= op.choices:
            return f"{t.name}'s next step, {op.label()}, has {op.choices} branch(es), not {choice + 1}"
        if self.finished():
            return "every thread but the daemons has finished: the execution is over"
        return f"{t.name} is blocked in {op.label()}"

    def fingerprint(self) -> int:
        return hash((self.world.h, *self.fps))

    def canonical_fingerprint(self) -> int:
        """The fingerprint of this state with symmetric threads renamed into a canonical
        order (see ``symmetry``); equal to ``fingerprint()`` when nothing moves."""
        return self.canonical()[0]

    CANONICAL_MEMO = 2_000_000  # states whose canonical form is remembered, at most
    MAX_ORDERS = 24  # orders of tied members tried for one canonical form, at most (4!)

    def canonical(self) -> tuple[int, Renaming | None]:
        """``canonical_fingerprint()`` and the renaming that takes this state to the
        canonical one: thread ids and object ids, old to new (None when nothing moves).
        Remembered by the state's own fingerprint: a search reaches most states again
        (every cache hit), and working it out is most of a plain search's time."""
        fp = self.fingerprint()
        memo = self._canonical_memo
        known = memo.get(fp)
        if known is None:
            if len(memo) >= self.CANONICAL_MEMO:
                memo.clear()
            known = memo[fp] = self._canonical(fp)
        return known

    def _canonical(self, fp: int) -> tuple[int, Renaming | None]:
        symmetry = getattr(self.program, "symmetry", None)
        groups = symmetry(self.world) if symmetry is not None else None
        if not groups:
            return fp, None
        set_world(self.world)
        groups = tuple(map(tuple, groups))
        # Per group, the assignments of members to its slots that order them by what
        # they are (`_member_orders`); the least fingerprint over every combination is
        # the canonical one, so that a state and any permutation of it agree.
        best: tuple[int, Renaming | None] | None = None
        orders = [self._member_orders(group, self._anonymiser(group)) for group in groups]
        if math.prod(map(len, orders)) > self.MAX_ORDERS or not all(orders):
            # Too many ties to try every order (5 or more vCPUs alike, as at the start):
            # this state is not reduced. Sound: it only keeps apart permuted states.
            return fp, None
        for combination in itertools.product(*orders):
            renaming = self._renaming_to(groups, combination)
            candidate = (fp, None) if renaming is None else self._renamed_fingerprint(*renaming)
            if best is None or candidate[0] < best[0]:
                best = candidate
        assert best is not None
        return best

    def _renaming_to(self, groups: tuple[tuple[tuple[int, int], ...], ...],
                     orders: tuple[tuple[tuple[int, int], ...], ...]) -> tuple[int, Rename, Renaming] | None:
        """The renaming that puts each group's members in ``orders`` in its slots (its
        id, rename function and maps), None if that is the identity; made once."""
        key = groups, orders
        known = self._renamings.get(key)
        if known is None:
            tid_map: dict[int, Tid] = {}
            oid_map: dict[int, int] = {}
            for group, order in zip(groups, orders, strict=True):
                for (slot_t, slot_o), (t, o) in zip(group, order, strict=True):
                    tid_map[t] = self.tids[slot_t]
                    oid_map[o] = slot_o
            if all(tid_map[t] == t for t in tid_map):
                known = self._renamings[key] = None
            else:
                known = self._renamings[key] = (next(self._rename_ids), make_rename(tid_map, oid_map),
                                                (tid_map, oid_map))
        return known

    def _anonymiser(self, group: Sequence[tuple[int, int]]) -> tuple[int, Rename]:
        """The renaming of every member of ``group`` to one placeholder (its id and
        function). The first time a group is met, its members' cells are listed: an
        object's cells are all made when it is allocated (kzalloc), and the members'
        objects exist before any thread runs."""
        key = tuple(group)
        known = self._groups.get(key)
        if known is None:
            for _, o in group:
                self._member_cells[o] = [k for k in self.world.cells if k[0] == o and k[1] != NAME]
            known = self._groups[key] = (next(self._rename_ids), make_rename(
                {t: Tid(-1) for t, _ in group}, {o: 0 for _, o in group}))
        return known

    def _member_orders(self, group: Sequence[tuple[int, int]],
                       anon: tuple[int, Rename]) -> list[tuple[tuple[int, int], ...]]:
        """The members of ``group`` sorted by what they are, not who they are (every
        member renamed to one placeholder by ``anon``, then its thread and its own
        cells hashed); where members tie, each order of them (a tie breaks no symmetry,
        so any of them may be the canonical one). (Any key that does not depend on
        names would do: ties are broken by trying each order, so the key only decides
        how many orders are tried.)"""
        anon_id, rename = anon
        memo = self._own_memo
        cells = self.world.cells
        keyed = []
        for t, o in group:
            # A member's own cells, anonymised and hashed, remembered by their values
            # (few vCPU steps change them).
            key = anon_id, tuple([cells[k] for k in self._member_cells[o]])
            h = memo.get(key)
            if h is None:
                h = memo[key] = hash(tuple(map(rename, key[1])))
            keyed.append(((self._thread_hash(t, anon_id, rename), h), t, o))
        keyed.sort()
        if all(keyed[i][0] != keyed[i + 1][0] for i in range(len(keyed) - 1)):
            return [tuple([(t, o) for _, t, o in keyed])]  # (no ties: one order)
        runs = [[(t, o) for _, t, o in run] for _, run in itertools.groupby(keyed, key=lambda k: k[0])]
        if math.prod(math.factorial(len(run)) for run in runs) > self.MAX_ORDERS:
            return []  # (too many to try: the state is left as it is, see _canonical)
        return [tuple([m for perm in perms for m in perm])
                for perms in itertools.product(*(itertools.permutations(run) for run in runs))]

    def _renamed_fingerprint(self, rename_id: int, rename: Rename,
                             renaming: Renaming) -> tuple[int, Renaming]:
        tid_map, oid_map = renaming
        fps = list(self.fps)
        for tid, t in enumerate(self.threads):
            fps[tid_map.get(tid, tid)] = self._thread_hash(tid, rename_id, rename) if t.alive else DONE_FP
        return hash((self._renamed_world_hash(oid_map, rename_id, rename), *fps)), renaming

    def _renamed_world_hash(self, oid_map: dict[int, int], rename_id: int, rename: Rename) -> int:
        """``World.h`` of the renamed world, from ``World.h`` (names are not state): the
        members' own cells move, and cells elsewhere that name a member are renamed.
        A function of the world, so remembered by its hash (many states share one)."""
        w = self.world
        memo = self._world_memo
        key = rename_id, w.h
        h = memo.get(key)
        if h is None:
            if len(memo) >= self.CANONICAL_MEMO:
                memo.clear()
            h = w.h ^ naming_delta(w, oid_map, rename)
            cells = w.cells
            deltas = self._delta_memo  # (by the member's values: few vCPU steps change them)
            for o, keys in self._member_cells.items():
                values = tuple([cells[k] for k in keys])
                d = deltas.get((rename_id, o, values))
                if d is None:
                    d = deltas[(rename_id, o, values)] = member_delta(keys, values, oid_map, rename)
                h ^= d
            memo[key] = h
        return h

    def _thread_hash(self, tid: int, rename_id: int, rename: Rename) -> int:
        """A thread's fingerprint with every frame renamed (``frame_hash``), remembered
        by its own fingerprint: few distinct thread states occur at all."""
        key = rename_id, self.fps[tid]
        h = self._thread_memo.get(key)
        if h is None:
            h = self._thread_memo[key] = hash(tuple([frame_hash(f, rename) for f in self.frames[tid]]))
        return h

    def outcome(self) -> Violation | None:
        """What an execution in which nothing can run ends in: the model error that
        left nothing enabled (a guard that raised), a deadlock, or what the
        end-of-execution check says."""
        if self.world.violation is not None:
            return self.world.violation
        return self.deadlock() if not self.finished() else self.finish()

    def deadlock(self) -> Violation:
        blocked = [f"{t.name} waits in {t.pending.label()}" for t in self.threads
                   if t.alive and not t.daemon and t.pending is not None]
        return Violation("deadlock", "every live thread is blocked: " + "; ".join(blocked))

    def finish(self) -> Violation | None:
        """End-of-execution checks (leaks, teardown invariants)."""
        set_world(self.world)
        try:
            self.program.check_final(self.world)
        except Exception as exc:
            self._model_error(exc)
        return self.world.violation

    # -- restoring ------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return Snapshot(
            self.world.snapshot(),
            [(t.steps, t.alive, t.pending, self.fps[i], self.frames[i], self.frame_hashes[i])
             for i, t in enumerate(self.threads)],
            self.depth,
        )

    def restore(self, snap: Snapshot) -> None:
        """Go back to an *ancestor* of the current state (depth-first backtracking):
        every thread's history is then a prefix of what it has logged."""
        self.world.restore(snap.world)
        for tid, (steps, alive, pending, fp, frames, hashes) in enumerate(snap.threads):
            t = self.threads[tid]
            t.steps, t.alive, t.pending = steps, alive, pending
            if t.pos > steps:  # ran ahead: kept for a state of the thread it is in
                self._park(tid)
            self.fps[tid] = fp
            self.frames[tid] = frames
            self.frame_hashes[tid] = hashes
            del t.log[t.marks[steps]:]
            del t.marks[steps + 1:]
            del t.fp_at[steps + 1:]
            del t.choices[steps:]
        self.depth = snap.depth

    @classmethod
    def replay(
        cls, program: Program, schedule: Schedule, *, tracing: bool = False, max_steps: int = 0
    ) -> Execution:
        """Run ``schedule`` from the initial state (counterexamples, ``tdpmmu replay``)."""
        ex = cls(program, tracing=tracing, max_steps=max_steps)
        for tr in schedule:
            ex.step(tr)
        return ex


def replay_checked(
    program: Program, schedule: Schedule, max_steps: int = 0
) -> tuple[Execution, Violation | None]:
    """Re-run a user-supplied schedule with tracing, refusing steps that are not enabled.

    Returns the execution and the violation it reached (a deadlock or end-of-execution
    check included when the schedule runs to the end)."""
    ex = Execution(program, tracing=True, max_steps=max_steps)
    for i, tr in enumerate(schedule):
        if tr not in ex.enabled():
            when = f"after the {i} before it" if i else "first"
            raise ValueError(f"step {i + 1} ({tr[0]}:{tr[1]}) cannot run {when}: {ex.why_not(*tr)}")
        v = ex.step(tr)
        if v is not None:
            return ex, v
    if not ex.enabled():
        return ex, ex.outcome()
    return ex, None


# Where the engine runs model code: a thread's steps (and their rebuilds), the program's
# build, guards, invariant and final check (the watchdog's domain).
MODEL_ENTRIES.update(f.__code__ for f in (
    advance, Execution.__init__, Execution.guard_holds, Execution._check_state, Execution.finish))
