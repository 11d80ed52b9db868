"""The ``tdpmmu`` command: parse, call ``tdpmmu.api``, render with ``tdpmmu.report``, exit.

Exit codes: 0 no violation, 1 violation, 2 bad input (one line on stderr), 3 incomplete
(a limit was hit or the search was interrupted).
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.status import Status
from rich.text import Text
from typer.core import TyperGroup

from tdpmmu import __version__, report
from tdpmmu.api import BadInput, Config, kernel_for
from tdpmmu.api import check as run_check
from tdpmmu.explore.execution import replay_checked
from tdpmmu.explore.result import Limits, Stats
from tdpmmu.explore.schedule import decode
from tdpmmu.kvm.versions import DEFAULT_KERNEL

EXIT_PASS, EXIT_VIOLATION, EXIT_BAD_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT = {"pass": EXIT_PASS, "violation": EXIT_VIOLATION, "incomplete": EXIT_INCOMPLETE}
PROG = "tdpmmu"


# Whether the command line asks for --json: then bad input is also one JSON object on
# stdout, for a script that reads only that.
_JSON_ASKED: list[bool] = [False]


def _say_error(message: str) -> None:
    typer.echo(f"{PROG}: error: {message}", err=True)
    if _JSON_ASKED[0]:
        typer.echo(json.dumps({"verdict": "error", "error": message}))


def fail(message: str) -> NoReturn:
    _say_error(message)
    raise typer.Exit(EXIT_BAD_INPUT)


def _symmetry_flag(argv: list[str]) -> list[str]:
    """``--symmetry`` without a value (the flag it used to be) means ``--symmetry on``."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--symmetry" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("on")
    return out


class _Group(TyperGroup):
    """Usage errors, like our own bad-input errors, as one line on stderr with exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if args:
            args = (_symmetry_flag(list(args[0] if args[0] is not None else sys.argv[1:])), *args[1:])
        else:
            kwargs["args"] = _symmetry_flag(list(kwargs.get("args") or sys.argv[1:]))
        _JSON_ASKED[0] = "--json" in (args[0] if args else kwargs["args"])
        if not kwargs.get("standalone_mode", True):  # the caller handles errors
            return super().main(*args, **kwargs)
        kwargs.update(standalone_mode=False, prog_name=kwargs.get("prog_name") or PROG)
        try:
            code = super().main(*args, **kwargs)
        except typer.TyperException as e:  # typer's own usage errors: exit code 2
            ctx = getattr(e, "ctx", None)
            hint = f" (try '{ctx.command_path} --help')" if ctx is not None else ""
            _say_error(f"{e.format_message()}{hint}")
            sys.exit(e.exit_code)
        except typer.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_Group,
    name=PROG,
    help="Check the KVM x86 TDP MMU root protocol model over every interleaving.",
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)

# -- shared options -------------------------------------------------------------------

Scenario = Annotated[str, typer.Argument(help="Scenario to run (see `tdpmmu list`).", show_default=False)]
Kernel = Annotated[str | None, typer.Option(
    "--kernel", "-k", help=f"Kernel version to model (see `tdpmmu list`) [default: {DEFAULT_KERNEL}, "
    "or the mutant's].", show_default=False)]
Mutant = Annotated[
    str | None,
    typer.Option("--mutant", "-m", help="Deliberate bug to apply to the kernel.", show_default=False),
]
Vcpus = Annotated[int, typer.Option("--vcpus", "-n", help="Number of vCPU threads (1-8).")]
Gfns = Annotated[int | None, typer.Option(
    "--gfns", help="Guest frames per root (1-4): page-table size [default: the scenario's].",
    show_default=False)]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Movers = Annotated[str, typer.Option(
    "--movers", metavar="[on|off]", help="Run each release (unlock) with the step before it, a "
    "reduction that loses no state (Lipton's left movers); off: every release is a step.")]


def _on(value: str, option: str = "--movers") -> bool:
    if value not in ("on", "off"):
        fail(f"{option} takes on or off, not {value!r}")
    return value == "on"


def _emit(text_or_obj: str | dict[str, Any]) -> None:
    if isinstance(text_or_obj, str):
        typer.echo(text_or_obj)
    else:
        typer.echo(json.dumps(text_or_obj, indent=2))


# -- progress -------------------------------------------------------------------------


class ProgressDisplay:
    """States, executions and rate on stderr once a run has lasted a second: a live
    status line on a terminal, a line every few seconds otherwise."""

    AFTER = 1.0  # seconds before anything is shown
    EVERY = 5.0  # seconds between lines when stderr is not a terminal

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self.status: Status | None = None
        self.shown_at = -self.EVERY

    def __call__(self, stats: Stats) -> None:
        if not self.enabled or stats.seconds < self.AFTER:
            return
        line = Text(report.render_progress(stats))
        if self.console.is_terminal:
            if self.status is None:
                self.status = self.console.status(line)
                self.status.start()
            else:
                self.status.update(line)
        elif stats.seconds - self.shown_at >= self.EVERY:
            self.shown_at = stats.seconds
            self.console.print(line)

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None


# -- commands -------------------------------------------------------------------------


@app.command()
def check(
    ctx: typer.Context,
    scenario: Scenario,
    kernel: Kernel = None,
    mutant: Mutant = None,
    vcpus: Vcpus = 2,
    gfns: Gfns = None,
    max_states: Annotated[int, typer.Option(min=0, help="Stop after this many states (0: no limit).")] = 0,
    time_limit: Annotated[
        float, typer.Option(min=0.0, help="Stop after this many seconds (0: no limit).")
    ] = 0.0,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Do not prune states seen before: run every interleaving.")
    ] = False,
    preemptions: Annotated[
        int | None, typer.Option(min=0, help="Only schedules with at most K preemptions (CHESS); "
                                 "a pass is then 'incomplete', not a proof.", show_default=False)
    ] = None,
    random_runs: Annotated[
        int, typer.Option("--random", min=0, help="Random search (PCT priorities): this many runs.")
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed of --random.")] = 0,
    shrink_time: Annotated[
        float, typer.Option(min=0.0, help="Seconds to look for a shorter counterexample (0: keep the first).")
    ] = 10.0,
    search: Annotated[
        str, typer.Option(help="Exhaustive search: dpor (partial-order reduction), plain, or auto "
                          "(whichever is faster for the vCPU count: plain up to 2, dpor from 3).")
    ] = "auto",
    symmetry: Annotated[
        str, typer.Option("--symmetry", metavar="[on|off]",
                          help="Explore states equal up to swapping vCPUs once (with the cache; "
                          "not --random).")
    ] = "on",
    no_symmetry: Annotated[bool, typer.Option("--no-symmetry", help="Same as --symmetry off.")] = False,
    movers: Movers = "on",
    as_json: AsJson = False,
    progress: Annotated[
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress on stderr [default: when it is a terminal].",
                     show_default=False),
    ] = None,
) -> None:
    """Explore every interleaving of SCENARIO; exit 0 pass, 1 violation, 2 bad input, 3 incomplete."""
    given = ctx.get_parameter_source("symmetry")
    if no_symmetry and symmetry == "on" and given is not None and given.name == "COMMANDLINE":
        fail("--no-symmetry and --symmetry on say opposite things: give one")
    config = Config(scenario, kernel or kernel_for(mutant), mutant, vcpus, gfns, cache=not no_cache,
                    symmetry=_on(symmetry, "--symmetry") and not no_symmetry, movers=_on(movers),
                    search=search, preemptions=preemptions, random_runs=random_runs, seed=seed)
    limits = Limits(max_states=max_states, time_limit=time_limit, shrink_time=shrink_time)
    try:
        with ProgressDisplay(sys.stderr.isatty() if progress is None else progress) as show:
            result = run_check(config, limits, show)
    except BadInput as e:
        fail(str(e))
    _emit(report.result_json(config, result) if as_json else report.render_result(config, result))
    raise typer.Exit(EXIT[result.verdict])


@app.command()
def replay(
    scenario: Scenario,
    schedule: Annotated[
        str, typer.Option("--schedule", "-s",
                          help="Steps as thread ids, e.g. 0*2,1,2:1 (TID, TID:BRANCH, TID*COUNT), "
                               "as check prints them.",
                          show_default=False)
    ],
    kernel: Kernel = None,
    mutant: Mutant = None,
    vcpus: Vcpus = 2,
    gfns: Gfns = None,
    movers: Movers = "on",
    as_json: AsJson = False,
) -> None:
    """Re-run one interleaving of SCENARIO, print its trace; exit 1 if it reaches a violation."""
    config = Config(scenario, kernel or kernel_for(mutant), mutant, vcpus, gfns, movers=_on(movers))
    try:
        steps = decode(schedule)
        ex, violation = replay_checked(config.program(), steps, max_steps=Limits().max_steps)
    except ValueError as e:  # BadInput, BadSchedule, or a step that is not enabled
        fail(str(e))
    finished = violation is not None or not ex.enabled()
    done = steps[: len(ex.trace)]
    if as_json:
        _emit(report.replay_json(config, done, ex.trace, violation, finished))
    else:
        _emit(report.render_replay(config, done, ex.trace, violation, finished))
    raise typer.Exit(EXIT_VIOLATION if violation is not None else EXIT_PASS)


@app.command("list")
def list_(as_json: AsJson = False) -> None:
    """List scenarios, kernel versions and mutants."""
    _emit(report.catalog_json() if as_json else report.render_catalog())


@app.command()
def corpus(
    vcpus: Annotated[int, typer.Option(min=1, max=8, help="vCPUs per row (some rows need 2).")] = 1,
    time_limit: Annotated[
        float, typer.Option(min=0.0, help="Seconds per search (0: no limit).")
    ] = 60.0,
    only: Annotated[
        str | None, typer.Option(help="Only these rows: ids or mutant names, comma-separated (B04,M1).",
                                 show_default=False)
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Run the historical-bug corpus: every mutant must be caught, and every unmutated
    kernel must pass its scenario; exit 1 otherwise."""
    from tdpmmu.kvm.corpus import CORPUS, CorpusInterrupted, CorpusResult, corpus_ok, format_table, run_corpus

    rows = CORPUS
    if only is not None:
        wanted = {w.strip() for w in only.split(",") if w.strip()}
        rows = [r for r in CORPUS if r.id in wanted or r.name in wanted]
        unknown = wanted - {r.id for r in rows} - {r.name for r in rows}
        if unknown or not rows:
            fail(f"unknown corpus row {', '.join(sorted(unknown)) or repr(only)}; "
                 f"known: {', '.join(sorted({r.id for r in CORPUS}))} or a mutant name")

    def done(r: CorpusResult) -> None:
        if sys.stderr.isatty():
            typer.echo(f"  {r.row.id} {r.row.name} done", err=True)

    interrupted = False
    try:
        results = run_corpus(vcpus, Limits(time_limit=time_limit), rows=rows, progress=done,
                             stop=lambda: bool(_SIGNALLED))
    except CorpusInterrupted as stop:  # the rows done so far, and exit 3
        results, interrupted = stop.done, True
    ok = corpus_ok(results)
    if as_json:
        _emit({"ok": ok, "vcpus": vcpus, "interrupted": interrupted, "rows": [
            {"id": r.row.id, "mutant": r.row.name, "kernel": r.row.kernel, "scenario": r.row.scenario,
             "expressible": r.expressible, "why_not": r.row.why_not, "caught": r.caught,
             "found": r.mutant.kind if r.mutant else None,
             "executions": r.mutant.executions if r.mutant else None,
             "seconds": round(r.mutant.seconds, 3) if r.mutant else None,
             "trace_length": r.mutant.trace_len if r.mutant else None,
             "false_positive": r.false_positive} for r in results]})
    else:
        _emit(format_table(results))
        if interrupted:
            _emit(f"interrupted: {len(results)} of {len(rows)} rows run")
    raise typer.Exit(EXIT_INCOMPLETE if interrupted else 0 if ok else 1)


# The signals that stopped this run (SIGINT: Ctrl-C; SIGTERM: `timeout`, a batch system).
# Both interrupt the search the way Ctrl-C does, which keeps what it found.
_SIGNALLED: list[int] = []


def _interrupt(signum: int, frame: object) -> None:
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt


def _version(value: bool) -> None:
    if value:
        typer.echo(f"{PROG} {__version__}")
        raise typer.Exit(EXIT_PASS)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Check the KVM x86 TDP MMU root protocol model over every interleaving."""


def main() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # (a background job ignores SIGINT)
            signal.signal(sig, _interrupt)
    app(prog_name=PROG)
