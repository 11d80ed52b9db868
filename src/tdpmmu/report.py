"""Rendering results for people (a kernel-style splat) and for programs (JSON).

Pure functions: they take what a check or a replay produced and return a string or a
dict; printing and exit codes belong to ``tdpmmu.cli``.
"""

from __future__ import annotations

import shlex
import textwrap
from typing import Any

from tdpmmu.api import Config
from tdpmmu.explore.execution import Schedule, TraceStep
from tdpmmu.explore.result import Result, Stats
from tdpmmu.explore.runtime import Violation
from tdpmmu.explore.schedule import encode
from tdpmmu.kvm.registry import MUTANTS, SCENARIOS
from tdpmmu.kvm.versions import DEFAULT_KERNEL, KERNELS

WIDTH = 100  # the terminal the text output is laid out for

# Which kernel source file a model function stands for (first match wins).
SOURCES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("kvm_tdp_mmu_", "tdp_mmu_"), "arch/x86/kvm/mmu/tdp_mmu.c"),
    (("kvm_mmu_", "mmu_", "is_page_fault"), "arch/x86/kvm/mmu/mmu.c"),
    (("vcpu_",), "arch/x86/kvm/x86.c"),
)
DEFAULT_SOURCE = "virt/kvm/kvm_main.c"

# Kinds the kernel reports through WARN(): lockdep_assert_held() and refcount_t's
# saturation warnings are WARN_ON()s too.
WARN_KINDS = frozenset({"WARNING", "KVM_BUG_ON", "lockdep", "refcount"})
PID_BASE = 1000


def source_file(function: str) -> str:
    for prefixes, path in SOURCES:
        if function.startswith(prefixes):
            return path
    return DEFAULT_SOURCE


def kernel_label(config: Config) -> str:
    """The kernel under test as the model names it, e.g. ``v6.9+refcount-one``."""
    return f"{config.kernel}+{config.mutant}" if config.mutant else config.kernel


def expected_kinds(config: Config) -> list[str] | None:
    return sorted(MUTANTS[config.mutant].expect) if config.mutant else None


def replay_command(config: Config, schedule: Schedule) -> str:
    args = ["tdpmmu", "replay", config.scenario, "--kernel", config.kernel]
    if config.mutant:
        args += ["--mutant", config.mutant]
    args += ["--vcpus", str(config.vcpus)]
    if config.gfns is not None:
        args += ["--gfns", str(config.gfns)]
    if not config.movers:  # the schedule's steps are the unreduced system's
        args += ["--movers", "off"]
    args += ["--schedule", encode(schedule)]
    return shlex.join(args)


# -- the splat ------------------------------------------------------------------------


def culprit(violation: Violation, trace: list[TraceStep]) -> TraceStep | None:
    """The step that hit the violation: the violating thread's last step (the last
    step at all for violations no one thread owns, like a deadlock or a leak)."""
    for step in reversed(trace):
        if step.thread == violation.thread:
            return step
    return trace[-1] if trace else None


def call_trace(violation: Violation, step: TraceStep | None) -> list[str]:
    """The violating call chain, innermost first. A step's recorded stack is where the
    thread stood *before* it ran; the violation names the function that reported it,
    so the chain is cut back to that function, or extended by it."""
    if violation.stack:  # recorded when the violation was reported
        return violation.stack[::-1]
    stack = list(step.stack) if step else []
    fn = violation.function
    if fn in stack:
        del stack[len(stack) - stack[::-1].index(fn):]
    elif fn:
        stack.append(fn)
    return stack[::-1]


def splat_header(violation: Violation, step: TraceStep | None) -> str:
    kind, fn = violation.kind, violation.function
    tid = step.tid if step else 0
    if kind in WARN_KINDS:
        where = f"{source_file(fn)} {fn}" if fn else "the end of the execution"
        return f"WARNING: CPU: {tid} PID: {PID_BASE + tid} at {where}"
    if kind == "use-after-free":
        return f"BUG: KASAN: slab-use-after-free in {fn or '?'}"
    if kind == "deadlock":
        return "WARNING: possible deadlock" + (f" in {fn}" if fn else "")
    if kind == "suspicious RCU usage":
        return "WARNING: suspicious RCU usage" + (f" in {fn}" if fn else "")
    return f"tdpmmu: {kind} " + (f"in {fn}" if fn else "at the end of the execution")


def render_splat(config: Config, violation: Violation, trace: list[TraceStep]) -> str:
    """Header, message, task line and Call Trace, the way the kernel prints them."""
    step = culprit(violation, trace)
    tid = step.tid if step else 0
    comm = violation.thread or (step.thread if step else "?")
    lines = [splat_header(violation, step), violation.message]
    if violation.details:  # a model error's Python traceback
        lines.append(violation.details.rstrip())
    lines.append(f"CPU: {tid} PID: {PID_BASE + tid} Comm: {comm} Not tainted {kernel_label(config)}")
    frames = call_trace(violation, step)
    if frames:
        lines += ["Call Trace:", " <TASK>", *(f" {fn}" for fn in frames), " </TASK>"]
    return "\n".join(lines)


# -- the interleaving -----------------------------------------------------------------


def render_trace(trace: list[TraceStep], width: int = WIDTH, fired: Violation | None = None) -> str:
    """One line per step; each thread indented by 2 * its id, its name shown only when
    the running thread changes. Notes (what the step did) follow as a C comment. A
    violation ``fired`` in the last step is shown under it, where it fired."""
    if not trace:
        return "  (no steps)"
    text = _render_steps(trace, width)
    if fired is None:
        return text
    last = trace[-1]
    indent = f"  {' ' * len(str(last.index))}  {' ' * (2 * last.tid)}{' ' * len(last.thread)}  "
    where = f"{fired.function}: " if fired.function else ""
    message = fired.message.splitlines()[0] if fired.message else fired.kind
    line = f"{indent}{where}{message}   <-- {fired.kind}"
    if len(line) <= width:
        return f"{text}\n{line}"
    wrapped = textwrap.wrap(message, width - len(indent) - 2)
    return "\n".join([text, f"{indent}{where}<-- {fired.kind}", *(f"{indent}  {w}" for w in wrapped)])


def _render_steps(trace: list[TraceStep], width: int) -> str:
    name_w = max(len(s.thread) for s in trace)
    num_w = len(str(trace[-1].index))
    lines = []
    previous = -1
    for s in trace:
        name = s.thread if s.tid != previous else ""
        previous = s.tid
        prefix = f"  {s.index:>{num_w}}  {' ' * (2 * s.tid)}{name:<{name_w}}  "
        indent = " " * len(prefix)
        head = f"{prefix}{s.function}: {s.action}"
        if len(head) > width:  # the action on its own line, under the function
            lines.append(f"{prefix}{s.function}:")
            head = f"{indent}  {s.action}"
        if s.notes:
            note = f"/* {'; '.join(s.notes)} */"
            if len(head) + 2 + len(note) <= width:
                head += f"  {note}"
            else:
                lines.append(head)
                head = f"{indent}  {note}"
        lines.append(head)
    return "\n".join(lines)


def _counts(stats: Stats) -> str:
    plural = "" if stats.executions == 1 else "s"
    return f"{stats.states} states ({stats.executions} execution{plural}), {stats.seconds:.2f}s"


def _run(config: Config) -> str:
    size = f" gfns={config.nr_gfns}" if config.nr_gfns != 1 else ""  # 1 for root-only scenarios
    return f"{kernel_label(config)} {config.scenario} vcpus={config.vcpus}{size}"


def _mutant_lines(config: Config, violation: Violation) -> list[str]:
    """Whether the violation is one the mutant is meant to be caught by."""
    expected = expected_kinds(config)
    if not expected:
        return []
    hit = "caught as expected" if violation.kind in expected else "caught, but not as expected"
    return [f"mutant {config.mutant}: {hit} ({' or '.join(expected)})"]


def thread_names(config: Config) -> list[str]:
    """Each thread's name, by the number a schedule gives it."""
    _, specs = config.program().build()
    return [spec.name for spec in specs]


def _threads(config: Config) -> str:
    return "threads:  " + ", ".join(f"{i}={name}" for i, name in enumerate(thread_names(config)))


def _mutant_missed(config: Config, verdict: str) -> list[str]:
    """What a run of a mutant that found nothing means: no bug here, or not yet."""
    if not config.mutant:
        return []
    m = MUTANTS[config.mutant]
    if m.harmless and config.kernel == m.kernel:
        return [f"mutant {m.name}: harmless on {m.kernel}, as claimed"] if verdict == "pass" else []
    found = "not caught here" if verdict == "pass" else "not caught so far"
    where = "" if config.scenario == m.scenario else \
        f"; the scenario that exposes it: tdpmmu check {m.scenario} --mutant {m.name}"
    return [f"mutant {m.name}: {found} (it expects {' or '.join(sorted(m.expect))}){where}"]


def render_result(config: Config, result: Result) -> str:
    """``tdpmmu check``'s text output."""
    stats = result.stats
    if result.verdict == "pass":
        return "\n".join([f"PASS {_run(config)}: no violation in {_counts(stats)}",
                          *_mutant_missed(config, "pass")])
    if result.verdict == "incomplete":
        return "\n".join([
            f"INCOMPLETE {_run(config)}: {result.reason or 'stopped'}",
            f"covered {_counts(stats)}, {stats.transitions} transitions, max depth {stats.max_depth};"
            " no violation so far",
            *_mutant_missed(config, "incomplete"),
        ])
    assert result.violation is not None
    v = result.violation
    return "\n".join([
        render_splat(config, v, result.trace),
        "",
        f"Interleaving ({len(result.trace)} steps, "
        f"{'a shortest one' if result.minimal else 'not proved shortest'}):",
        render_trace(result.trace, fired=v),
        "",
        f"VIOLATION {_run(config)}: {v.kind} after {_counts(stats)}",
        *_mutant_lines(config, v),
        f"schedule: {encode(result.schedule)}",
        _threads(config),
        f"replay:   {replay_command(config, result.schedule)}",
    ])


def render_replay(
    config: Config, schedule: Schedule, trace: list[TraceStep], violation: Violation | None, finished: bool
) -> str:
    """``tdpmmu replay``'s text output: the interleaving, then the violation it reaches."""
    parts = [f"Interleaving ({len(trace)} steps):", render_trace(trace), ""]
    if violation is not None:
        parts += [render_splat(config, violation, trace), "",
                  f"VIOLATION {_run(config)}: {violation.kind} after {len(trace)} steps",
                  *_mutant_lines(config, violation)]
    else:
        end = "the execution ran to its end" if finished else "the execution can go on"
        parts.append(f"NO VIOLATION {_run(config)}: {len(trace)} steps replayed, {end}")
    parts += [f"schedule: {encode(schedule)}", _threads(config)]
    return "\n".join(parts)


def render_progress(stats: Stats) -> str:
    rate = stats.states / stats.seconds if stats.seconds > 0 else 0.0
    return (f"{stats.states:,} states  {stats.executions:,} executions  {rate:,.0f} states/s"
            f"  depth {stats.max_depth}  {stats.seconds:.0f}s")


# -- JSON -----------------------------------------------------------------------------


def trace_json(trace: list[TraceStep]) -> list[dict[str, Any]]:
    return [
        {"step": s.index, "thread": s.thread, "function": s.function, "stack": list(s.stack),
         "action": s.action, "notes": list(s.notes)}
        for s in trace
    ]


def violation_json(violation: Violation, trace: list[TraceStep], schedule: Schedule) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": violation.kind,
        "message": violation.message,
        "function": violation.function,
        "thread": violation.thread,
        "trace": trace_json(trace),
        "schedule": encode(schedule),
    }
    if violation.details:
        out["details"] = violation.details
    return out


def _config_json(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scenario": config.scenario,
        "kernel": config.kernel,
        "mutant": config.mutant,
        "vcpus": config.vcpus,
        "gfns": config.nr_gfns,
        "movers": config.movers,
        "threads": thread_names(config),  # (a schedule's thread ids index it)
    }
    if config.mutant:
        out["expected"] = expected_kinds(config)
    return out


def result_json(config: Config, result: Result) -> dict[str, Any]:
    """``tdpmmu check --json``: one object."""
    s = result.stats
    out: dict[str, Any] = {
        "verdict": result.verdict,
        "minimal": result.minimal,
        **_config_json(config),
        "search": config.effective_search,
        "cache": config.cache,
        "symmetry": config.symmetry and config.cache and config.effective_search != "random",
        "states": s.states,
        "executions": s.executions,
        "transitions": s.transitions,
        "replayed": s.replayed,
        "max_depth": s.max_depth,
        "seconds": round(s.seconds, 6),
        "reason": result.reason or None,
        "violation": None,
    }
    if result.violation is not None:
        out["violation"] = violation_json(result.violation, result.trace, result.schedule)
        out["replay"] = replay_command(config, result.schedule)
    return out


def replay_json(
    config: Config, schedule: Schedule, trace: list[TraceStep], violation: Violation | None, finished: bool
) -> dict[str, Any]:
    """``tdpmmu replay --json``: one object, the trace whether or not it ends in a violation."""
    return {
        "verdict": "violation" if violation is not None else "pass",
        **_config_json(config),
        "schedule": encode(schedule),
        "steps": len(trace),
        "finished": finished,
        "trace": trace_json(trace),
        "violation": violation_json(violation, trace, schedule) if violation is not None else None,
    }


# -- tdpmmu list ----------------------------------------------------------------------


def _squash(text: str) -> str:
    return " ".join(text.split())


def catalog_json() -> dict[str, Any]:
    return {
        "scenarios": [{"name": s.name, "summary": _squash(s.summary)} for s in SCENARIOS.values()],
        "kernels": [{"name": name, "commit": k.COMMIT, "default": name == DEFAULT_KERNEL}
                    for name, k in KERNELS.items()],
        "mutants": [{"name": m.name, "expected": sorted(m.expect), "scenario": m.scenario,
                     "summary": _squash(m.summary), "origin": m.origin, "harmless": m.harmless or None,
                     "kernel": m.kernel, "caught_on": list(m.caught_kernels)}
                    for m in MUTANTS.values()],
    }


def _table(rows: list[tuple[str, list[str]]], width: int) -> list[str]:
    """Names in a column, each with paragraphs wrapped beside it."""
    name_w = max(len(n) for n, _ in rows)
    indent = " " * (name_w + 4)
    out = []
    for name, paragraphs in rows:
        first = f"  {name:<{name_w}}  "
        for text in paragraphs:
            out += textwrap.wrap(text, width, initial_indent=first, subsequent_indent=indent)
            first = indent
    return out


def _expectation(m: dict[str, Any]) -> str:
    expects = f"expects {' or '.join(m['expected']) or '(none recorded)'} in {m['scenario']}"
    if m["harmless"]:
        caught = f"; on {', '.join(m['caught_on'])} it {expects}" if m["caught_on"] else ""
        return (f"harmless on {m['kernel']} (proved in {m['scenario']}): {m['harmless']}{caught}; "
                f"origin: {m['origin']}")
    return f"{expects} on {', '.join(m['caught_on'])}; origin: {m['origin']}"


def render_catalog(width: int = WIDTH) -> str:
    """``tdpmmu list``."""
    c = catalog_json()
    lines = ["Scenarios:"]
    lines += _table([(s["name"], [s["summary"]]) for s in c["scenarios"]], width)
    lines += ["", "Kernels:"]
    lines += _table([(k["name"], [k["commit"] + (" [default]" if k["default"] else "")])
                     for k in c["kernels"]], width)
    lines += ["", "Mutants:"]
    lines += _table([(m["name"], [_expectation(m), m["summary"]]) for m in c["mutants"]], width)
    return "\n".join(lines)
