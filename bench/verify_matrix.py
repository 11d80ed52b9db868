"""Every kernel version on every scenario at N vCPUs (default 2), exhaustively.

    python bench/verify_matrix.py [--vcpus 2] [--scenarios a,b] [--kernels x,y] [--gfns N]
                                  [--time-limit S]

The test suite runs the part of this matrix that fits its time budget
(tests/test_model.py); this runs all of it and prints states, executions and CPU
seconds per cell. Exit 1 if any cell is not a pass.
"""

from __future__ import annotations

import argparse
import sys
import time

from tdpmmu.api import Config, check
from tdpmmu.explore.result import Limits
from tdpmmu.kvm.scenarios import SCENARIOS
from tdpmmu.kvm.versions import KERNELS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vcpus", type=int, default=2)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated (default: all)")
    ap.add_argument("--kernels", default=",".join(KERNELS), help="comma-separated (default: all)")
    ap.add_argument("--gfns", type=int, default=None, help="default: each scenario's own")
    ap.add_argument("--time-limit", type=float, default=0.0, help="seconds per cell (0: none)")
    args = ap.parse_args()
    ok = True
    print(f"{'scenario':<22} {'kernel':<8} {'verdict':<10} {'states':>8} {'executions':>10} {'cpu s':>7}")
    for scenario in args.scenarios.split(","):
        for kernel in args.kernels.split(","):
            cpu = time.process_time()
            r = check(Config(scenario, kernel, None, args.vcpus, gfns=args.gfns),
                      Limits(shrink_time=0, time_limit=args.time_limit))
            ok &= r.verdict == "pass"
            print(f"{scenario:<22} {kernel:<8} {r.verdict:<10} {r.stats.states:>8} "
                  f"{r.stats.executions:>10} {time.process_time() - cpu:>7.1f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
