"""Benchmark: the wall time of the whole demo (`make demo`), target under 5 minutes.

Runs scripts/demo.py as a user would (a subprocess, the real command line at every step) into
its own work folder, prints the demo's summary table and the total wall time, and exits with
status 1 when the demo fails or runs over the target. Run from the repository root:

    .venv/bin/python benchmarks/bench_demo.py            # the full demo
    .venv/bin/python benchmarks/bench_demo.py --quick    # the CI mode
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 300.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="time the demo's --quick mode instead")
    parser.add_argument("--workdir", default=str(REPO / "out" / "bench-demo"),
                        help="the demo's work folder (emptied first; default out/bench-demo)")
    parser.add_argument("--target", type=float, default=TARGET_SECONDS,
                        help="seconds the demo may take (default 300)")
    args = parser.parse_args()

    command = [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", args.workdir]
    if args.quick:
        command.append("--quick")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout)
        print(f"the demo failed (exit status {done.returncode})", file=sys.stderr)
        return 1

    summary = Path(args.workdir) / "summary.txt"
    print(summary.read_text(encoding="utf-8").rstrip())
    print()
    try:
        import numpy
        numpy_version = numpy.__version__
    except ImportError:
        numpy_version = "?"
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, NumPy {numpy_version}")
    mode = "quick" if args.quick else "full"
    verdict = "OK" if seconds <= args.target else "OVER TARGET"
    print(f"demo ({mode} mode) wall time: {seconds:.1f} s = {seconds / 60:.2f} min "
          f"(target < {args.target / 60:.0f} min): {verdict}")
    return 0 if seconds <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
