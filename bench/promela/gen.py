"""Generate bench/promela/memslot_delete.pml: the memslot-delete scenario of tdpmmu
(v6.9, default --gfns 1) in Promela, one `atomic {}` per scheduling point of the Python
model, page tables under the roots included.

    python bench/promela/gen.py            # rewrites memslot_delete.pml
    spin -a -DN=2 memslot_delete.pml       # N vCPUs (1..4), default 1
    spin -a -DN=2 -DMUTANT_ZAP_UNSCHEDULED memslot_delete.pml
    spin -o1 -a -DN=2 memslot_delete.pml   # tdpmmu's exact state count

The last line is the equivalence check (docs/design.md, "Side by side with SPIN"): with
SPIN's dead-variable reset off (-o1), pan -DNOREDUCE stores exactly as many states as
`tdpmmu check memslot-delete --search plain --no-symmetry --movers off`: every release a
step of its own (tdpmmu's left movers, which fuse a release with the step before where
the code after it touches no shared memory, are a reduction of this system).

How it is built. Every Python `yield Op(...)` becomes one step
`Lk: atomic { guard -> effect; <plain code up to the next Op> }`: the effect of the Op
and all the plain (non-yielding) code that follows it run in that step, as they do in
the Python engine; branches on what that code computed are `if`s at the end of the
step that `goto` the label of the next step (a jump out of an atomic costs no SPIN
state). Functions are inlined at each call site. A loop whose body has scheduling points
(the walks of the roots list) is emitted once and closed by a back edge, so that each
Python scheduling point is one Promela label in every iteration, as it is one program
point in tdpmmu's frame fingerprint; loops without scheduling points are plain
`do ... od` inside a step. So a SPIN state is a state at
a scheduling point, as in tdpmmu; the thread-local variables are the Python frame
locals that live across a point (root, pos, the tdp_iter's table and old_spte, the
fault's new table and return value), reset when their frame returns.

Page tables (src/tdpmmu/kvm/spte.py, tdp_iter.py) at --gfns 1: every object the model
allocates (roots and child tables alike) is an index 1..MAXOBJ in allocation order, as
tdpmmu's object ids are; a table is spt0/spt1 (its two entries). An SPTE is a byte: 0
non-present, 1..MAXOBJ a non-leaf SPTE pointing to that table, LEAF the young 4K leaf
of page0 (the only page and pfn this scenario maps), REMOVED the frozen value. With one
gfn every walk covers gfn 0 only, so tdp_mmu_iter_cond_resched() never reaches
need_resched() (it never yields at the gfn the walk started at): the zap has no yield
branch here, exactly as in the Python model at --gfns 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

MAXR = 2  # roots ever allocated: memslot-delete needs 2 (allocating a 3rd asserts)
MAXN = 4  # vCPU bound of the generated destroy loop; -DN picks 1..MAXN
MAXCB = 4  # pending RCU callbacks (the generated CB_READY_ANY)


class If:
    def __init__(self, cond: str) -> None:
        self.cond, self.then, self.els = cond, [], []  # type: ignore[var-annotated]


class Goto:
    def __init__(self, step: Step) -> None:
        self.step = step


class Step:
    def __init__(self, label: str, guard: str | None, body: list[str], what: str) -> None:
        self.label, self.guard, self.body, self.what = label, guard, body, what
        self.tail: list[object] = []


class Thread:
    """Emits one proctype; `open` holds the code lists that fall through to 'here'."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Step] = []
        self.start: list[object] = []
        self.open: list[list[object]] = [self.start]
        self.log: list[Step] = []  # the step of every step() call, in call order
        self.cursor: Iterator[Step] | None = None  # replaying: step() reuses these

    def step(self, what: str, body: list[str] | str = (), guard: str | None = None) -> None:  # type: ignore[assignment]
        if self.cursor is not None:  # the back edge of a loop: jump to the step emitted already
            s = next(self.cursor)
            assert s.what == what, (s.what, what)
            for lst in self.open:
                lst.append(Goto(s))
            self.log.append(s)
            self.open = []
            return
        if isinstance(body, str):
            body = [body]
        s = Step(f"L{len(self.steps)}", guard, list(body), what)
        for lst in self.open:
            lst.append(Goto(s))
        self.steps.append(s)
        self.log.append(s)
        self.open = [s.tail]

    def loop(self, iteration: Callable[[], None]) -> None:
        """A loop whose body has scheduling points: ``iteration`` emits the loop test and
        the body, and ends where the next test begins. It is emitted once, then again from
        its own end, where every step() jumps to the step the first pass emitted: each
        Python scheduling point of the loop is one Promela label, whatever the iteration
        (the plain code of the test is repeated in the tails that lead to it)."""
        if self.cursor is not None:  # inside an enclosing loop's back edge: keep consuming
            iteration()
            iteration()
            return
        first = len(self.log)
        iteration()
        self.cursor = iter(self.log[first:])
        iteration()
        rest = next(self.cursor, None)
        self.cursor = None
        assert rest is None and not self.open, "a loop iteration must emit the same steps twice"

    def plain(self, *code: str) -> None:
        for lst in self.open:
            lst.extend(code)

    def split(self, cond: str) -> tuple[list[list[object]], list[list[object]]]:
        thens, elses = [], []
        for lst in self.open:
            i = If(cond)
            lst.append(i)
            thens.append(i.then)
            elses.append(i.els)
        return thens, elses  # type: ignore[return-value]

    # -- rendering ------------------------------------------------------------------
    def render(self, header: str) -> str:
        end = Step("Lend", None, [], "end")
        for lst in self.open:
            lst.append(Goto(end))
        out = [header]
        if self.start and not (len(self.start) == 1 and isinstance(self.start[0], Goto)):
            raise ValueError("plain code before the first step")
        for s in self.steps:
            stmts = ([f"({s.guard})"] if s.guard else []) + s.body + s.tail
            out.append(f"{s.label}: /* {s.what} */")
            out.append("  atomic { " + _seq(stmts, 2) + " }")
        out.append("Lend: end_done: false")
        out.append("}")
        return "\n".join(out) + "\n"


def _seq(items: list[object], ind: int) -> str:
    parts = []
    for it in items:
        if isinstance(it, Goto):
            parts.append(f"goto {it.step.label}")
        elif isinstance(it, If):
            pad = "\n" + "  " * (ind + 1)
            parts.append(
                f"if{pad}:: ({it.cond}) -> {_seq(it.then, ind + 1) or 'skip'}"
                f"{pad}:: else -> {_seq(it.els, ind + 1) or 'skip'}\n" + "  " * ind + "fi"
            )
        else:
            parts.append(str(it))
    if not parts:
        return "skip"
    return (";\n" + "  " * ind).join(parts)


# ---------------------------------------------------------------------------------------
# Kernel primitives (src/tdpmmu/kernel/): one step each.


def read_lock(t: Thread) -> None:
    t.step("read_lock(mmu_lock)", ["assert(!rd[_pid])", "rd[_pid] = 1", "nrd++"],
           guard="wr == NOBODY && nwq == 0")


def read_unlock(t: Thread) -> None:
    t.step("read_unlock(mmu_lock)", ["assert(rd[_pid])", "rd[_pid] = 0", "nrd--"])


def write_lock(t: Thread) -> None:
    # A writer always queues, then takes the lock (src/tdpmmu/kernel/rwlock.py).
    t.step("write_lock(mmu_lock)", ["assert(!(wr == _pid || rd[_pid]))", "wq[nwq] = _pid", "nwq++"])
    t.step("write_lock(mmu_lock) (queued)",
           ["wq[0] = wq[1]; wq[1] = NOBODY; nwq--", "wr = _pid"],
           guard="wr == NOBODY && nrd == 0 && wq[0] == _pid")


def write_unlock(t: Thread) -> None:
    t.step("write_unlock(mmu_lock)", ["assert(wr == _pid)", "wr = NOBODY"])


def lock(t: Thread, var: str) -> None:
    t.step(f"lock({var})", [f"assert({var} != _pid)", f"{var} = _pid"], guard=f"{var} == NOBODY")


def unlock(t: Thread, var: str) -> None:
    t.step(f"unlock({var})", [f"assert({var} == _pid)", f"{var} = NOBODY"])


def rcu_read_lock(t: Thread) -> None:
    t.step("rcu_read_lock()", ["rcu_depth[_pid]++", "rcu_mask = rcu_mask | (1 << _pid)"])


def rcu_read_unlock(t: Thread) -> None:
    t.step("rcu_read_unlock()", ["assert(rcu_depth[_pid] > 0)", "rcu_depth[_pid]--",
                                 "if\n  :: rcu_depth[_pid] == 0 -> RCU_QS()\n  :: else\n  fi"])


# ---------------------------------------------------------------------------------------
# tdp_mmu.c


def inc_not_zero(t: Thread, r: str) -> tuple[list[list[object]], list[list[object]]]:
    """refcount_inc_not_zero(); returns (succeeded, failed) open lists."""
    t.step(f"refcount_inc_not_zero({r})",
           [f"TOUCH({r})", f"if\n  :: r_ref[{r}] == 0 -> skip\n  :: else -> r_ref[{r}]++\n  fi"])
    return t.split(f"r_ref[{r}] != 0")


def put_root(t: Thread, r: str) -> None:
    """kvm_tdp_mmu_put_root()."""
    t.step(f"refcount_dec_and_test({r})",
           [f"TOUCH({r})", f"assert(r_ref[{r}] > 0)  /* underflow; use-after-free */", f"r_ref[{r}]--"])
    last, notlast = t.split(f"r_ref[{r}] == 0")
    t.open = last
    t.plain(f"assert(r_invalid[{r}])  /* KVM_BUG_ON(!root->role.invalid) */")
    lock(t, "pages_lock")
    t.step(f"list_del_rcu({r})", [f"TOUCH({r})", f"LIST_DEL({r})"])
    unlock(t, "pages_lock")
    t.step(f"call_rcu({r})", [f"CALL_RCU({r})"])
    t.open += notlast


def next_root(t: Thread, prev: str | None, only_valid: bool) -> None:
    """tdp_mmu_next_root(): result in `pos`, then copied to `root` (the caller's var);
    `prev` (if any) is `root`, put after the walk."""
    rcu_read_lock(t)
    if prev is None:
        t.step("list_first_or_null_rcu()", ["assert(rcu_depth[_pid] > 0)", "pos = nxt[0]"])
    else:
        t.step(f"list_next_or_null_rcu({prev})",
               ["assert(rcu_depth[_pid] > 0)", f"TOUCH({prev})", f"pos = nxt[{prev}]"])
    done: list[list[object]] = []

    def iteration() -> None:
        cand, none = t.split("pos != 0")
        done.extend(none)
        t.open = cand
        skip: list[list[object]] = []
        if only_valid:
            t.plain("TOUCH(pos)")
            valid, skip = t.split("!r_invalid[pos]")
            t.open = valid
        got, failed = inc_not_zero(t, "pos")
        done.extend(got)
        t.open = failed + skip
        t.step("list_next_or_null_rcu(pos)", ["assert(rcu_depth[_pid] > 0)", "TOUCH(pos)", "pos = nxt[pos]"])

    t.loop(iteration)
    t.open = done
    rcu_read_unlock(t)
    if prev is not None:
        put_root(t, prev)
    t.plain("root = pos", "pos = 0")


PRESENT = "(it_old != 0 && it_old != REMOVED)"  # is_shadow_present_pte(iter.old_spte)


def zap_pass(t: Thread, shared: bool, zap_level: int) -> None:
    """__tdp_mmu_zap_root(kvm, root, shared, zap_level) at --gfns 1: the walk visits gfn 0
    only (root entry 0, and its table's entry 0 when zap_level is 1), and
    tdp_mmu_iter_cond_resched() returns at once there (next_last_level_gfn ==
    yielded_gfn), so no need_resched() branch. The model's `continue` after a failed
    cmpxchg (goto retry) is unreachable here (vCPUs never write an invalid root's SPTEs,
    and only one zapper runs at a time): the generator asserts instead of looping."""
    t.plain("TOUCH(root)", "it_old = spt0[root]")  # tdp_iter_start(root, zap_level, 0)
    present, absent = t.split(PRESENT)
    t.open = present
    if zap_level == 1:
        # level 2 > zap_level: tdp_iter_next() steps down into the table
        t.plain("it_pt = it_old", "TOUCH(it_pt)", "it_old = spt0[it_pt]")
        leaf, noleaf = t.split(PRESENT)
        t.open = leaf
        if shared:
            t.step("try_cmpxchg64(table[0], leaf -> 0)",
                   ["TOUCH(it_pt)", "assert(spt0[it_pt] == it_old)  /* retry: not modeled */",
                    "spt0[it_pt] = 0", "pg_referenced = 1  /* handle_changed_spte: A/D write-back */",
                    "NO_GUEST_ON(root)"])
        else:
            t.plain("spt0[it_pt] = 0", "pg_referenced = 1")
        t.open += noleaf
    else:
        # level 2 == zap_level: zap the root's entry; handle_removed_pt() on its table
        if shared:
            t.step("try_cmpxchg64(root[0], table -> 0)",
                   ["TOUCH(root)", "assert(spt0[root] == it_old)  /* retry: not modeled */",
                    "spt0[root] = 0", "tdp_pages--"])
            for k in (0, 1):
                t.step(f"xchg(table[{k}], REMOVED)",
                       ["TOUCH(it_old)", f"xold = spt{k}[it_old]",
                        "assert(xold != REMOVED)  /* another freezer: not modeled */",
                        f"spt{k}[it_old] = REMOVED",
                        "if\n  :: xold == LEAF -> pg_referenced = 1\n  :: else\n  fi"])
            t.step("call_rcu(table)", ["CALL_RCU(it_old)"])
            t.plain("NO_GUEST_ON(root)")
        else:
            t.plain("spt0[root] = 0", "tdp_pages--", "TOUCH(it_old)", *(
                f"if\n  :: spt{k}[it_old] == LEAF -> spt{k}[it_old] = REMOVED; pg_referenced = 1"
                "\n  :: else\n  fi" for k in (0, 1)))
            t.step("call_rcu(table)", ["CALL_RCU(it_old)"])
    t.open += absent
    t.plain("it_old = 0", "it_pt = 0", "xold = 0")


def zap_root(t: Thread, shared: bool) -> None:
    """tdp_mmu_zap_root(root, shared): the 4K, 2M, 1G and root passes, clamped to the
    model's root level 2 (so zap levels 1, 2, 2, 2)."""
    t.step("refcount_read(root)", ["TOUCH(root)", "assert(r_ref[root] != 0)  /* WARN */"])
    t.plain("assert(rd[_pid])" if shared else "assert(wr == _pid)")
    rcu_read_lock(t)
    for zap_level in (1, 2, 2, 2):
        zap_pass(t, shared, zap_level)
    rcu_read_unlock(t)


def invalidate_all_roots(t: Thread) -> None:
    t.step("kvm_tdp_mmu_invalidate_all_roots: walk roots", ["INVALIDATE_ALL()", "CHECK_ROOTS()"])


def for_each_root_yield_safe(t: Thread, body: Callable[[], None]) -> None:
    """The yield-safe iterator's expansion: ``body`` runs with `root` set."""
    next_root(t, None, False)
    out: list[list[object]] = []

    def iteration() -> None:
        have, none = t.split("root != 0")
        out.extend(none)
        t.open = have
        body()
        next_root(t, "root", False)

    t.loop(iteration)
    t.open = out


def zap_invalidated_roots(t: Thread) -> None:
    def zap_invalidated_root() -> None:
        t.plain("TOUCH(root)", "r_sched[root] = r_sched[root] || MUTANT")
        sched, unsched = t.split("r_sched[root]")
        t.open = sched
        t.plain("r_sched[root] = 0", "assert(r_invalid[root])  /* KVM_BUG_ON(!root->role.invalid) */")
        zap_root(t, shared=True)
        put_root(t, "root")
        t.open += unsched

    read_lock(t)
    for_each_root_yield_safe(t, zap_invalidated_root)
    read_unlock(t)


def alloc_root(t: Thread) -> None:
    """kvm_tdp_mmu_alloc_root()."""
    read_lock(t)
    next_root(t, None, True)
    found, miss = t.split("root != 0")
    t.open = found
    # as_id and role.word match: a valid root cannot turn invalid under our read lock
    t.plain("TOUCH(root)", "assert(!r_invalid[root])")
    t.open = miss
    # tdp_mmu_alloc_root_slow()
    lock(t, "pages_lock")
    # list_for_each(): plain code up to the first valid root (role.word matches)
    t.plain("pos = nxt[0]", "do\n  :: pos != 0 -> TOUCH(pos);\n"
            "     if :: r_invalid[pos] -> pos = nxt[pos] :: else -> break fi\n  :: else -> break\n  od")
    cand, nohit = t.split("pos != 0")
    t.open = cand
    ok, bad = inc_not_zero(t, "pos")
    t.open = bad
    t.plain("assert(false)  /* WARN_ON_ONCE(!kvm_tdp_mmu_get_root(root)) */")
    t.open = ok
    t.plain("root = pos")
    hit = t.open
    t.open = nohit
    t.plain("pos = 0", "NEW_OBJ(root)", "o_root[root] = 1", "nroots++",
            "assert(nroots <= MAXR)")  # tdp_mmu_alloc_sp
    t.step("refcount_set(root, 2)", ["r_ref[root] = 2"])
    t.step("list_add_rcu(root)", ["LIST_ADD(root)", "CHECK_ROOTS()"])
    t.open += hit
    t.plain("pos = 0")
    unlock(t, "pages_lock")
    t.open += found
    read_unlock(t)
    t.plain("hpa[_pid] = root", "root = 0")


def vcpu_enter_guest(t: Thread) -> None:
    t.step("kvm_request_pending(vcpu)")
    pend, nopend = t.split("req[_pid]")
    t.open = pend
    t.step("kvm_check_request(KVM_REQ_VM_DEAD)")  # never posted in this scenario
    t.step("kvm_check_request(KVM_REQ_MMU_FREE_OBSOLETE_ROOTS)")
    got, notgot = t.split("req[_pid]")
    t.open = got
    t.plain("req[_pid] = 0", "TOUCH(hpa[_pid])")
    obsolete, fresh = t.split("hpa[_pid] != 0 && r_invalid[hpa[_pid]]")
    t.open = obsolete
    read_lock(t)  # kvm_mmu_free_roots(), is_tdp_mmu: shared
    t.plain("assert(rd[_pid])")
    put_root(t, "hpa[_pid]")
    t.plain("hpa[_pid] = 0")
    read_unlock(t)
    t.open += fresh + notgot + nopend
    unloaded, loaded = t.split("hpa[_pid] == 0")  # kvm_mmu_reload()
    t.open = unloaded
    alloc_root(t)
    t.open += loaded
    t.step("WRITE_ONCE(vcpu->mode, IN_GUEST_MODE)", ["mode[_pid] = 1", "nguest++"])
    t.step("kvm_request_pending(vcpu) (exit request)")
    cancel, enter = t.split("req[_pid]")
    t.open = cancel
    t.plain("mode[_pid] = 0", "nguest--")
    back = t.open
    t.open = enter
    t.plain("TOUCH(hpa[_pid])",
            "assert(!r_invalid[hpa[_pid]] || req[_pid] || unannounced)  /* guest-on-invalid-root */",
            "in_guest[_pid] = 1")
    t.step("WRITE_ONCE(vcpu->mode, OUTSIDE_GUEST_MODE)", ["mode[_pid] = 0", "nguest--", "in_guest[_pid] = 0"])
    page_fault(t)
    t.open += back


def page_fault(t: Thread) -> None:
    """kvm_tdp_mmu_page_fault(vcpu, gfn 0): kvm_faultin_pfn() (the notifier sequence, gup
    of page0), is_page_fault_stale() under the read lock, kvm_tdp_mmu_map(), unlock,
    kvm_release_pfn_clean(). `ret` is the fault's return value (RET_PF_*), live until the
    fault returns; it_pt/it_old/sp are kvm_tdp_mmu_map()'s iterator and new table."""
    t.step("READ_ONCE(kvm->mmu_invalidate_seq)")  # always 0: no notifier in this scenario
    t.step("get_user_pages(page0)", ["pg_ref++"])
    t.plain("ret = RET_PF_RETRY")
    read_lock(t)
    t.plain("TOUCH(hpa[_pid])")
    stale, fresh = t.split("(hpa[_pid] != 0 && r_invalid[hpa[_pid]]) || (hpa[_pid] == 0 && req[_pid])")
    t.open = fresh
    # kvm_tdp_mmu_map()
    rcu_read_lock(t)
    t.plain("TOUCH(hpa[_pid])", "it_old = spt0[hpa[_pid]]")  # tdp_iter_start(root, 4K, gfn)
    removed, notremoved = t.split("it_old == REMOVED")
    done = removed  # goto retry
    t.open = notremoved
    table, none = t.split(PRESENT)
    t.open = table  # step down into the existing table
    t.plain("it_pt = it_old", "TOUCH(it_pt)", "it_old = spt0[it_pt]")
    removed, notremoved = t.split("it_old == REMOVED")
    done += removed
    t.open = notremoved
    spurious, install = t.split("it_old == LEAF")  # new_spte == iter.old_spte
    t.open = spurious
    t.plain("ret = RET_PF_SPURIOUS")
    done += t.open
    target = install
    t.open = none
    # tdp_mmu_alloc_sp() + tdp_mmu_link_sp(): cmpxchg the root's entry
    t.plain("NEW_OBJ(sp)")
    t.step("try_cmpxchg64(root[0], 0 -> table)", ["TOUCH(hpa[_pid])"])
    lost, won = t.split("spt0[hpa[_pid]] != it_old")
    t.open = lost
    t.plain("it_old = spt0[hpa[_pid]]", "o_freed[sp] = 1  /* tdp_mmu_free_sp() */")
    done += t.open
    t.open = won
    t.plain("spt0[hpa[_pid]] = sp", "tdp_pages++",
            "assert(!r_invalid[hpa[_pid]])  /* spte-in-invalid-root */",
            "it_pt = sp", "it_old = spt0[it_pt]")  # tdp_iter_next(): step down
    t.open += target
    # tdp_mmu_map_handle_target_level(): cmpxchg the leaf (a failure leaves the
    # caller's iterator as it was: the callee's refreshed copy dies with it)
    t.step("try_cmpxchg64(table[0], 0 -> leaf)", ["TOUCH(it_pt)"])
    lost, won = t.split("spt0[it_pt] != it_old")
    done += lost
    t.open = won
    t.plain("spt0[it_pt] = LEAF", "assert(!r_invalid[hpa[_pid]])  /* spte-in-invalid-root */",
            "ret = RET_PF_FIXED")
    t.open += done
    rcu_read_unlock(t)
    t.plain("it_pt = 0", "it_old = 0", "sp = 0")  # kvm_tdp_mmu_map() returns
    t.open += stale
    read_unlock(t)
    t.step("put_page(page0)", ["pg_ref--", "assert(pg_ref > 0)  /* the mm's reference */"])
    t.plain("ret = 0")


def vcpu_thread() -> Thread:
    t = Thread("vcpu")
    for _ in range(2):  # gfns = (0, 0)
        vcpu_enter_guest(t)
    t.step("kvm_put_kvm()", ["users--"])
    return t


def memslot_thread() -> Thread:
    t = Thread("memslot")
    lock(t, "slots_lock")
    # kvm_mmu_zap_all_fast()
    write_lock(t)
    t.plain("valid_gen = 1 - valid_gen")
    invalidate_all_roots(t)
    t.step("kvm_make_all_cpus_request(FREE_OBSOLETE_ROOTS)", ["POST_ALL()"])
    t.step("kvm_make_all_cpus_request(wait for IPI ack)", ["unannounced = 0"], guard="nguest == 0")
    write_unlock(t)
    zap_invalidated_roots(t)
    t.plain("FAST_ZAP_COMPLETE()")
    unlock(t, "slots_lock")
    t.step("kvm_put_kvm()", ["users--"])
    return t


def destroy_thread() -> Thread:
    t = Thread("destroy")
    t.step("wait_event(users_count == 0)", guard="users == 0")
    # kvm_mmu_zap_all()
    write_lock(t)
    for_each_root_yield_safe(t, lambda: zap_root(t, shared=False))
    write_unlock(t)
    for v in range(MAXN):  # kvm_mmu_unload(vcpu) for each vCPU
        has, empty = t.split(f"{v} < N && hpa[{v}] != 0")
        t.open = has
        read_lock(t)
        put_root(t, f"hpa[{v}]")
        t.plain(f"hpa[{v}] = 0")
        read_unlock(t)
        t.open += empty
    # kvm_mmu_uninit_tdp_mmu()
    invalidate_all_roots(t)
    zap_invalidated_roots(t)
    t.plain("assert(tdp_pages == 0)  /* WARN_ON(atomic64_read(&kvm->arch.tdp_mmu_pages)) */",
            "assert(nxt[0] == 0)  /* WARN_ON(!list_empty(&kvm->arch.tdp_mmu_roots)) */")
    t.step("rcu_barrier()", ["FINAL_CHECKS()"], guard="ncb == 0")
    return t


HEADER = r"""/* GENERATED by bench/promela/gen.py: do not edit by hand.
 *
 * tdpmmu's memslot-delete scenario on Linux v6.9, in Promela. Threads (= _pid):
 * vcpu 0..N-1 (vcpu_run, gfns (0, 0)), memslot N (kvm_delete_memslot once),
 * destroy N+1 (kvm_destroy_vm), rcu N+2 (daemon: runs callbacks whose grace period
 * has elapsed). One atomic{} per scheduling point of the Python model.
 *
 *   spin -a [-DN=2] [-DMUTANT_ZAP_UNSCHEDULED] memslot_delete.pml
 */
#ifndef N
#define N 1
#endif
#define MAXR %(MAXR)d          /* roots ever allocated */
#define MAXOBJ (MAXR + 2 * N) /* roots and tables ever allocated: a fault allocates at most one table */
#define MAXCB 4               /* pending RCU callbacks: two roots, one linked table each */
#define NT (N + 3)            /* threads */
#define MAXN %(MAXN)d
#if N > MAXN
#error "N > MAXN: regenerate with gen.py"
#endif
#define NOBODY 255
#define POISON 254            /* LIST_POISON2 */
#ifdef MUTANT_ZAP_UNSCHEDULED
#define MUTANT 1              /* zap_invalidated_root() skips no root */
#else
#define MUTANT 0
#endif

/* struct kvm_mmu_page: objects 1..nobj in allocation order, roots and child tables alike
   (tdpmmu's object ids; index 0 unused) */
byte nobj;                    /* objects allocated so far (NEXT_OID) */
bool o_root[MAXOBJ + 1];      /* a root (role.level 2), else a child table (level 1) */
bool o_freed[MAXOBJ + 1];     /* kfree()d: any access is a use-after-free */
byte spt0[MAXOBJ + 1];        /* sp->spt[0], spt[1]: an SPTE (0, a table's index, LEAF, REMOVED) */
byte spt1[MAXOBJ + 1];
bool r_invalid[MAXOBJ + 1];   /* role.invalid (roots) */
bool r_sched[MAXOBJ + 1];     /* tdp_mmu_scheduled_root_to_zap */
byte r_ref[MAXOBJ + 1];       /* tdp_mmu_root_count */
byte nroots;                  /* roots allocated so far (a function of o_root[]: for the bound) */
/* kvm->arch.tdp_mmu_roots: list_head links, node 0 = head */
byte nxt[MAXOBJ + 1];
byte prv[MAXOBJ + 1];
byte tdp_pages;               /* kvm->arch.tdp_mmu_pages: linked child tables */

/* struct page of gfn 0 (the mm maps it at hva 0 for the whole run) */
byte pg_ref = 1;              /* _refcount: the mm's, plus one per fault between gup and release */
bool pg_referenced;           /* flags: PG_referenced, set by the A/D write-back of a zapped young leaf */

/* kvm->mmu_lock: queued rwlock (new readers wait behind a queued writer) */
bool rd[NT];
byte nrd;                     /* number of readers (derived from rd[]) */
byte wr = NOBODY;
byte wq[2] = NOBODY;          /* waiting writers, FIFO */
byte nwq;
byte pages_lock = NOBODY;     /* kvm->arch.tdp_mmu_pages_lock */
byte slots_lock = NOBODY;     /* kvm->slots_lock */

/* RCU */
byte rcu_depth[NT];
byte rcu_mask;                /* threads inside a read-side section (derived) */
byte cb_obj[MAXCB];           /* pending callbacks (tdp_mmu_free_sp_rcu_callback), oldest first */
byte cb_wait[MAXCB];          /* readers each still waits for */
byte ncb;

/* vCPUs */
bool req[N];                  /* KVM_REQ_MMU_FREE_OBSOLETE_ROOTS */
bool mode[N];                 /* IN_GUEST_MODE */
byte nguest;                  /* vCPUs in guest mode (derived) */
bool in_guest[N];             /* ghost: running the guest */
byte hpa[MAXN];               /* arch.mmu->root.hpa (0: INVALID_PAGE); MAXN: the destroy loop is unrolled */

/* struct kvm */
byte users = N + 1;           /* users_count: each vCPU and the memslot thread */
bool unannounced;             /* ghost: invalidated, request not yet posted */
bit valid_gen;                /* arch.mmu_valid_gen */
byte i;                       /* scratch of loops inside one atomic step; always 0 between */

#define TOUCH(r)   assert(!o_freed[r])   /* use-after-free */
#define LEAF 250              /* make_spte(page0): a present, young 4K leaf */
#define REMOVED 251           /* REMOVED_SPTE */
#define RET_PF_RETRY 1
#define RET_PF_FIXED 3
#define RET_PF_SPURIOUS 4
#define NEW_OBJ(v) assert(nobj < MAXOBJ); nobj++; v = nobj  /* kzalloc() */

#define LIST_ADD(r) nxt[r] = nxt[0]; prv[r] = 0; prv[nxt[0]] = r; nxt[0] = r
#define LIST_DEL(r) assert(prv[r] != POISON); prv[nxt[r]] = prv[r]; nxt[prv[r]] = nxt[r]; prv[r] = POISON

/* the grace periods of pending callbacks stop waiting for this thread */
#define RCU_QS() \
  rcu_mask = rcu_mask & ~(1 << _pid); \
  i = 0; do :: i < ncb -> cb_wait[i] = cb_wait[i] & ~(1 << _pid); i++ :: else -> break od; i = 0

#define CALL_RCU(r) assert(ncb < MAXCB); cb_obj[ncb] = r; cb_wait[ncb] = rcu_mask; ncb++

/* kvm_make_all_cpus_request(): post to every vCPU */
#define POST_ALL() i = 0; do :: i < N -> req[i] = 1; i++ :: else -> break od; i = 0

/* kvm_tdp_mmu_invalidate_all_roots(): walk the list, mark valid roots */
#define INVALIDATE_ALL() \
  i = nxt[0]; \
  do \
  :: i != 0 -> TOUCH(i); \
     if :: !r_invalid[i] -> r_sched[i] = 1; r_invalid[i] = 1; unannounced = 1 :: else fi; \
     i = nxt[i] \
  :: else -> break \
  od; i = 0

/* check_no_guest_on_zapped_root(): stale-tlb */
#define NO_GUEST_ON(r) \
  if :: r_invalid[r] -> \
     i = 0; do :: i < N -> assert(!(in_guest[i] && hpa[i] == r)); i++ :: else -> break od; i = 0 \
  :: else fi

/* KvmProgram.check_state: scheduled => invalid; at most one valid root on the list
   (all roots share one role.word here) */
#define CHECK_ROOTS() \
  i = nxt[0]; rcu_cnt = 0; \
  do \
  :: i != 0 -> assert(!r_sched[i] || r_invalid[i]); \
     if :: !r_invalid[i] -> rcu_cnt++ :: else fi; i = nxt[i] \
  :: else -> break \
  od; assert(rcu_cnt <= 1); i = 0; rcu_cnt = 0
byte rcu_cnt;                 /* scratch of CHECK_ROOTS */

/* check_fast_zap_complete(): no live invalid root maps anything (a leaf in its table) */
#define FAST_ZAP_COMPLETE() \
  i = 1; do :: i <= nobj -> \
     if :: o_root[i] && !o_freed[i] && r_invalid[i] && spt0[i] != 0 -> \
           assert(spt0[spt0[i]] != LEAF && spt1[spt0[i]] != LEAF) \
     :: else fi; i++ \
  :: else -> break od; i = 0

/* check_final(): list empty, every root and table freed, no callback left */
#define FINAL_CHECKS() \
  assert(nxt[0] == 0); assert(ncb == 0); \
  i = 1; do :: i <= nobj -> assert(o_freed[i]); i++ :: else -> break od; i = 0

#define CB_READY(k) (ncb > k && cb_wait[k] == 0)
""" % {"MAXR": MAXR, "MAXN": MAXN}  # noqa: UP031 - C-like text full of braces

PROCS = {
    "vcpu": "active [N] proctype vcpu() {\n  byte root, pos, it_pt, it_old, sp, ret;",
    "memslot": "active proctype memslot() {\n  byte root, pos, it_pt, it_old, xold;",
    "destroy": "active proctype destroy() {\n  byte root, pos, it_pt, it_old, xold;",
}

RCU_DAEMON = r"""
/* rcu_callback_thread(): run the oldest callback whose grace period has elapsed;
   tdp_mmu_free_sp_rcu_callback() frees the root or table (kfree) */
active proctype rcu() {
  byte k;
end_rcu:
  do
  :: atomic { (CB_READY_ANY) ->
       k = 0; do :: cb_wait[k] == 0 -> break :: else -> k++ od;
       o_freed[cb_obj[k]] = 1;
       do :: k + 1 < ncb -> cb_obj[k] = cb_obj[k + 1]; cb_wait[k] = cb_wait[k + 1]; k++
          :: else -> break od;
       ncb--; cb_obj[ncb] = 0; cb_wait[ncb] = 0; k = 0 }
  od
}
"""


def generate() -> str:
    ready = " || ".join(f"CB_READY({k})" for k in range(MAXCB))
    parts = [HEADER, f"#define CB_READY_ANY ({ready})\n"]
    for t in (vcpu_thread(), memslot_thread(), destroy_thread()):
        parts.append(t.render(PROCS[t.name]))
    parts.append(RCU_DAEMON)
    return "\n".join(parts)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("memslot_delete.pml")
    out.write_text(generate())
    print(f"wrote {out}")
