"""Step memo: a thread's step, once run, is looked up instead of run again.

A thread is a deterministic function of its own state and of the cells it reads (the
premise of its input log, ``runtime.World``). So what a step does is fixed by the
thread's fingerprint, the branch taken and the values of the cells it accesses: the
first cell it touches is fixed by the thread's state, the next by that cell's value,
and so on. The memo keeps, per (thread, fingerprint, branch), a trie over those cells:
each inner node names the next cell the step accessed and branches on its value, and a
leaf holds what the step did: the cells it changed, the reads it logged, its accesses
(for partial-order reduction), and the thread's next scheduling point and frames.

A search visits the same thread state against the same few cells over and over (every
interleaving of the other threads around it), so most steps become a trie walk and a
few stores: the model's Python code runs once per distinct step, as if the model had
been compiled into a state machine as the search went. The thread's generator is not
advanced by a memo hit; it falls behind and catches up from its log when a step misses
(``Execution._rebuild``).

A step is kept only if replaying it is exact: it reported no violation, and every
change it made to memory is in a cell it accessed. Display names, which are not state,
are replayed as they were set (one that depends on history, "the n-th root", is a
``runtime.Numbered``, worked out when shown). A left mover fused into the step was
fused because its release disabled no waiting thread, which depends on the other
threads: a replay checks that again (``Execution._replayable``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import CellType, FunctionType
from typing import Any

from tdpmmu.explore.runtime import Key, Op

MISSING = object()  # the value of a cell that does not exist
Writes = tuple[tuple[Key, Any], ...]


class Mover:
    """A left mover fused into a kept step (``Execution._run_mover``)."""

    __slots__ = ("before", "effect", "label", "wrote")

    def __init__(self, before: Writes, effect: Writes, wrote: tuple[tuple[Key, int], ...],
                 label: str) -> None:
        self.before = before  # what the step had stored when the mover ran
        self.effect = effect  # what the mover's effect stored
        self.wrote = wrote  # its effect's write accesses (for Execution._learn)
        self.label = label


class Step:
    """What one step did, for replaying it (see the module doc)."""

    __slots__ = ("accesses", "fp", "frames", "freed", "hashes", "log", "movers", "names", "pending",
                 "undo", "writes")

    def __init__(self, writes: Writes, freed: tuple[int, ...], names: tuple[tuple[int, object], ...],
                 accesses: tuple[tuple[Key, int], ...], log: tuple[Any, ...], pending: Op | None,
                 frames: tuple[tuple[Any, ...], ...], hashes: tuple[int, ...], fp: int,
                 movers: tuple[Mover, ...], undo: Writes) -> None:
        self.writes = writes  # (cell, new value) for every cell it changed
        self.freed = freed  # objects it freed
        self.names = names  # display names it set (World.set_name): not cells, not state
        self.accesses = accesses  # its World.accesses entries
        self.log = log  # the values it appended to the thread's input log
        self.pending = pending  # the thread's next scheduling point (None: it ended)
        self.frames = frames
        self.hashes = hashes
        self.fp = fp  # the thread's fingerprint after it
        # The left movers fused in the step. A replay checks that each effect disables
        # no waiter, as when the step ran (Execution._replayable), else puts back the
        # old value of every cell the step stored to (undo; empty without movers).
        self.movers = movers
        self.undo = undo


class _Node:
    """An inner trie node: the next cell the step accessed, and a child per value."""

    __slots__ = ("children", "key")

    def __init__(self, key: Key) -> None:
        self.key = key
        self.children: dict[Any, _Node | Step] = {}


class StepMemo:
    def __init__(self) -> None:
        self._roots: dict[tuple[int, int, int], _Node | Step] = {}
        self.hits = 0
        self.stored = 0

    def lookup(self, tid: int, fp: int, choice: int, cells: Mapping[Key, Any]) -> Step | None:
        node = self._roots.get((tid, fp, choice))
        while type(node) is _Node:
            node = node.children.get(cells.get(node.key, MISSING))
        return node  # type: ignore[return-value]

    def store(self, tid: int, fp: int, choice: int, reads: Sequence[tuple[Key, Any]], step: Step) -> None:
        """Keep ``step``, reached from the thread state ``fp`` with ``reads`` (each cell
        the step accessed, in order of first access, with its value before the step)."""
        owner: dict[Any, _Node | Step] = self._roots  # type: ignore[assignment]
        slot: Any = (tid, fp, choice)
        node = owner.get(slot)
        for key, value in reads:
            if node is None:
                node = owner[slot] = _Node(key)
            elif type(node) is not _Node or node.key != key:
                return  # the same state read differently: a fingerprint collision; keep nothing
            owner, slot = node.children, value
            node = owner.get(slot)
        if node is None:
            owner[slot] = step
            self.stored += 1


def frozen(op: Op) -> Op:
    """``op`` with its guard's closure copied: a guard reads variables of the frame that
    made it, which its generator may change after the op was yielded (a loop that waits
    on each of several things), while the op is kept with a snapshot or in the memo."""
    g = op.guard
    if g is None or not isinstance(g, FunctionType) or not g.__closure__:
        return op
    try:
        cells = tuple(CellType(c.cell_contents) for c in g.__closure__)
    except ValueError:  # a variable not bound yet: the guard would fail either way
        return op
    guard = FunctionType(g.__code__, g.__globals__, g.__name__, g.__defaults__, cells)
    return Op(op.name, *op.args, guard=guard, choices=op.choices, moves_left=op.moves_left)
