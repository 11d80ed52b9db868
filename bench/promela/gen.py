"""Generate bench/promela/memslot_delete.pml: the memslot-delete scenario of tdpmmu
(v6.9) in Promela, one `atomic {}` per scheduling point of the Python model.

    python bench/promela/gen.py            # rewrites memslot_delete.pml
    spin -a -DN=2 memslot_delete.pml       # N vCPUs (1..4), default 1
    spin -a -DN=2 -DMUTANT_ZAP_UNSCHEDULED memslot_delete.pml

How it is built. Every Python `yield Op(...)` becomes one step
`Lk: atomic { guard -> effect; <plain code up to the next Op> }`: the effect of the Op
and all the plain (non-yielding) code that follows it run in that step, as they do in
the Python engine; branches on what that code computed are `if`s at the end of the
step that `goto` the label of the next step (a jump out of an atomic costs no SPIN
state). Functions are inlined at each call site and loops over the roots list are
unrolled (at most MAXR roots; walking further asserts). So a SPIN state is a state at
a scheduling point, as in tdpmmu; the thread-local variables are the Python frame
locals that live across a point (root, pos, a spte snapshot), reset when dead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

MAXR = 2  # roots ever allocated: memslot-delete needs 2 (allocating a 3rd asserts)
MAXN = 4  # vCPU bound of the generated destroy loop; -DN picks 1..MAXN


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

    def step(self, what: str, body: list[str] | str = (), guard: str | None = None) -> None:  # type: ignore[assignment]
        if isinstance(body, str):
            body = [body]
        s = Step(f"L{len(self.steps)}", guard, list(body), what)
        for lst in self.open:
            lst.append(Goto(s))
        self.steps.append(s)
        self.open = [s.tail]

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
    t.step("write_lock(mmu_lock)", [
        "if\n  :: wr == NOBODY && nrd == 0 && nwq == 0 -> wr = _pid"
        "\n  :: else -> assert(!(wr == _pid || rd[_pid])); wq[nwq] = _pid; nwq++\n  fi"])
    a, b = t.split("wr != _pid")
    t.open = a
    t.step("write_lock(mmu_lock) (queued)",
           ["wq[0] = wq[1]; wq[1] = NOBODY; nwq--", "wr = _pid"],
           guard="wr == NOBODY && nrd == 0 && wq[0] == _pid")
    t.open += b


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


def need_resched(t: Thread) -> tuple[list[list[object]], list[list[object]]]:
    t.step("need_resched() (branch)", "if\n  :: ch = 1\n  :: ch = 0\n  fi")
    a, b = t.split("ch")
    t.open = a + b
    t.plain("ch = 0")
    return a, b


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
    for _ in range(MAXR + 1):
        cand, none = t.split("pos != 0")
        done += none
        t.open = cand
        skip: list[list[object]] = []
        if only_valid:
            t.plain("TOUCH(pos)")
            valid, skip = t.split("!r_invalid[pos]")
            t.open = valid
        got, failed = inc_not_zero(t, "pos")
        done += got
        t.open = failed + skip
        t.step("list_next_or_null_rcu(pos)", ["assert(rcu_depth[_pid] > 0)", "TOUCH(pos)", "pos = nxt[pos]"])
    t.plain("assert(false)  /* more than MAXR roots on the list */")
    t.open = done
    rcu_read_unlock(t)
    if prev is not None:
        put_root(t, prev)
    t.plain("root = pos", "pos = 0")


def zap_root(t: Thread, shared: bool) -> None:
    """tdp_mmu_zap_root(root, shared); the SPTEs are the gfn-0 bit r_spte."""
    t.step("refcount_read(root)", ["TOUCH(root)", "assert(r_ref[root] != 0)  /* WARN */"])
    t.plain("assert(rd[_pid])" if shared else "assert(wr == _pid)")
    rcu_read_lock(t)
    t.plain("TOUCH(root)", "snap = r_spte[root]")  # for gfn in sorted(root.sptes)
    has, empty = t.split("snap")
    t.open = has
    yes, no = need_resched(t)  # tdp_mmu_iter_cond_resched()
    t.open = yes
    if shared:
        t.step("rcu_read_unlock() + cond_resched_rwlock_read",
               ["assert(rcu_depth[_pid] > 0)", "rcu_depth[_pid]--",
                "if\n  :: rcu_depth[_pid] == 0 -> RCU_QS()\n  :: else\n  fi",
                "assert(rd[_pid])", "rd[_pid] = 0", "nrd--"])
        read_lock(t)
    else:
        t.step("rcu_read_unlock() + cond_resched_rwlock_write",
               ["assert(rcu_depth[_pid] > 0)", "rcu_depth[_pid]--",
                "if\n  :: rcu_depth[_pid] == 0 -> RCU_QS()\n  :: else\n  fi",
                "assert(wr == _pid)", "wr = NOBODY"])
        write_lock(t)
    rcu_read_lock(t)
    t.open += no
    t.step("tdp_mmu_set_spte_atomic(root, 0, NONPRESENT)",
           ["TOUCH(root)", "if\n  :: r_spte[root] -> r_spte[root] = 0; NO_GUEST_ON(root)\n  :: else\n  fi",
            "snap = 0"])
    t.open += empty
    rcu_read_unlock(t)


def invalidate_all_roots(t: Thread) -> None:
    t.step("kvm_tdp_mmu_invalidate_all_roots: walk roots", ["INVALIDATE_ALL()", "CHECK_ROOTS()"])


def for_each_root_yield_safe(t: Thread, body: Callable[[], None]) -> None:
    """The yield-safe iterator's expansion, unrolled: ``body`` runs with `root` set."""
    next_root(t, None, False)
    out: list[list[object]] = []
    for _ in range(MAXR + 1):
        have, none = t.split("root != 0")
        out += none
        t.open = have
        body()
        next_root(t, "root", False)
    t.plain("assert(false)")
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
    t.plain("pos = nxt[0]")
    hit: list[list[object]] = []
    nohit: list[list[object]] = []
    for _ in range(MAXR + 1):
        cand, end = t.split("pos != 0")
        nohit += end
        t.open = cand
        t.plain("TOUCH(pos)")
        valid, inval = t.split("!r_invalid[pos]")
        t.open = valid
        ok, bad = inc_not_zero(t, "pos")
        t.open = bad
        t.plain("assert(false)  /* WARN_ON_ONCE(!kvm_tdp_mmu_get_root(root)) */")
        t.open = ok
        t.plain("root = pos")
        hit += t.open
        t.open = inval
        t.plain("pos = nxt[pos]")
    t.plain("assert(false)")
    t.open = nohit
    t.plain("pos = 0", "nroots++", "assert(nroots <= MAXR)", "root = nroots")  # tdp_mmu_alloc_sp
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
    # kvm_tdp_mmu_page_fault(vcpu, 0)
    read_lock(t)
    t.plain("TOUCH(hpa[_pid])")
    stale, fresh2 = t.split("(hpa[_pid] != 0 && r_invalid[hpa[_pid]]) || (hpa[_pid] == 0 && req[_pid])")
    t.open = fresh2
    rcu_read_lock(t)
    t.step("tdp_mmu_set_spte_atomic(root, 0, leaf)",
           ["TOUCH(hpa[_pid])", "assert(!r_invalid[hpa[_pid]])  /* spte-in-invalid-root */",
            "r_spte[hpa[_pid]] = 1"])
    rcu_read_unlock(t)
    t.open += stale
    read_unlock(t)
    t.open += back


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
    t.plain("assert(nxt[0] == 0)  /* WARN_ON(!list_empty(&kvm->arch.tdp_mmu_roots)) */")
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
#define MAXR %(MAXR)d          /* roots 1..MAXR; node 0 is the list head */
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

/* struct kvm_mmu_page, for roots 1..MAXR (index 0 unused) */
bool r_freed[MAXR + 1];       /* kfree()d by the RCU callback: any access is a use-after-free */
bool r_invalid[MAXR + 1];     /* role.invalid */
bool r_sched[MAXR + 1];       /* tdp_mmu_scheduled_root_to_zap */
bool r_spte[MAXR + 1];        /* sptes: the gfn-0 leaf */
byte r_ref[MAXR + 1];         /* tdp_mmu_root_count */
byte nroots;                  /* roots allocated so far (root n is the n-th) */
/* kvm->arch.tdp_mmu_roots: list_head links, node 0 = head */
byte nxt[MAXR + 1];
byte prv[MAXR + 1];

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
byte cb_root[MAXR];           /* pending callbacks, oldest first */
byte cb_wait[MAXR];           /* readers each still waits for */
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

#define TOUCH(r)   assert(!r_freed[r])   /* use-after-free */

#define LIST_ADD(r) nxt[r] = nxt[0]; prv[r] = 0; prv[nxt[0]] = r; nxt[0] = r
#define LIST_DEL(r) assert(prv[r] != POISON); prv[nxt[r]] = prv[r]; nxt[prv[r]] = nxt[r]; prv[r] = POISON

/* the grace periods of pending callbacks stop waiting for this thread */
#define RCU_QS() \
  rcu_mask = rcu_mask & ~(1 << _pid); \
  i = 0; do :: i < ncb -> cb_wait[i] = cb_wait[i] & ~(1 << _pid); i++ :: else -> break od; i = 0

#define CALL_RCU(r) assert(ncb < MAXR); cb_root[ncb] = r; cb_wait[ncb] = rcu_mask; ncb++

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

/* check_fast_zap_complete(): no live invalid root maps anything */
#define FAST_ZAP_COMPLETE() \
  i = 1; do :: i <= nroots -> assert(r_freed[i] || !(r_invalid[i] && r_spte[i])); i++ \
  :: else -> break od; i = 0

/* check_final(): list empty, every root freed, no callback left */
#define FINAL_CHECKS() \
  assert(nxt[0] == 0); assert(ncb == 0); \
  i = 1; do :: i <= nroots -> assert(r_freed[i]); i++ :: else -> break od; i = 0

#define CB_READY(k) (ncb > k && cb_wait[k] == 0)
""" % {"MAXR": MAXR, "MAXN": MAXN}  # noqa: UP031 - C-like text full of braces

PROCS = {
    "vcpu": "active [N] proctype vcpu() {\n  byte root, pos; bit snap, ch;",
    "memslot": "active proctype memslot() {\n  byte root, pos; bit snap, ch;",
    "destroy": "active proctype destroy() {\n  byte root, pos; bit snap, ch;",
}

RCU_DAEMON = r"""
/* rcu_callback_thread(): run the oldest callback whose grace period has elapsed;
   tdp_mmu_free_sp_rcu_callback() frees the root (kfree) */
active proctype rcu() {
  byte k;
end_rcu:
  do
  :: atomic { (CB_READY_ANY) ->
       k = 0; do :: cb_wait[k] == 0 -> break :: else -> k++ od;
       r_freed[cb_root[k]] = 1;
       do :: k + 1 < ncb -> cb_root[k] = cb_root[k + 1]; cb_wait[k] = cb_wait[k + 1]; k++
          :: else -> break od;
       ncb--; cb_root[ncb] = 0; cb_wait[ncb] = 0; k = 0 }
  od
}
"""


def generate() -> str:
    ready = " || ".join(f"CB_READY({k})" for k in range(MAXR))
    parts = [HEADER, f"#define CB_READY_ANY ({ready})\n"]
    for t in (vcpu_thread(), memslot_thread(), destroy_thread()):
        parts.append(t.render(PROCS[t.name]))
    parts.append(RCU_DAEMON)
    return "\n".join(parts)


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("memslot_delete.pml")
    out.write_text(generate())
    print(f"wrote {out}")
