"""Dynamic partial-order reduction (DPOR) with sleep sets, stateless or with the cache.

Flanagan and Godefroid's DPOR (POPL 2005) with sleep sets, whose races are found when a
step runs and reversed by an initial of notdep.step, as source-DPOR does (Abdulla et
al., POPL 2014); blocked threads are raced by their guard (Flanagan-Godefroid's check
of a disabled transition). Why this combination, and the soundness argument, with and
without the cache: docs/design.md, "Partial-order reduction".

A step's footprint is what it read and wrote (``World.accesses``), as bit sets over
cells (numbered as cells are first met), plus what its guard read. A thread that ends
writes a pseudo-cell of its own, which every daemon step reads (the last thread's end
ends the execution, i.e. disables the daemons); a step that writes a field the
invariant check reads writes the "visible" pseudo-cell. Two steps of different threads
are dependent iff one writes a cell the other reads or writes.
"""

from __future__ import annotations

from collections.abc import Mapping

from tdpmmu.explore.execution import Execution, Schedule, Snapshot
from tdpmmu.explore.runtime import (
    LIVE,
    MEMBER_WRITE,
    READ,
    WRITE,
    Key,
    Tid,
    Violation,
    key_owner,
    member_key,
    rename_key,
    set_world,
)
from tdpmmu.explore.search.base import Search
from tdpmmu.explore.symmetry import Renaming

# (read, written, member-written) as bit sets. Every cell has two bits: `m`, read and
# written as a whole, and `e`, read when only a member of it is (World.get_member);
# a whole write sets both. A member write sets `u` on `m` (and writes the member's
# own cell): it conflicts with whole reads and writes, not with other member writes.
Footprint = tuple[int, int, int]
Clock = tuple[int, ...]  # vector clock: per thread, how many of its steps happen before

NO_CYCLE = INFINITY = 1 << 30


class _Restart(Exception):
    """The invariant check read a field no step was treated as visible for."""


class _Summary:
    """What a state's explored subtree did, for racing it against another path to the
    state when the cache skips it: per thread, the union of its steps' footprints, the
    cells its guards read where it was blocked (or, for a daemon, ended), and the
    threads whose next step (at the state) happens before *every* step of it in the
    subtree (as a bit mask): their earlier steps cannot race with it."""

    __slots__ = ("after", "guards", "steps")

    def __init__(self, nthreads: int) -> None:
        self.steps = [0] * (3 * nthreads)  # 3t..3t+2: thread t's footprint parts
        self.guards = [0] * nthreads
        self.after = [(1 << nthreads) - 1] * nthreads

    def merge(self, other: _Summary) -> None:
        """Add a successor's subtree (`after` is the node's business: see _Node.first)."""
        for k, v in enumerate(other.steps):
            if v:
                self.steps[k] |= v
        for k, v in enumerate(other.guards):
            if v:
                self.guards[k] |= v


# A fully explored state in the cache: the sleep set it was explored with, its
# subtree's summary, the threads explored from it.
_Entry = tuple[frozenset[int], "_Summary", frozenset[int]]
# As the cache holds it: in the names of the state that stored it, with the renaming
# that takes that state to the canonical one (see Dpor._recall).
_Cached = tuple[_Entry, "Renaming | None"]


class _Node:
    """A state on the current path and what DPOR knows about it."""

    __slots__ = ("backtrack", "choices", "cur", "cur_fp", "cycle", "enabled", "explored", "first", "fp",
                 "guards", "heads", "key", "renaming", "skip", "sleep", "sleep0", "snap", "summary", "tvc")

    def __init__(self, enabled: dict[int, int], guards: list[int], sleep: dict[int, Footprint],
                 tvc: tuple[Clock, ...], snap: Snapshot | None, fp: int, nthreads: int) -> None:
        self.enabled = enabled  # tid -> number of branches of its next step
        self.guards = guards  # tid -> cells its pending guard read (0: none)
        self.backtrack: set[int] = set()
        self.sleep = sleep  # threads not to run here, with their next step's footprint
        self.sleep0 = frozenset(sleep)  # the sleep set the state was reached with (cache)
        self.tvc = tvc  # each thread's vector clock after its last step on the path
        self.snap = snap
        self.fp = fp  # the state's fingerprint (cycles on the path are exact)
        self.key = fp  # its key in the cache: the canonical fingerprint, with symmetry
        self.renaming: Renaming | None = None  # what takes the state to its canonical one
        self.heads: list[int] = []  # tid -> the first cell its pending guard reads
        self.explored: set[int] = set()  # threads explored from here (for the cache)
        self.skip: frozenset[int] = frozenset()  # explored at an earlier visit (see _revisit)
        self.cur = -1  # thread being explored from here
        self.choices: list[int] = []  # its branches still to run
        self.cur_fp: Footprint = (0, 0, 0)  # union of the footprints of its branches so far
        # Cache only: the explored subtree's summary, and the shallowest path depth a
        # cycle in it returned to.
        self.summary = _Summary(nthreads)
        # first[t][q]: a lower bound, over t's steps in the subtree, of how many of q's
        # steps happen before it (vector clocks of this path), for `after` when it pops.
        self.first = [[INFINITY] * nthreads for _ in range(nthreads)]
        self.cycle = NO_CYCLE


def _conflict(r: int, w: int, u: int, r2: int, w2: int, u2: int) -> int:
    return w & (r2 | w2 | u2) | w2 & (r | u) | u & r2 | r & u2


def _independent(a: Footprint, b: Footprint) -> bool:
    return not _conflict(*a, *b)


def _compose(first: Mapping[int, int], then: Mapping[int, int]) -> dict[int, int]:
    """Renaming by ``first``, then by ``then`` (each the identity where it has no entry)."""
    out = {}
    for x in first.keys() | then.keys():
        y = first.get(x, x)
        out[x] = then.get(y, y)
    return out


def _uncovered(remaining: list[int], covered: list[int], skip: int) -> int:
    """How many threads other than ``skip`` still have a step, among their first
    ``remaining[q]``, that ``covered`` does not order before: the backward race scans
    stop when none is left."""
    return sum(1 for q, c in enumerate(remaining) if q != skip and covered[q] < c)


class Dpor(Search):
    """``cache=False``: stateless DPOR, every execution run to its end (always sound).
    ``cache=True``: a state seen before is not expanded again, if its explored subtree's
    accesses are raced against the current path and it was explored with a sleep set no
    larger than now (docs/design.md)."""

    def __init__(self, *args: object, cache: bool = True, symmetry: bool = False,
                 all_independent: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cache = cache
        # Cache states by canonical fingerprint; a hit's entry is renamed (docs/design.md).
        self.symmetry = symmetry and cache
        # Test-only: declare every pair of steps independent, an unsound reduction the
        # cross-check tests must catch.
        self.all_independent = all_independent
        self._bit: dict[Key, int] = {}
        self._keys: list[Key] = []  # cell of each bit pair
        # Symmetry: the interchangeable threads and their objects, the bits of the cells a
        # renaming can move (both bits of each), and each renaming's moves (bit pair index
        # -> new `m` bit).
        self._members: tuple[frozenset[int], frozenset[int]] = (frozenset(), frozenset())
        self._movable = 0
        self._moves: dict[object, dict[int, int]] = {}
        # The current path's steps: thread, footprint, vector clock.
        self._tid: list[int] = []
        self._r: list[int] = []
        self._w: list[int] = []
        self._u: list[int] = []
        # Per path step, for the race loops' quick rejections: every cell it touched
        # (r | w | u), and every cell it wrote (w | u).
        self._touched: list[int] = []
        self._wrote: list[int] = []
        self._everything: list[Footprint] = []  # union of the footprints of the path's steps so far
        self._vc: list[Clock] = []
        self._stack: list[_Node] = []
        self.sleep_blocked = 0  # executions cut because every enabled thread slept
        self._ends = 0  # the pseudo-cells of every non-daemon thread's end
        # Visibility (docs/design.md): fields the invariant check reads, the cells with
        # those fields met so far, and the pseudo-cell every visible step writes.
        self._vis_fields: set[str] = set()
        self._vis = 0
        self._vis_step = 0
        self.restarts = 0  # searches started again because the check read a new field
        self.revisits = 0  # states explored again: seen before, but with a smaller sleep set
        self._leaf_summary = _Summary(0)  # what the last state without successors raced

    # -- footprints -------------------------------------------------------------------
    def _bits(self, accesses: list[tuple[Key, int]]) -> Footprint:
        if self.all_independent:
            return 0, 0, 0
        bit = self._bit
        r = w = u = 0
        for key, kind in accesses:
            b = bit.get(key)
            if b is None:
                b = self._new_bit(key)
            if kind == READ:
                r |= b
            elif kind == WRITE:
                w |= b | b << 1
            elif kind == MEMBER_WRITE:
                u |= b
            else:
                r |= b << 1
        return r, w, u

    def _new_bit(self, key: Key) -> int:
        b = self._bit[key] = 1 << (2 * len(self._keys))
        self._keys.append(key)
        if key[1] in self._vis_fields:
            self._vis |= b
        tids, oids = self._members
        if key[0] in oids or key_owner(key) in tids:
            self._movable |= b | b << 1
        return b

    # -- symmetry -----------------------------------------------------------------------
    def _move(self, f: int, moves: dict[int, int], renaming: Renaming) -> int:
        """Footprint bits ``f`` with their cells renamed."""
        moving = f & self._movable
        if not moving:
            return f
        out = f ^ moving
        while moving:
            low = moving & -moving
            moving ^= low
            pair, half = divmod(low.bit_length() - 1, 2)
            b = moves.get(pair)
            if b is None:
                key = rename_key(self._keys[pair], *renaming)
                b = moves[pair] = self._bit.get(key) or self._new_bit(key)
            out |= b << half
        return out

    def _renamed(self, entry: _Entry, renaming: Renaming) -> _Entry:
        """A cache entry with its threads and cells renamed."""
        tids, oids = renaming
        moves = self._moves.setdefault((tuple(sorted(tids.items())), tuple(sorted(oids.items()))), {})
        asleep, summary, explored = entry
        n = len(summary.guards)
        perm = [int(tids.get(t, t)) for t in range(n)]
        out = _Summary(n)
        for t, p in enumerate(perm):
            for k in range(3):
                out.steps[3 * p + k] = self._move(summary.steps[3 * t + k], moves, renaming)
            out.guards[p] = self._move(summary.guards[t], moves, renaming)
            out.after[p] = sum(1 << perm[q] for q in range(n) if summary.after[t] >> q & 1)
        return frozenset(perm[t] for t in asleep), out, frozenset(perm[t] for t in explored)

    def _recall(self, cached: _Cached, renaming: Renaming | None) -> _Entry:
        """A cache entry in the names of the state at hand (``renaming`` takes it to the
        canonical state). Entries are kept in the names of the state that stored them,
        with its renaming: most hits need none (the same names), the rest one."""
        entry, stored = cached
        if stored is renaming:  # (renamings are interned: Execution.canonical)
            return entry
        s_tids, s_oids = stored or ({}, {})
        c_tids, c_oids = renaming or ({}, {})
        # stored names -> canonical -> current names
        tids = _compose(s_tids, {int(c): t for t, c in c_tids.items()})
        oids = _compose(s_oids, {c: o for o, c in c_oids.items()})
        if all(t == n for t, n in tids.items()) and all(o == n for o, n in oids.items()):
            return entry
        return self._renamed(entry, ({t: Tid(n) for t, n in tids.items()}, oids))

    def _scan(self, ex: Execution) -> tuple[dict[int, int], list[int], list[int]]:
        """Enabled threads and, for every thread with a pending step, the cells its
        guard reads (a daemon's also reads every non-daemon thread's end), and the
        first of them, which it reads whatever the values (its head)."""
        w = ex.world
        set_world(w)
        enabled: dict[int, int] = {}
        guards = [0] * len(ex.threads)
        heads = [0] * len(ex.threads)
        for tid, t in enumerate(ex.threads):
            op = t.pending
            if op is None:
                continue
            g = op.guard
            if g is None:
                ok = True
            else:
                acc: list[tuple[Key, int]] = []
                w.accesses = acc
                try:
                    ok = ex.guard_holds(g)
                finally:
                    w.accesses = None
                if w.violation is not None:  # (its model error ends the execution)
                    return {}, guards, heads
                guards[tid] = self._bits(acc)[0]
                first = next((a for a in acc if a[0][1] != LIVE), None)
                heads[tid] = self._bits([first])[0] if first is not None else 0
            if t.daemon:
                guards[tid] |= self._ends
                heads[tid] |= self._ends
            if ok:
                enabled[tid] = op.choices
        return enabled, guards, heads

    # -- races --------------------------------------------------------------------------
    def _firsts(self, i: int) -> dict[int, Clock]:
        """notdep(i): the path's steps after step ``i`` that do not happen after it;
        returns each thread's first one among them (its vector clock)."""
        tids, vcs = self._tid, self._vc
        qi = tids[i]
        li = vcs[i][qi]
        firsts: dict[int, Clock] = {}
        for j in range(i + 1, len(tids)):
            vj = vcs[j]
            if vj[qi] < li and tids[j] not in firsts:
                firsts[tids[j]] = vj
        return firsts

    @staticmethod
    def _initials(firsts: dict[int, Clock]) -> list[int]:
        """Threads whose first step in the sequence nothing earlier in it happens before."""
        return [q for q, vq in firsts.items()
                if all(vq[r] < vr[r] for r, vr in firsts.items() if r != q)]

    def _reverse(self, i: int, p: int, vc: Clock | None = None, *, known: bool = True) -> None:
        """Reverse the race of path step ``i`` with a later step of ``p``: the state
        before step ``i`` must explore an initial of notdep(i).step (source-DPOR). The
        path's part of notdep comes first, so its initials are initials of the whole;
        if it is empty, the step (clock ``vc``) is the only initial when ``known``
        (else the subtree's unknown steps could start it: every enabled thread)."""
        node = self._stack[i]
        if len(node.backtrack) == len(node.enabled):
            return  # already every enabled thread (backtrack sets hold enabled threads only)
        firsts = self._firsts(i)
        if vc is not None:
            firsts.setdefault(p, vc)
        if not firsts:
            if known and p in node.enabled:
                node.backtrack.add(p)
            else:  # Flanagan-Godefroid's fallback
                node.backtrack.update(node.enabled)
            return
        initials = self._initials(firsts)
        if any(q in node.backtrack for q in initials):
            return
        q = p if p in initials else next((q for q in initials if q not in node.sleep), initials[0])
        if q in node.enabled:
            node.backtrack.add(q)
        else:  # cannot happen when guards are in the footprints; stay safe
            node.backtrack.update(node.enabled)

    def _step_races(self, p: int, r: int, w: int, u: int, tvc: tuple[Clock, ...]) -> Clock:
        """Race check of a step of ``p`` just taken after the path's steps (``tvc``:
        each thread's clock after its last one): every earlier step of another thread
        that it depends on and that is ordered before it by nothing else (source-DPOR's
        race) is reversed: the state before that step explores an initial of
        notdep.step (Abdulla et al. 2014, Algorithm 1). Returns the step's vector clock."""
        tids, rs, ws, us, vcs, touched = self._tid, self._r, self._w, self._u, self._vc, self._touched
        covered = list(tvc[p])  # join of the clocks of p's last step and of later dependent steps
        ru = r | u
        mine = r | w | u
        races = []
        # The scan goes back from the last step. Thread q's steps at or before step i
        # are its first remaining[q]; once covered[q] reaches that, all of them happen
        # before p's step already: when that holds for every other thread (`live` counts
        # those for which it does not), no earlier step can race and the scan stops.
        remaining = [c[q] for q, c in enumerate(tvc)]
        live = _uncovered(remaining, covered, p)
        for i in range(len(tids) - 1, -1, -1):
            if not live:
                break
            q = tids[i]
            remaining[q] -= 1
            if q == p:
                continue
            if mine & touched[i]:  # some cell in common (a quick test, before _conflict)
                ri, wi, ui = rs[i], ws[i], us[i]
                vi = vcs[i]
                # _conflict, inlined; and not already ordered before p's step
                if (w & (ri | wi | ui) or wi & ru or u & ri or r & ui) and covered[q] < vi[q]:
                    races.append(i)
                    covered = [max(a, b) for a, b in zip(covered, vi, strict=True)]
                    live = _uncovered(remaining, covered, p)
                    continue
            if covered[q] == remaining[q]:  # q's steps from here back all happen before
                live -= 1
        covered[p] += 1
        vc = tuple(covered)
        for i in races:
            self._reverse(i, p, vc)
        return vc

    def _blocked_races(self, q: int, reads: int, prev: Clock) -> None:
        """A thread that cannot run (its guard is false, or the execution ended) may be
        able to run if the last step that wrote what its guard reads had not happened
        yet: Flanagan-Godefroid's check for a disabled next transition."""
        tids, ws, us, vcs = self._tid, self._w, self._u, self._vc
        if not self._everything or not (self._everything[-1][1] | self._everything[-1][2]) & reads:
            return  # nothing on the path wrote it
        for i in range(len(tids) - 1, -1, -1):
            t = tids[i]
            if t != q and (ws[i] | us[i]) & reads and prev[t] < vcs[i][t]:
                self._reverse(i, q)
                return

    def _summary_races(self, summary: _Summary, tvc: tuple[Clock, ...], heads: list[int]) -> list[Clock]:
        """A cached state's subtree is not run again: its accesses are treated as steps
        taken after the path and raced against the path's steps, conservatively: every
        path step that conflicts with a thread's accesses gets a backtrack point, except
        where the subtree's steps are known to happen after it anyway: through a later
        path step that writes the cell as a whole; through a later path step that
        writes the first cell the thread's pending guard reads (its next step, before
        all its others, reads that cell whatever the values); through a subtree step of
        the path step's own thread (`after`). A blocked thread's guard counts as a read,
        raced with every such step that writes it (Flanagan-Godefroid take the last
        one only). Returns, per thread, a lower bound of the vector clocks of its
        subtree steps on this path."""
        tids, rs, ws, us, vcs = self._tid, self._r, self._w, self._u, self._vc
        touched_at, wrote_at = self._touched, self._wrote
        everything = self._everything[-1] if self._everything else (0, 0, 0)
        bounds = []
        reversed_: set[int] = set()
        for t in range(len(tvc)):
            r, w, u = summary.steps[3 * t:3 * t + 3]
            blocked = summary.guards[t]
            racing = _conflict(r | blocked, w, u, *everything)
            covered = list(tvc[t])  # steps known to happen before all of t's subtree steps
            after = summary.after[t]
            # (Bounds matter only for a thread with steps in the subtree.)
            head = heads[t] & (everything[1] | everything[2]) if r | w | u else 0
            if racing or head:
                ru = r | u
                touched = r | w | u | blocked
                killed = 0  # cells a later path step wrote as a whole
                # As in _step_races: stop once every other thread's remaining steps
                # are covered (nothing before them can race or raise the bound).
                remaining = [c[q] for q, c in enumerate(tvc)]
                live = _uncovered(remaining, covered, t)
                for i in range(len(tids) - 1, -1, -1):
                    if not live:
                        break
                    q = tids[i]
                    remaining[q] -= 1
                    if q != t and (touched_at[i] & touched or wrote_at[i] & head):
                        vi = vcs[i]
                        if covered[q] < vi[q]:
                            if racing:
                                ri, wi, ui = rs[i], ws[i], us[i]
                                cells = (blocked & (wi | ui)) if after >> q & 1 else (
                                    w & (ri | wi | ui) | wi & ru | u & ri | (r | blocked) & ui | blocked & wi)
                                if cells & ~killed and i not in reversed_:  # (_conflict's cells)
                                    # (Without the step's own clock, the reversal does not
                                    # depend on t: once per path step is enough.)
                                    self._reverse(i, t, known=False)
                                    reversed_.add(i)
                            if wrote_at[i] & head:
                                covered = [max(a, b) for a, b in zip(covered, vi, strict=True)]
                                live = _uncovered(remaining, covered, t)
                    killed |= ws[i]
                    if q != t and covered[q] == remaining[q]:
                        live -= 1
            bounds.append(tuple(max(c, tvc[q][q] + 1) if after >> q & 1 else c
                                for q, c in enumerate(covered)))
        return bounds

    # -- the search ---------------------------------------------------------------------
    def explore(self) -> tuple[Violation, Schedule] | None:
        while True:
            ex = self.new_execution()
            try:
                return self._dpor(ex)
            except _Restart:
                # What was explored assumed too few visible steps: start again (the
                # counts then describe the last, complete, search).
                self.restarts += 1
                self.stats.states = self.stats.executions = self.stats.transitions = 0
                self.stats.max_depth = self.sleep_blocked = 0
                self.final_states.clear()
                self.final_canonical.clear()
                self._stack.clear()
                while self._tid:
                    self._pop_event()
            finally:
                self.stats.replayed += ex.rebuilt

    def _learn_visible(self, accesses: list[tuple[Key, int]]) -> bool:
        """Note the fields the invariant check read; True if one is new."""
        new = {key[1] for key, _ in accesses} - self._vis_fields
        if not new:
            return False
        self._vis_fields |= new
        self._vis = 0
        for key, b in self._bit.items():
            if key[1] in self._vis_fields:
                self._vis |= b
        return True

    def _initial_check(self, ex: Execution) -> Violation | None:
        """Run the invariant check on the initial state, to learn what it reads."""
        w = ex.world
        set_world(w)
        acc: list[tuple[Key, int]] = []
        w.accesses = acc
        try:
            ex.program.check_state(w)
        except Exception:  # the first step's check reports it as a model error
            w.violation = None
        finally:
            w.accesses = None
        self._learn_visible(acc)
        return w.violation

    def _open(self, ex: Execution, path: Schedule, sleep: dict[int, Footprint],
              tvc: tuple[Clock, ...], fp: int) -> _Node | tuple[Violation, Schedule] | None:
        """The node of a newly reached state, or its judgement if it has no successor
        (a violation, or None for a final or sleep-blocked state)."""
        n = len(ex.threads)
        self.stats.states += 1
        if ex.finished():
            self._leaf_summary = self._end_check(ex, tvc)
            return self.end_of_execution(ex, path)
        enabled, guards, heads = self._scan(ex)
        if not enabled:
            return self.end_of_execution(ex, path)
        node = _Node(enabled, guards, sleep, tvc, None, fp, n)
        node.heads = heads
        for q, t in enumerate(ex.threads):
            if t.pending is not None and q not in enabled:
                self._blocked_races(q, guards[q], tvc[q])
                node.summary.guards[q] |= guards[q]
        last = path[-1][0] if path else -1
        awake = [t for t in enabled if t not in sleep]
        if not awake:
            self.stats.executions += 1
            self.sleep_blocked += 1
            self._leaf_summary = node.summary
            return None
        # Go on with the same thread when it can: fewer context switches, fewer races.
        node.backtrack.add(last if last in awake else awake[0])
        node.snap = ex.snapshot()
        return node

    def _end_check(self, ex: Execution, tvc: tuple[Clock, ...]) -> _Summary:
        """At the end of an execution, daemons that could still step were disabled by
        the last thread's end: race their guards. Returns their summary."""
        _, guards, _ = self._scan(ex)
        summary = _Summary(len(ex.threads))
        for q, t in enumerate(ex.threads):
            if t.daemon and t.pending is not None:
                self._blocked_races(q, guards[q], tvc[q])
                summary.guards[q] |= guards[q]
        return summary

    def _dpor(self, ex: Execution) -> tuple[Violation, Schedule] | None:
        stats = self.stats
        n = len(ex.threads)
        self._ends = 0
        symmetry = getattr(ex.program, "symmetry", None)
        groups = symmetry(ex.world) if self.symmetry and symmetry is not None else None
        self._members = (frozenset(t for g in groups or () for t, _ in g),
                         frozenset(o for g in groups or () for _, o in g))
        alive_bit = [0] * n  # pseudo-cell each non-daemon thread writes when it ends
        if not self.all_independent:
            for tid, t in enumerate(ex.threads):
                if not t.daemon:
                    alive_bit[tid] = self._bits([(member_key((-2, "end"), tid), True)])[1]
                    self._ends |= alive_bit[tid]
            self._vis_step = self._bits([((-3, "visible"), True)])[1]
        initial = self._initial_check(ex)
        if initial is not None:
            return initial, []
        cache = self.cache
        visited: dict[int, _Cached] = {}
        on_path: dict[int, int] = {}
        fp0 = ex.fingerprint() if cache else 0
        path: Schedule = []
        stack = self._stack
        tvc0 = tuple((0,) * n for _ in range(n))
        root = self._open(ex, path, {}, tvc0, fp0)
        if not isinstance(root, _Node):
            return root
        if self.symmetry:
            root.key, root.renaming = ex.canonical()
        stack.append(root)
        on_path[fp0] = 0
        live = True  # does `ex` stand at the top of the stack?
        while stack:
            self.tick()
            node = stack[-1]
            if not node.choices:
                if node.cur >= 0:  # every branch of cur done: it sleeps from now on
                    node.sleep[node.cur] = node.cur_fp
                    node.cur = -1
                todo = [t for t in node.backtrack if t not in node.sleep and t not in node.skip]
                if not todo:
                    self._pop(visited, on_path)
                    if path:
                        path.pop()
                    live = False
                    continue
                node.cur = min(todo)
                node.explored.add(node.cur)
                node.choices = list(range(node.enabled[node.cur]))
                node.cur_fp = (0, 0, 0)
            p = node.cur
            tr = (p, node.choices.pop(0))
            if not live:
                assert node.snap is not None
                ex.restore(node.snap)
            live = False
            w = ex.world
            acc: list[tuple[Key, int]] = []
            w.accesses = acc
            try:
                violation = ex.step(tr)
            finally:
                w.accesses = None
            stats.transitions += 1
            if violation is not None:
                stats.executions += 1
                return violation, [*path, tr]
            check = acc[ex.check_from:]
            if check and self._learn_visible(check):
                raise _Restart
            r, wr, u = self._bits(acc[:ex.check_from])
            if (wr | u) & self._vis:  # visible steps are ordered among themselves
                wr |= self._vis_step
            r |= node.guards[p]
            if not ex.threads[p].alive:
                wr |= alive_bit[p]
            f = node.cur_fp
            node.cur_fp = (f[0] | r, f[1] | wr, f[2] | u)
            vc = self._step_races(p, r, wr, u, node.tvc)
            steps = node.summary.steps
            steps[3 * p] |= r
            steps[3 * p + 1] |= wr
            steps[3 * p + 2] |= u
            node.first[p] = [min(a, b) for a, b in zip(node.first[p], vc, strict=True)]
            tvc = (*node.tvc[:p], vc, *node.tvc[p + 1:])
            sleep = {q: f for q, f in node.sleep.items() if _independent(f, (r, wr, u))}
            self._tid.append(p)
            self._r.append(r)
            self._w.append(wr)
            self._u.append(u)
            self._touched.append(r | wr | u)
            self._wrote.append(wr | u)
            e = self._everything[-1] if self._everything else (0, 0, 0)
            self._everything.append((e[0] | r, e[1] | wr, e[2] | u))
            self._vc.append(vc)
            path.append(tr)
            depth = len(path)
            fp = key = 0
            renaming: Renaming | None = None
            entry: _Entry | None = None
            if cache:
                fp = key = ex.fingerprint()
                seen_at = on_path.get(fp)
                if seen_at is not None:
                    found = self._cycle(ex, path, seen_at)
                    if found is not None:
                        return found
                    self._drop_step(path)
                    continue
                if self.symmetry:
                    key, renaming = ex.canonical()
                cached = visited.get(key)
                if cached is not None:
                    entry = self._recall(cached, renaming)
                if entry is not None and entry[0] <= sleep.keys():
                    stats.executions += 1
                    bounds = self._summary_races(entry[1], tvc, self._scan(ex)[2])
                    node.summary.merge(entry[1])
                    for th, bound in enumerate(bounds):
                        node.first[th] = [min(a, b) for a, b in zip(node.first[th], bound, strict=True)]
                    self._drop_step(path)
                    continue
            child = self._open(ex, path, sleep, tvc, fp)
            if entry is not None and isinstance(child, _Node):
                self._revisit(child, entry, tvc)
            if not isinstance(child, _Node):
                if child is not None:
                    return child
                node.summary.merge(self._leaf_summary)
                if cache:  # a final state (whatever the sleep set) or a sleep-blocked one
                    asleep = frozenset(sleep) if not ex.finished() else frozenset()
                    visited[key] = (asleep, self._leaf_summary, frozenset()), renaming
                self._drop_step(path)
                continue
            child.key, child.renaming = key, renaming
            stack.append(child)
            if cache:
                on_path[fp] = depth
            live = True
            if depth > stats.max_depth:
                stats.max_depth = depth
        return None

    def _revisit(self, node: _Node, entry: _Entry, tvc: tuple[Clock, ...]) -> None:
        """A cached state reached again with a sleep set that lacks some threads it was
        explored with: explore just those (they sleep no more), before, in effect, the
        threads explored last time, whose subtrees are raced like a cache hit's. In that
        order the earlier subtrees were explored with sleep sets no larger than they
        would get now, which is what the cache needs."""
        self.revisits += 1
        asleep, summary, explored = entry
        for t, bound in enumerate(self._summary_races(summary, tvc, node.heads)):
            node.first[t] = [min(a, b) for a, b in zip(node.first[t], bound, strict=True)]
        node.summary.merge(summary)
        node.skip = explored
        node.explored |= explored
        node.backtrack = {t for t in asleep if t in node.enabled and t not in node.sleep}

    def _drop_step(self, path: Schedule) -> None:
        path.pop()
        self._pop_event()

    def _pop_event(self) -> None:
        for events in (self._tid, self._r, self._w, self._u, self._touched, self._wrote, self._everything,
                       self._vc):
            events.pop()

    def _pop(self, visited: dict[int, _Cached],
             on_path: dict[int, int]) -> None:
        """A state is fully explored: cache it with its subtree's accesses (unless a
        cycle in its subtree returned above it: then its summary is incomplete)."""
        stack = self._stack
        node = stack.pop()
        depth = len(stack)
        if self.cache:
            del on_path[node.fp]
            node.summary.after = [sum(1 << q for q, c in enumerate(node.tvc) if first[q] > c[q])
                                  for first in node.first]
            if node.cycle >= depth:
                visited[node.key] = (node.sleep0, node.summary, frozenset(node.explored)), node.renaming
        if stack:
            parent = stack[-1]
            parent.summary.merge(node.summary)
            for t, first in enumerate(node.first):
                parent.first[t] = [min(a, b) for a, b in zip(parent.first[t], first, strict=True)]
            parent.cycle = min(parent.cycle, node.cycle)
            self._pop_event()

    def _cycle(self, ex: Execution, path: Schedule, seen_at: int) -> tuple[Violation, Schedule] | None:
        """The step returned to a state on the path. A fair cycle is a livelock; any
        cycle makes the states on it explore every enabled thread (its continuation is
        the state's own unfinished subtree, whose races are not known yet)."""
        self.stats.executions += 1
        stack = self._stack
        if self.fair_cycle([set(nd.enabled) for nd in stack[seen_at:]], path[seen_at:]):
            return self.livelock(ex, path[-1][0], len(path), seen_at), list(path)
        for nd in stack[seen_at:]:
            nd.backtrack.update(nd.enabled)
        stack[-1].cycle = min(stack[-1].cycle, seen_at)
        return None
