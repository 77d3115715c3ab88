"""Benchmark: `ristretto quantize` of LeNet against one plain `ristretto test` pass.

The quantize run is the reference one (reference/README.md §5: dynamic fixed point, 100 TEST
batches, error margin 1, Ristretto's CPU arithmetic): a baseline, 10 statistics batches and
13 scored nets, i.e. 14 passes over the 100 batches in Ristretto itself. Times, from the
repository root, each as a command line (start-up and log included):

1. `ristretto test` of the float net over the same 100 batches;
2. `ristretto quantize` (the engine: batches read once, the FC sweep from the first
   InnerProduct on, worker threads);
3. the same search with every net scored plainly, one after another (Ristretto's way; the
   Python API's ``plain=True``, one worker), for comparison.

Prints the ratio quantize / test (target: at most 8). The machine's other load moves all
numbers; the runs alternate and the best of N counts.

    .venv/bin/python benchmarks/bench_quantize_lenet.py [--repeats 3] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RISTRETTO_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = SHARED / "models/lenet/lenet_train_test.prototxt"
WEIGHTS = SHARED / "models/lenet/lenet_iter_10000.caffemodel"
ITERATIONS = 100


def workdir() -> Path:
    """A folder with examples/mnist/mnist_{test,train}_lmdb, as the prototxt reads them."""
    from ristretto_cli.data.tools import convert_mnist_data
    tmp = Path(tempfile.mkdtemp(prefix="bench_quantize_"))
    mnist = tmp / "examples" / "mnist"
    mnist.mkdir(parents=True)
    reference = SHARED / "reference" / "mnist_test_lmdb"
    if reference.exists():
        os.symlink(reference, mnist / "mnist_test_lmdb")
    else:
        convert_mnist_data(SHARED / "mnist/t10k-images-idx3-ubyte.gz",
                           SHARED / "mnist/t10k-labels-idx1-ubyte.gz", mnist / "mnist_test_lmdb", "lmdb",
                           progress=False)
    convert_mnist_data(SHARED / "mnist/train-images-idx3-ubyte.gz",
                       SHARED / "mnist/train-labels-idx1-ubyte.gz", mnist / "mnist_train_lmdb", "lmdb",
                       progress=False)
    return tmp


def _timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ristretto_cli", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_test() -> float:
    return _timed(["test", f"--model={MODEL}", f"--weights={WEIGHTS}", f"--iterations={ITERATIONS}"])


def time_quantize(workers: int) -> float:
    return _timed(["quantize", f"--model={MODEL}", f"--weights={WEIGHTS}", "--model_quantized=q.prototxt",
                   "--trimming_mode=dynamic_fixed_point", f"--iterations={ITERATIONS}", "--error_margin=1",
                   "--semantics=caffe-cpu", f"--workers={workers}"])


_PLAIN = """
import sys
from ristretto_cli import log
from ristretto_cli.quantization.search import QuantizeOptions, quantize
log.configure(verbose=False)
quantize(QuantizeOptions(model=sys.argv[1], weights=sys.argv[2], model_quantized="plain.prototxt",
                         trimming_mode="dynamic_fixed_point", iterations=int(sys.argv[3]), error_margin=1,
                         semantics="caffe-cpu", plain=True, workers=1, progress=False))
"""


def time_plain() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _PLAIN, str(MODEL), str(WEIGHTS), str(ITERATIONS)], check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    parser.add_argument("--workers", type=int, default=0, help="quantize --workers (0: automatic)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain sequential search")
    args = parser.parse_args()
    if not MODEL.exists():
        print(f"needs the shared data folder ({SHARED})", file=sys.stderr)
        return 1
    os.chdir(workdir())
    tests, quants, plains = [], [], []
    for _ in range(args.repeats):
        tests.append(time_test())
        quants.append(time_quantize(args.workers))
        if not args.no_plain:
            plains.append(time_plain())
    same = not plains or Path("q.prototxt").read_bytes() == Path("plain.prototxt").read_bytes()
    t, q = min(tests), min(quants)
    print(f"LeNet, {ITERATIONS} MNIST test batches of 100; best of {args.repeats}")
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f} at the end")
    print(f"  ristretto test (one pass, command line)          {t:8.2f} s   (all: "
          f"{', '.join(f'{x:.2f}' for x in tests)})")
    print(f"  ristretto quantize (14 passes in Ristretto)      {q:8.2f} s   (all: "
          f"{', '.join(f'{x:.2f}' for x in quants)})")
    if plains:
        p = min(plains)
        print(f"  same search, plain nets one after another        {p:8.2f} s   (all: "
              f"{', '.join(f'{x:.2f}' for x in plains)})")
        print(f"  engine speed-up over plain scoring: {p / q:.2f}x; written nets identical: {same}")
    print(f"  quantize / test: {q / t:.2f}x (target <= 8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
