"""Benchmark: `ristretto test` of LeNet over the 10,000 MNIST test images.

Times three things on the same net and the same 100 batches of 100 images:

1. the `ristretto test` command line, start-up and log included (a subprocess);
2. the scoring loop (`run_forward_batches`) reading the LMDB through the Data layer
   (prefetch thread, transform, label copy);
3. forward-only passes with the same batches held in memory (the Data layer skipped).

The data overhead is (2 - 3) / 3: what reading, parsing and transforming costs on top of the
compute. Target: at most 15 %. Run from the repository root:

    .venv/bin/python benchmarks/bench_test_lenet.py [--repeats 3]
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RISTRETTO_SHARED_DATA", REPO.parent / "shared" / "data"))
MODEL = SHARED / "models/lenet/lenet_train_test.prototxt"
WEIGHTS = SHARED / "models/lenet/lenet_iter_10000.caffemodel"
ITERATIONS = 100
IMAGES = 100 * ITERATIONS


def workdir() -> Path:
    """A folder where examples/mnist/mnist_test_lmdb exists (the prototxt's relative source)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_lenet_"))
    (tmp / "examples" / "mnist").mkdir(parents=True)
    target = tmp / "examples" / "mnist" / "mnist_test_lmdb"
    reference = SHARED / "reference" / "mnist_test_lmdb"
    if reference.exists():
        os.symlink(reference, target)
    else:
        from ristretto_cli.data.tools import convert_mnist_data
        convert_mnist_data(SHARED / "mnist/t10k-images-idx3-ubyte.gz",
                           SHARED / "mnist/t10k-labels-idx1-ubyte.gz", target, "lmdb", progress=False)
    return tmp


def build_net():
    from ristretto_cli.io import read_net_param, read_weights
    from ristretto_cli.net import TEST, Net
    net = Net(read_net_param(MODEL), TEST, level=0, stages=[""])
    net.copy_trained_layers_from(read_weights(WEIGHTS), str(WEIGHTS))
    return net


def time_cli() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ristretto_cli", "test", f"--model={MODEL}",
                    f"--weights={WEIGHTS}", f"--iterations={ITERATIONS}"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def time_scoring() -> tuple[float, float]:
    from ristretto_cli.scoring import run_forward_batches
    net = build_net()
    start = time.perf_counter()
    result = run_forward_batches(net, ITERATIONS, log=False, progress=False)
    return time.perf_counter() - start, result.score()


def time_forward_only(batches) -> float:
    net = build_net()
    data, label = net.blobs["data"], net.blobs["label"]
    start = time.perf_counter()
    for x, y in batches:
        np.copyto(data.data, x)
        np.copyto(label.data, y)
        net.forward(start=1)  # every layer after the Data layer
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each measurement")
    args = parser.parse_args()
    if not MODEL.exists():
        print(f"needs the shared data folder ({SHARED})", file=sys.stderr)
        return 1
    from ristretto_cli import log
    log.configure(verbose=False)
    os.chdir(workdir())

    net = build_net()
    batches = []
    for _ in range(ITERATIONS):  # the same batches, read once through the Data layer
        net.forward(start=0, end=0)
        batches.append((net.blobs["data"].data.copy(), net.blobs["label"].data.copy()))
    del net

    time_forward_only(batches[:5])  # warm-up (allocations, BLAS threads)
    cli, scoring, forward, score = [], [], [], None
    for _ in range(args.repeats):
        forward.append(time_forward_only(batches))
        t, score = time_scoring()
        scoring.append(t)
        cli.append(time_cli())
    cli_t, scoring_t, forward_t = min(cli), min(scoring), min(forward)
    overhead = (scoring_t - forward_t) / forward_t * 100

    print(f"LeNet, {IMAGES} MNIST test images ({ITERATIONS} batches of 100); best of {args.repeats}")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, NumPy {np.__version__}")
    rows = [("ristretto test (command line, start-up + log)", cli_t),
            ("scoring loop, Data layer reading the LMDB", scoring_t),
            ("forward only, batches held in memory", forward_t)]
    for what, t in rows:
        print(f"  {what:<46}{t:8.3f} s  {IMAGES / t:9.0f} images/s")
    print(f"  data overhead: {overhead:.1f} % of the forward time (target <= 15 %); accuracy {score:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
