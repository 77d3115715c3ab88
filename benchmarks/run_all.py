"""Run every benchmarks/bench_*.py script in turn (``make bench``) and summarise.

Each script runs as its own process from the repository root, with ``--quick`` when it
offers that option (the default here: a few minutes in all) and otherwise with its defaults;
``--full`` runs every script with its defaults. The scripts expected in this folder are
listed in EXPECTED; one that is missing is reported and skipped, not an error. The exit
status is 1 when a script that ran failed.

    .venv/bin/python benchmarks/run_all.py [--full] [--only layers,test_lenet] [--skip demo]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXPECTED = ("bench_layers.py", "bench_train_lenet.py", "bench_test_lenet.py",
            "bench_quantized_forward.py")


def short_name(path: Path) -> str:
    return path.stem.removeprefix("bench_")


def offers_quick(path: Path) -> bool:
    """Whether the script defines a ``--quick`` option (read from its source, so that a
    script is never started just to ask)."""
    try:
        return '"--quick"' in path.read_text(encoding="utf-8")
    except OSError:
        return False


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="every script with its default options")
    ap.add_argument("--only", default="", help="comma-separated names to run (e.g. layers,test_lenet)")
    ap.add_argument("--skip", default="", help="comma-separated names not to run")
    args = ap.parse_args(argv)
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    skip = {n.strip() for n in args.skip.split(",") if n.strip()}

    found = {p.name: p for p in sorted(HERE.glob("bench_*.py"))}
    names = list(EXPECTED) + sorted(n for n in found if n not in EXPECTED)
    results = []
    for name in names:
        path = HERE / name
        short = short_name(path)
        if (only and short not in only) or short in skip:
            continue
        if name not in found:
            print(f"=== {name}: missing, skipped", flush=True)
            results.append((name, "missing", 0.0))
            continue
        cmd = [sys.executable, str(path)]
        if not args.full and offers_quick(path):
            cmd.append("--quick")
        print(f"=== {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        try:
            rc = subprocess.run(cmd, cwd=REPO).returncode
        except KeyboardInterrupt:
            print(f"=== {name}: interrupted", flush=True)
            results.append((name, "interrupted", time.perf_counter() - start))
            break
        elapsed = time.perf_counter() - start
        results.append((name, "ok" if rc == 0 else f"failed (exit status {rc})", elapsed))
        print(f"=== {name}: {results[-1][1]} in {elapsed:.1f} s\n", flush=True)

    print("\nsummary:")
    for name, status, elapsed in results:
        timing = f" ({elapsed:.1f} s)" if status not in ("missing",) else ""
        print(f"  {name:<32}{status}{timing}")
    return 1 if any(s.startswith(("failed", "interrupted")) for _, s, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
