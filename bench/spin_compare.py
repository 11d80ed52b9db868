"""SPIN beside tdpmmu on the memslot-delete scenario (v6.9).

    python bench/spin_compare.py --vcpus 1 2
    python bench/spin_compare.py --vcpus 1 2 --mutant      # both must find the bug
    python bench/spin_compare.py --vcpus 3 --time-limit 300
    python bench/spin_compare.py --vcpus 1 2 --equivalence  # same states, same transitions?

For each vCPU count, in this one process and one after the other (so the timings share
the machine's load): generates bench/promela/memslot_delete.pml's model into a temp dir
(bench/promela/gen.py), runs `spin -a -DN=n`, compiles pan twice with gcc -O2 -DSAFETY
(SPIN's default partial-order reduction, and -DNOREDUCE without it), runs each pan, then
runs `python -m tdpmmu check memslot-delete --vcpus n --json` from this checkout
(PYTHONPATH=src, whatever `tdpmmu` is installed). Prints one table; ratios are
tdpmmu's time-to-verdict over SPIN's (POR build), with and without SPIN's compile time
(spin -a + gcc). Nothing is written into the repository.

``--equivalence`` checks instead that the two models are one transition system: both
unreduced (`spin -o1 -a`, pan -DNOREDUCE; tdpmmu --search plain --no-symmetry --movers
off), they must store as many states and take as many transitions (pan counts the
initial state among its "stored+matched"); exits 1 if not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
GEN = HERE / "promela" / "gen.py"
MUTANT = "zap-unscheduled-roots"


def ensure_spin() -> str:
    spin = shutil.which("spin")
    if spin:
        return spin
    print("spin not found: apt-get install -y spin", file=sys.stderr)
    subprocess.run("apt-get update && apt-get install -y spin", shell=True, check=True,
                   stdout=subprocess.DEVNULL)
    spin = shutil.which("spin")
    if not spin:
        sys.exit("could not install spin")
    return spin


def timed(
    cmd: list[str], cwd: Path, timeout: float | None = None, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    return p, time.perf_counter() - t0


def _num(pattern: str, text: str, cast: type = int) -> float | int | None:
    m = re.search(pattern, text)
    return cast(m.group(1)) if m else None


def run_pan(work: Path, n: int, mutant: bool, reduce: bool, hashbits: int,
            collapse: bool, depth: int) -> dict[str, object]:
    """Compile and run pan; -m is doubled while pan reports the depth limit was hit."""
    flags = ["-O2", "-DSAFETY"] + ([] if reduce else ["-DNOREDUCE"]) + (["-DCOLLAPSE"] if collapse else [])
    exe = f"pan_{'por' if reduce else 'noreduce'}"
    p, cc = timed(["gcc", *flags, "-o", exe, "pan.c"], work)
    if p.returncode:
        raise RuntimeError(p.stderr)
    while True:
        p, wall = timed([f"./{exe}", f"-m{depth}", f"-w{hashbits}"], work)
        out = p.stdout + p.stderr
        if "max search depth too small" in out and depth < 10**7:
            depth *= 4
            continue
        break
    errors = _num(r"errors: (\d+)", out)
    return {
        "build": "POR" if reduce else "NOREDUCE",
        "gcc_seconds": cc,
        "states": _num(r"(\d+) states, stored", out),
        "transitions": _num(r"(\d+) transitions", out),
        "depth": _num(r"depth reached (\d+)", out),
        "pan_elapsed": _num(r"elapsed time ([\d.e+]+)", out, float),
        "seconds": wall,
        "memory_mb": _num(r"([\d.]+)\s+total actual memory usage", out, float),
        "verdict": "pass" if errors == 0 else ("violation" if errors else "error"),
        "violation": (re.search(r"pan:\d+: (.*?) \(at depth", out) or [None, None])[1],
        "m": depth,
    }


def run_spin(
    spin: str, work: Path, pml: Path, n: int, mutant: bool, args: argparse.Namespace
) -> dict[str, object]:
    defs = [f"-DN={n}"] + (["-DMUTANT_ZAP_UNSCHEDULED"] if mutant else [])
    # -o1: no dead-variable reset, which tdpmmu does not do (for --equivalence)
    p, spin_a = timed([spin, *(["-o1"] if args.equivalence else []), "-a", *defs, pml.name], work)
    if p.returncode:
        raise RuntimeError(p.stdout + p.stderr)
    res: dict[str, object] = {"spin_a_seconds": spin_a}
    builds = (False,) if args.equivalence else (True, False) if args.builds == "both" else (True,)
    for reduce in builds:
        r = run_pan(work, n, mutant, reduce, args.hashbits, args.collapse, args.depth)
        res["por" if reduce else "noreduce"] = r
    return res


def run_tdpmmu(n: int, mutant: bool, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, "-m", "tdpmmu", "check", "memslot-delete", "--vcpus", str(n), "--json",
           "--time-limit", str(args.time_limit), "--shrink-time", "0"]
    if mutant:
        cmd += ["--mutant", MUTANT]
    if args.equivalence:
        cmd += ["--search", "plain", "--no-symmetry", "--movers", "off"]
    if args.search:
        cmd += ["--search", args.search]
    if args.no_symmetry:
        cmd.append("--no-symmetry")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])])}
    p, wall = timed(cmd, Path.cwd(), env=env)
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"verdict": f"error (exit {p.returncode})", "states": None, "seconds": wall,
                "search_seconds": None, "stderr": p.stderr[-2000:]}
    v = out.get("violation") or {}
    return {"verdict": out["verdict"], "states": out.get("states"), "transitions": out.get("transitions"),
            "seconds": wall, "search_seconds": out.get("seconds"),
            "violation": v.get("kind") if isinstance(v, dict) else v}


def print_equivalence(version: str, rows: list[dict[str, Any]]) -> int:
    """The --equivalence table; 1 if any count differs."""
    print(f"{version}; spin -o1 -a; gcc -O2 -DSAFETY -DNOREDUCE; tdpmmu --search plain "
          "--no-symmetry --movers off")
    print("| N | pan states | pan transitions | tdpmmu states | tdpmmu transitions | pan s | tdpmmu s "
          "| equal |\n|---|---|---|---|---|---|---|---|")
    differ = 0
    for r in rows:
        pan, t = r["spin"]["noreduce"], r["tdpmmu"]
        # pan's "transitions (= stored+matched)" counts the initial state as stored
        pan_transitions = pan["transitions"] - 1 if pan["transitions"] is not None else None
        equal = (pan["states"], pan_transitions) == (t["states"], t["transitions"]) \
            and pan["verdict"] == t["verdict"] == "pass"
        differ |= not equal
        print(f"| {r['vcpus']} | {fmt(pan['states'])} | {fmt(pan_transitions)} | {fmt(t['states'])} "
              f"| {fmt(t['transitions'])} | {pan['seconds']:.2f} | {t['seconds']:.2f} "
              f"| {'yes' if equal else 'NO'} |")
    return int(differ)


def fmt(x: object, spec: str = "") -> str:
    if x is None:
        return "-"
    return format(x, spec) if spec else str(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vcpus", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--time-limit", type=float, default=600.0, help="tdpmmu --time-limit (s)")
    ap.add_argument("--mutant", action="store_true", help=f"both sides with {MUTANT}")
    ap.add_argument("--search", choices=("dpor", "plain"), help="tdpmmu --search (default: its own, auto)")
    ap.add_argument("--no-symmetry", action="store_true", help="tdpmmu without vCPU symmetry")
    ap.add_argument("--depth", type=int, default=100000, help="initial pan -m")
    ap.add_argument("--hashbits", type=int, default=24, help="pan -w")
    ap.add_argument("--collapse", action="store_true", help="compile pan with -DCOLLAPSE")
    ap.add_argument("--builds", choices=("both", "por"), default="both",
                    help="pan builds: POR and -DNOREDUCE (default), or POR only (large N)")
    ap.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    ap.add_argument("--equivalence", action="store_true",
                    help="both unreduced: same states and transitions? (exit 1 if not)")
    args = ap.parse_args()

    spin = ensure_spin()
    version = subprocess.run([spin, "-V"], capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="spin_compare_") as tmp:
        work = Path(tmp)
        pml = work / "memslot_delete.pml"
        subprocess.run([sys.executable, str(GEN), str(pml)], check=True, stdout=subprocess.DEVNULL)
        for n in args.vcpus:
            print(f"N={n}: spin ...", file=sys.stderr, flush=True)
            s = run_spin(spin, work, pml, n, args.mutant, args)
            print(f"N={n}: tdpmmu ...", file=sys.stderr, flush=True)
            t = run_tdpmmu(n, args.mutant, args)
            rows.append({"vcpus": n, "spin": s, "tdpmmu": t})

    if args.equivalence:
        sys.exit(print_equivalence(version, rows))

    print(f"{version}; gcc -O2 -DSAFETY; pan -w{args.hashbits}"
          f"{' -DCOLLAPSE' if args.collapse else ''}; tdpmmu "
          f"{'--search ' + args.search if args.search else '(--search auto: plain to 2 vCPUs, else DPOR)'}"
          f"{' --no-symmetry' if args.no_symmetry else ''}"
          f"{'; mutant ' + MUTANT if args.mutant else ''}")
    head = ["N", "spin verdict", "spin states", "spin s", "states NOREDUCE", "s NOREDUCE",
            "compile s", "tdpmmu verdict", "tdpmmu states", "tdpmmu s",
            "ratio (w/ compile)", "ratio (w/o compile)"]
    lines = [head]
    for r in rows:
        s, t = r["spin"], r["tdpmmu"]
        por = s["por"]
        nor = s.get("noreduce") or {"verdict": por["verdict"], "states": None, "seconds": None}
        compile_s = s["spin_a_seconds"] + por["gcc_seconds"]
        spin_verdict = por["verdict"] + (f" ({por['violation']})" if por["violation"] else "")
        if nor["verdict"] != por["verdict"]:
            spin_verdict += f" / NOREDUCE {nor['verdict']}"
        lb = ">" if t["verdict"] == "incomplete" else ""  # tdpmmu stopped at its time limit
        tv = t["verdict"] + (f" ({t['violation']})" if t.get("violation") else "")
        lines.append([
            str(r["vcpus"]), spin_verdict, fmt(por["states"]), f"{por['seconds']:.2f}",
            fmt(nor["states"]), fmt(nor["seconds"], ".2f"), f"{compile_s:.2f}",
            tv, fmt(t["states"]), f"{t['seconds']:.2f}",
            f"{lb}{t['seconds'] / (por['seconds'] + compile_s):.2f}x",
            f"{lb}{t['seconds'] / por['seconds']:.0f}x",
        ])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    print("spin s / tdpmmu s: wall time of pan / of `tdpmmu check` (process start included); "
          "compile s: spin -a + gcc of the POR build; ratios: tdpmmu s over spin s (POR), "
          "'>' when tdpmmu hit its time limit.")
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
