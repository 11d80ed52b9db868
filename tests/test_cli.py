"""The command line contract: exit codes, one-line errors, JSON fields, the splat, replay."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from tdpmmu import report
from tdpmmu.api import Config
from tdpmmu.cli import app
from tdpmmu.explore.execution import TraceStep
from tdpmmu.explore.result import Limits, Stats
from tdpmmu.explore.runtime import Violation
from tdpmmu.explore.schedule import decode

runner = CliRunner()


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def one_error_line(result: Result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tdpmmu: error: ")
    assert "Traceback" not in result.output
    return lines[0]


# -- check ----------------------------------------------------------------------------


def test_pass_is_one_line() -> None:
    r = run("check", "vcpu-load", "--vcpus", "1")
    assert r.exit_code == 0, r.output
    pattern = r"PASS v6\.9 vcpu-load vcpus=1: no violation in \d+ states \(\d+ executions?\), \d+\.\d\ds\n"
    assert re.fullmatch(pattern, r.stdout)


def test_violation_json() -> None:
    r = run("check", "vcpu-load", "--mutant", "refcount-one", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout)  # exactly one object, nothing else on stdout
    assert out["verdict"] == "violation"
    run_of = (out["scenario"], out["kernel"], out["mutant"], out["vcpus"])
    assert run_of == ("vcpu-load", "v6.5", "refcount-one", 2)  # the mutant's kernel
    for key in ("states", "executions", "transitions", "max_depth"):
        assert isinstance(out[key], int) and out[key] > 0
    assert isinstance(out["seconds"], float)
    assert "reason" in out
    assert sorted(out["expected"]) == ["KVM_BUG_ON", "refcount", "use-after-free"]
    v = out["violation"]
    assert v["kind"] in out["expected"]
    assert v["message"] and v["function"] and v["thread"]
    assert re.fullmatch(r"\d+(:\d+)?(\*\d+)?(,\d+(:\d+)?(\*\d+)?)*", v["schedule"])
    assert len(v["trace"]) == len(decode(v["schedule"]))
    step = v["trace"][-1]
    assert set(step) == {"step", "thread", "function", "stack", "action", "notes"}
    assert step["function"] == step["stack"][-1]


def test_a_mutant_that_is_not_caught_says_so_and_where_it_would_be() -> None:
    r = run("check", "vcpu-load", "--mutant", "zap-unscheduled-roots")
    assert r.exit_code == 0 and r.stdout.startswith("PASS ")
    assert ("mutant zap-unscheduled-roots: not caught here (it expects KVM_BUG_ON); the scenario that "
            "exposes it: tdpmmu check memslot-delete --mutant zap-unscheduled-roots") in r.stdout
    r = run("check", "memslot-delete", "--mutant", "zap-unscheduled-roots", "--max-states", "5")
    assert r.exit_code == 3 and "mutant zap-unscheduled-roots: not caught so far" in r.stdout
    r = run("check", "stress", "--vcpus", "1", "--mutant", "put-before-zap", "--max-states", "0")
    assert r.exit_code == 0 and "mutant put-before-zap: harmless on v6.9, as claimed" in r.stdout


@pytest.mark.parametrize(("args", "says"), [
    (["--random", "10", "--search", "dpor"], "--random is a search of its own: it does not take --search"),
    (["--seed", "3"], "--seed is the seed of --random: give --random RUNS too"),
])
def test_options_that_would_be_ignored_are_bad_input(args: list[str], says: str) -> None:
    r = run("check", "vcpu-load", *args)
    assert r.exit_code == 2 and says in r.output


def test_the_shortening_of_a_trace_stays_within_the_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import tdpmmu.api

    given: list[float] = []
    real = tdpmmu.api.shortest

    def spy(program: Any, found: Any, limits: Limits, **kwargs: Any) -> Any:
        given.append(limits.shrink_time)
        return real(program, found, limits, **kwargs)

    monkeypatch.setattr(tdpmmu.api, "shortest", spy)
    config = Config("vcpu-load", mutant="no-recheck")
    r = tdpmmu.api.check(config, Limits(time_limit=30.0, shrink_time=60.0))
    assert r.verdict == "violation" and given and given[0] <= 30.0 - r.stats.seconds
    tdpmmu.api.check(config, Limits(shrink_time=60.0))  # no time limit: the shrink time as given
    assert given[1] == 60.0


def test_the_trace_ends_where_the_violation_fired() -> None:
    """The splat says what fired; the interleaving shows where, under its last step, and
    which root the seed question's KVM_BUG_ON met."""
    lines = run("check", "memslot-delete", "--mutant", "zap-unscheduled-roots").stdout.splitlines()
    end = next(i for i, line in enumerate(lines) if line.startswith("VIOLATION ")) - 1
    fired = next(i for i in range(end) if "<-- KVM_BUG_ON" in lines[i])
    tail = " ".join(line.strip() for line in lines[fired:end])
    assert tail.startswith("kvm_tdp_mmu_zap_invalidated_roots:") and "KVM_BUG_ON(!root->role.invalid)" in tail
    assert "/* root1 is valid */" in lines[fired - 1]


def test_version_and_contradicting_symmetry_options() -> None:
    r = run("--version")
    assert r.exit_code == 0 and r.stdout.startswith("tdpmmu ")
    r = run("check", "vcpu-load", "--no-symmetry", "--symmetry", "on")
    assert r.exit_code == 2 and "--no-symmetry and --symmetry on say opposite things" in r.output
    assert run("check", "vcpu-load", "--vcpus", "1", "--no-symmetry", "--symmetry", "off").exit_code == 0


def test_bad_input_with_json_is_also_one_json_object_on_stdout() -> None:
    for args in (["check", "nosuch", "--json"], ["check", "vcpu-load", "--vcpus", "99", "--json"],
                 ["replay", "vcpu-load", "-s", "9", "--json"]):
        bad = subprocess.run([sys.executable, "-m", "tdpmmu", *args], capture_output=True, text=True,
                             timeout=60)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1, args
        out = json.loads(bad.stdout)
        assert out["verdict"] == "error" and out["error"] in bad.stderr, args


def test_h_is_help() -> None:
    assert run("check", "-h").stdout.startswith("Usage: tdpmmu check")


def test_json_without_mutant_has_null_mutant() -> None:
    out = json.loads(run("check", "vcpu-load", "--vcpus", "1", "--json").stdout)
    assert out["verdict"] == "pass" and out["mutant"] is None and out["violation"] is None
    assert "expected" not in out


def test_violation_text_reads_like_a_splat() -> None:
    r = run("check", "vcpu-load", "--mutant", "refcount-one")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    header = r"WARNING: CPU: \d+ PID: 10\d\d at arch/x86/kvm/mmu/tdp_mmu\.c kvm_tdp_mmu_put_root"
    assert re.fullmatch(header, lines[0])
    assert lines[1].startswith("KVM_BUG_ON(")
    trace = lines.index("Call Trace:")
    assert lines[trace + 1] == " <TASK>"
    assert lines[trace + 2] == " kvm_tdp_mmu_put_root"  # innermost first
    assert " vcpu_run" in lines[trace + 2:lines.index(" </TASK>")]
    assert any(line.startswith("Interleaving (") for line in lines)
    assert "/* 1 -> 0: last reference */" in r.stdout
    assert lines[-3].startswith("schedule: ")
    assert lines[-2] == "threads:  0=vcpu0, 1=vcpu1, 2=destroy, 3=rcu, 4=kworker/u:0"  # (v6.5)
    assert lines[-1].startswith("replay:   tdpmmu replay vcpu-load --kernel v6.5 --mutant refcount-one ")
    assert all(len(line) <= 100 for line in lines if not line.startswith(("schedule:", "replay:")))


def test_interleaving_gives_each_thread_its_column() -> None:
    r = run("check", "vcpu-load", "--mutant", "no-recheck")
    assert r.exit_code == 1
    steps = [line for line in r.stdout.splitlines() if re.match(r"\s+\d+  ", line)]
    starts = {}
    for line in steps:
        m = re.match(r"(\s+\d+  )(\s*)(vcpu\d)  ", line)
        if m:
            starts[m.group(3)] = len(m.group(2))
    assert starts == {"vcpu0": 0, "vcpu1": 2}
    # the thread name only when the running thread changes
    named = sum(1 for line in steps if re.match(r"\s+\d+\s+vcpu\d  ", line))
    assert 2 <= named < len(steps)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["check", "no-such-scenario"], "unknown scenario 'no-such-scenario'"),
        (["check", "vcpu-load", "--kernel", "v2.6"], "unknown kernel 'v2.6'"),
        (["check", "vcpu-load", "--mutant", "nope"], "unknown mutant 'nope'"),
        (["check", "vcpu-load", "--vcpus", "0"], "--vcpus"),
        (["check", "vcpu-load", "--max-states", "-5"], "--max-states"),
        (["check", "vcpu-load", "--time-limit", "-1"], "--time-limit"),
        (["check", "vcpu-load", "--vcpus", "two"], "--vcpus"),
        (["check", "vcpu-load", "--frobnicate"], "--frobnicate"),
        (["check"], "scenario"),
        (["check", "vcpu-load", "--search", "bfs"], "unknown search 'bfs'"),
        (["check", "vcpu-load", "--symmetry", "off", "--symmetry", "maybe"], "--symmetry takes on or off"),
        (["frobnicate"], "frobnicate"),
        (["replay", "vcpu-load", "--schedule", "0,x"], "'x'"),
        (["replay", "vcpu-load", "--schedule", "0,9"], "step 2"),
        (["replay", "nope", "--schedule", "0"], "unknown scenario"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert needle in one_error_line(r)
    assert r.stdout == ""


@pytest.mark.parametrize(("args", "search", "symmetry"), [
    ([], "plain", True),  # auto: plain up to 2 vCPUs
    (["--vcpus", "3"], "dpor", True),  # auto: dpor from 3
    (["--search", "dpor"], "dpor", True),
    (["--search", "dpor", "--symmetry", "off"], "dpor", False),
    (["--random", "3"], "random", False),
    (["--search", "plain"], "plain", True),
    (["--search", "plain", "--symmetry", "off"], "plain", False),
    (["--search", "plain", "--no-symmetry"], "plain", False),
    (["--search", "plain", "--symmetry"], "plain", True),
    (["--preemptions", "0"], "preemption-bounded", True),
])
def test_json_says_which_search_ran(args: list[str], search: str, symmetry: bool) -> None:
    r = run("check", "vcpu-load", "--vcpus", "1", "--json", *args)  # (a later --vcpus wins)
    out = json.loads(r.stdout)
    assert (out["search"], out["symmetry"]) == (search, symmetry)


def test_limit_hit_is_incomplete_exit_3() -> None:
    r = run("check", "memslot-delete", "--max-states", "50")
    assert r.exit_code == 3, r.output
    assert r.stdout.startswith("INCOMPLETE v6.9 memslot-delete vcpus=2: --max-states 50 reached")
    assert re.search(r"covered \d+ states \(\d+ executions\)", r.stdout)
    out = json.loads(run("check", "memslot-delete", "--max-states", "50", "--json").stdout)
    assert out["verdict"] == "incomplete" and "max-states" in out["reason"] and out["states"] >= 50


def test_progress_goes_to_stderr_only() -> None:
    r = run("check", "memslot-delete", "--time-limit", "1.2", "--progress", "--json")
    assert r.exit_code == 3
    assert json.loads(r.stdout)["verdict"] == "incomplete"
    assert "states/s" in r.stderr


def test_progress_line() -> None:
    line = report.render_progress(Stats(states=12345, executions=678, max_depth=9, seconds=2.0))
    assert line.startswith("12,345 states  678 executions  6,172 states/s")


# -- replay ---------------------------------------------------------------------------


def test_replay_of_a_run_without_movers_says_so() -> None:
    """Without movers every release is a step: the schedule only replays that way."""
    found = run("check", "memslot-delete", "--mutant", "zap-unscheduled-roots", "--movers", "off",
                "--shrink-time", "0")
    assert found.exit_code == 1
    argv = shlex.split(found.stdout.splitlines()[-1].removeprefix("replay:").strip())
    assert argv[argv.index("--movers") + 1] == "off"
    again = run(*argv[1:], "--json")
    assert again.exit_code == 1 and json.loads(again.stdout)["violation"]["kind"] == "KVM_BUG_ON"
    assert json.loads(again.stdout)["movers"] is False
    assert run("check", "vcpu-load", "--movers", "maybe").exit_code == 2


def test_replay_reproduces_the_printed_violation() -> None:
    found = run("check", "vcpu-load", "--mutant", "no-recheck")
    assert found.exit_code == 1
    command = found.stdout.splitlines()[-1].removeprefix("replay:").strip()
    argv = shlex.split(command)
    assert argv[:2] == ["tdpmmu", "replay"]
    again = run(*argv[1:], "--json")
    assert again.exit_code == 1, again.output
    out = json.loads(again.stdout)
    first = json.loads(run("check", "vcpu-load", "--mutant", "no-recheck", "--json").stdout)["violation"]
    assert out["violation"]["kind"] == first["kind"] == "duplicate-root"
    assert out["violation"]["message"] == first["message"]
    assert out["violation"]["trace"] == first["trace"]
    text = run(*argv[1:])
    assert text.exit_code == 1
    assert "tdpmmu: duplicate-root in kvm_tdp_mmu_alloc_root" in text.stdout
    assert "Call Trace:" in text.stdout


def test_replay_without_violation_exits_0() -> None:
    r = run("replay", "vcpu-load", "--schedule", "0,0,1")
    assert r.exit_code == 0, r.output
    assert "NO VIOLATION v6.9 vcpu-load vcpus=2: 3 steps replayed" in r.stdout
    out = json.loads(run("replay", "vcpu-load", "-s", "0,0,1", "--json").stdout)
    assert out["verdict"] == "pass" and out["violation"] is None and not out["finished"]
    assert [s["thread"] for s in out["trace"]] == ["vcpu0", "vcpu0", "vcpu1"]


@pytest.mark.parametrize(("schedule", "says"), [
    ("9", "step 1 (9:0) cannot run first: there is no thread 9 (threads: 0=vcpu0, 1=vcpu1, 2=destroy"),
    ("1*500", "cannot run after the 25 before it: thread 1 (vcpu1) has finished"),
    ("0:5", "vcpu0's next step, kvm_request_pending(vcpu0), has 1 branch(es), not 6"),
    ("0*99999999999", "the schedule has more than 1000000 steps"),
    ("0,,0", "part 2 of the schedule is '', not TID"),
    ("0:-1", "part 1 of the schedule is '0:-1'"),
])
def test_a_schedule_that_cannot_run_is_one_line_saying_why(schedule: str, says: str) -> None:
    r = run("replay", "vcpu-load", "--mutant", "no-recheck", "--schedule", schedule)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and r.output.count("\n") == 1
    assert says in r.output


# -- list -----------------------------------------------------------------------------


def test_list() -> None:
    r = run("list")
    assert r.exit_code == 0
    for name in ("vcpu-load", "memslot-delete", "v6.8+p7", "576a15de8d29", "refcount-one", "KVM_BUG_ON"):
        assert name in r.stdout
    out = json.loads(run("list", "--json").stdout)
    assert {k["name"] for k in out["kernels"]} >= {"v6.8", "v6.9"}
    assert [k["name"] for k in out["kernels"] if k["default"]] == ["v6.9"]
    mutant = next(m for m in out["mutants"] if m["name"] == "refcount-one")
    assert mutant["scenario"] == "vcpu-load" and "KVM_BUG_ON" in mutant["expected"] and mutant["summary"]
    assert mutant["kernel"] == "v6.5" and mutant["caught_on"] == ["v6.5", "v6.9"]
    # A mutant harmless on one kernel and caught on another says both.
    pbz = next(m for m in out["mutants"] if m["name"] == "put-before-zap")
    assert pbz["harmless"] and pbz["kernel"] == "v6.9" and pbz["caught_on"] == ["v6.1"]
    assert "harmless on v6.9 (proved in stress)" in r.stdout and "on v6.1 it expects" in r.stdout
    assert "v6.1" in {k["name"] for k in out["kernels"]}


# -- rendering details ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "path"),
    [
        ("kvm_tdp_mmu_put_root", "arch/x86/kvm/mmu/tdp_mmu.c"),
        ("tdp_mmu_next_root", "arch/x86/kvm/mmu/tdp_mmu.c"),
        ("kvm_mmu_free_roots", "arch/x86/kvm/mmu/mmu.c"),
        ("mmu_alloc_direct_roots", "arch/x86/kvm/mmu/mmu.c"),
        ("is_page_fault_stale", "arch/x86/kvm/mmu/mmu.c"),
        ("vcpu_enter_guest", "arch/x86/kvm/x86.c"),
        ("kvm_put_kvm", "virt/kvm/kvm_main.c"),
    ],
)
def test_source_file(function: str, path: str) -> None:
    assert report.source_file(function) == path


def _step(tid: int, stack: list[str]) -> TraceStep:
    return TraceStep(0, tid, f"vcpu{tid}", stack[-1], stack, "read_lock(kvm.mmu_lock)")


@pytest.mark.parametrize(
    ("kind", "header"),
    [
        ("use-after-free", "BUG: KASAN: slab-use-after-free in kvm_tdp_mmu_put_root"),
        ("deadlock", "WARNING: possible deadlock in kvm_tdp_mmu_put_root"),
        ("WARNING", "WARNING: CPU: 1 PID: 1001 at arch/x86/kvm/mmu/tdp_mmu.c kvm_tdp_mmu_put_root"),
        ("leak", "tdpmmu: leak in kvm_tdp_mmu_put_root"),
    ],
)
def test_splat_headers(kind: str, header: str) -> None:
    v = Violation(kind, "boom", function="kvm_tdp_mmu_put_root", thread="vcpu1")
    trace = [_step(0, ["vcpu_run"]), _step(1, ["vcpu_run", "kvm_mmu_free_roots", "kvm_tdp_mmu_put_root"])]
    text = report.render_splat(Config("vcpu-load"), v, trace)
    assert text.splitlines()[:2] == [header, "boom"]
    assert "Comm: vcpu1" in text
    assert text.splitlines()[-4:-1] == [" kvm_tdp_mmu_put_root", " kvm_mmu_free_roots", " vcpu_run"]


def test_call_trace_cut_back_to_the_reporting_function() -> None:
    v = Violation("KVM_BUG_ON", "x", function="zap", thread="t")
    assert report.call_trace(v, _step(0, ["outer", "zap", "next_root"])) == ["zap", "outer"]
    assert report.call_trace(v, _step(0, ["outer"])) == ["zap", "outer"]


# -- the real entry points ------------------------------------------------------------


def test_python_dash_m() -> None:
    ok = subprocess.run([sys.executable, "-m", "tdpmmu", "check", "vcpu-load", "--vcpus", "1"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("PASS ")
    bad = subprocess.run([sys.executable, "-m", "tdpmmu", "check", "vcpu-load", "--bogus"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("tdpmmu: error: No such option: --bogus")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_is_incomplete(sig: signal.Signals) -> None:
    """Ctrl-C, or `timeout`'s SIGTERM, stops the search and keeps what it covered."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tdpmmu", "check", "memslot-delete", "--json", "--progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background job ignores it
    )
    assert proc.stderr is not None
    assert "states/s" in proc.stderr.readline()  # the search is running
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, err
    result = json.loads(out)
    assert result["verdict"] == "incomplete" and result["reason"] == "interrupted" and result["states"] > 0


def test_an_interrupted_corpus_keeps_the_rows_it_finished() -> None:
    from tdpmmu.kvm.corpus import CORPUS, CorpusInterrupted, run_corpus

    rows = [r for r in CORPUS if r.id in ("B05", "M8")]
    asked: list[int] = []

    def stop() -> bool:  # as if Ctrl-C came during the second row
        asked.append(1)
        return len(asked) == 2

    with pytest.raises(CorpusInterrupted) as stopped:
        run_corpus(1, Limits(time_limit=30), rows=rows, stop=stop)
    assert [r.row.id for r in stopped.value.done] == ["B05"] and stopped.value.done[0].caught


def test_corpus_command_runs_the_rows_asked_for() -> None:
    """The whole corpus runs in tests/test_corpus.py; here the command's contract."""
    r = run("corpus", "--json", "--only", "B05,no-recheck,request-after-unlock")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["ok"] is True
    assert [(row["id"], row["expressible"]) for row in out["rows"]] == [
        ("B05", True), ("M1", True), ("M4", False)]
    assert all(row["caught"] and not row["false_positive"] for row in out["rows"] if row["expressible"])
    table = run("corpus", "--only", "B05")
    assert table.exit_code == 0 and "B05" in table.stdout and "M1" not in table.stdout


def test_corpus_command_rejects_unknown_rows() -> None:
    assert "unknown corpus row B99" in one_error_line(run("corpus", "--only", "B99"))


def test_gfns_option() -> None:
    out = json.loads(run("check", "mmu-notifier", "--vcpus", "1", "--gfns", "1", "--json").stdout)
    assert out["verdict"] == "pass" and out["gfns"] == 1
    default = json.loads(run("check", "mmu-notifier", "--vcpus", "1", "--json").stdout)
    assert default["gfns"] == 2 and default["states"] > out["states"]
    assert "--gfns must be between 1 and 4" in one_error_line(run("check", "stress", "--gfns", "9"))
