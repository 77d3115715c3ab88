"""Train LeNet on MNIST from scratch with Caffe's models/lenet/lenet_solver.prototxt, with our
solver and with PyTorch (CPU) doing the same work in the same run; report the final test
accuracy, wall time and iterations/s of each.

    .venv/bin/python benchmarks/bench_train_lenet.py                 # the full 10,000 iterations
    .venv/bin/python benchmarks/bench_train_lenet.py --iterations 200  # a quick check

Both train on LMDBs built by our convert_mnist_data (60k train, 10k test, key order, scale
1/256, batch 64) with SGD momentum 0.9, weight decay 0.0005, lr_policy inv (base 0.01, gamma
1e-4, power 0.75), bias lr_mult 2, Xavier weights and zero biases, and both run the solver's
periodic 10k-image test (every test_interval iterations). The PyTorch side applies Caffe's
update rule (h = m*h + lr*g; w -= h), not torch.optim's, so the two optimise the same thing.
A full run must reach >= 99.0% test accuracy with our solver (the exit status says so).
Caffe's solver file sets no random_seed, so every run starts from other Xavier weights and
ends a little differently (a tenth of a point either way); ``--seed N`` fixes both sides'.
PyTorch is optional (pip install torch==2.13.0); without it only our side runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RISTRETTO_SHARED_DATA", REPO.parent / "shared" / "data"))
TARGET_ACCURACY = 0.99


def prepare(workdir: Path) -> None:
    """Caffe's examples/mnist layout: both LMDBs from the IDX files, the net, the solver."""
    from ristretto_cli.data.tools import convert_mnist_data
    mnist = workdir / "examples" / "mnist"
    mnist.mkdir(parents=True, exist_ok=True)
    for split, idx in (("train", "train"), ("test", "t10k")):
        db = mnist / f"mnist_{split}_lmdb"
        if not db.exists():
            convert_mnist_data(SHARED / f"mnist/{idx}-images-idx3-ubyte.gz",
                               SHARED / f"mnist/{idx}-labels-idx1-ubyte.gz", str(db), progress=False)
    shutil.copy(SHARED / "models/lenet/lenet_train_test.prototxt", mnist / "lenet_train_test.prototxt")
    shutil.copy(SHARED / "models/lenet/lenet_solver.prototxt", workdir / "lenet_solver.prototxt")


def full_test_accuracy(solver) -> float:
    """Mean accuracy of the TEST net over its test_iter batches (the whole 10k set)."""
    net = solver.test_nets[0]
    net.share_trained_layers_with(solver.net)
    total = np.float64(0)
    n = solver.param.test_iter[0]
    for _ in range(n):
        net.forward()
        total += float(net.blobs["accuracy"].data)
    return float(total / n)


def run_ours(workdir: Path, iterations: int, quiet: bool, seed: int | None = None) -> dict:
    from ristretto_cli import log
    from ristretto_cli.io import read_solver_param
    from ristretto_cli.solver import Solver
    log.configure(verbose=not quiet)
    param = read_solver_param(workdir / "lenet_solver.prototxt")
    if seed is not None:
        param.random_seed = seed
    param.max_iter = iterations
    param.solver_mode = param.CPU
    solver = Solver(param, show_progress=not quiet)
    start = time.perf_counter()
    solver.solve()
    seconds = time.perf_counter() - start
    return {"name": "ristretto-cli (NumPy)", "seconds": seconds, "iterations": iterations,
            "accuracy": full_test_accuracy(solver), "random_seed": solver.seed}


# ----------------------------------------------------------------------------- PyTorch
def _lenet_torch(torch):
    nn = torch.nn

    class LeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 20, 5)
            self.conv2 = nn.Conv2d(20, 50, 5)
            self.ip1 = nn.Linear(800, 500)
            self.ip2 = nn.Linear(500, 10)
            for layer in (self.conv1, self.conv2, self.ip1, self.ip2):
                fan_in = layer.weight[0].numel()  # Caffe's xavier: U(+-sqrt(3 / fan_in))
                bound = (3.0 / fan_in) ** 0.5
                nn.init.uniform_(layer.weight, -bound, bound)
                nn.init.zeros_(layer.bias)

        def forward(self, x):
            f = torch.nn.functional
            x = f.max_pool2d(self.conv1(x), 2, 2)
            x = f.max_pool2d(self.conv2(x), 2, 2)
            x = f.relu(self.ip1(x.flatten(1)))
            return self.ip2(x)

    return LeNet()


def _mnist_arrays(workdir: Path):
    """Images/labels in LMDB key order, read back from the DBs the solver uses."""
    import lmdb

    from ristretto_cli.proto import caffe_pb2
    out = []
    for split in ("train", "test"):
        env = lmdb.open(str(workdir / f"examples/mnist/mnist_{split}_lmdb"), readonly=True, lock=False)
        images, labels = [], []
        with env.begin() as txn:
            for _, value in txn.cursor():
                datum = caffe_pb2.Datum.FromString(value)
                images.append(np.frombuffer(datum.data, np.uint8))
                labels.append(datum.label)
        env.close()
        x = np.stack(images).reshape(-1, 1, 28, 28).astype(np.float32) * np.float32(0.00390625)
        out.append((x, np.asarray(labels, np.int64)))
    return out


def run_torch(workdir: Path, iterations: int, param) -> dict | None:
    try:
        import torch
    except ImportError:
        print("PyTorch is not installed (pip install torch==2.13.0): skipping its run", file=sys.stderr)
        return None
    (train_x, train_y), (test_x, test_y) = (tuple(torch.from_numpy(a) for a in pair)
                                            for pair in _mnist_arrays(workdir))
    torch.manual_seed(max(param.random_seed, 0))
    net = _lenet_torch(torch)
    history = {p: torch.zeros_like(p) for p in net.parameters()}
    lr_mult = {p: (2.0 if name.endswith("bias") else 1.0) for name, p in net.named_parameters()}
    batch, n_train = 64, train_x.shape[0]
    test_batch = 100

    def test() -> float:
        with torch.no_grad():
            correct = sum(int((net(test_x[i:i + test_batch]).argmax(1) == test_y[i:i + test_batch]).sum())
                          for i in range(0, test_x.shape[0], test_batch))
        return correct / test_x.shape[0]

    start = time.perf_counter()
    for it in range(iterations):
        if param.test_interval and it % param.test_interval == 0 and (it or param.test_initialization):
            test()
        idx = (it * batch + torch.arange(batch)) % n_train  # the DB cursor wraps like Caffe's
        loss = torch.nn.functional.cross_entropy(net(train_x[idx]), train_y[idx])
        net.zero_grad()
        loss.backward()
        rate = param.base_lr * (1 + param.gamma * it) ** (-param.power)
        with torch.no_grad():
            for p in net.parameters():
                g = p.grad + param.weight_decay * p
                history[p].mul_(param.momentum).add_(g, alpha=rate * lr_mult[p])
                p.sub_(history[p])
    accuracy = test()
    seconds = time.perf_counter() - start
    return {"name": f"PyTorch {torch.__version__} (CPU, {torch.get_num_threads()} threads)",
            "seconds": seconds, "iterations": iterations, "accuracy": accuracy}


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown"
    return ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()) or "none"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=10000, help="training iterations (default 10000)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="folder for the LMDBs and snapshots (default: a temporary folder)")
    ap.add_argument("--no-torch", action="store_true", help="only our solver")
    ap.add_argument("--seed", type=int, default=None,
                    help="random_seed for both sides (default: the solver file's; Caffe's has none, so "
                         "every run draws other initial weights)")
    ap.add_argument("--quiet", action="store_true", help="no training log")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_lenet_"))
    workdir.mkdir(parents=True, exist_ok=True)
    prepare(workdir)
    old = os.getcwd()
    os.chdir(workdir)
    try:
        ours = run_ours(workdir, args.iterations, args.quiet, args.seed)
        from ristretto_cli.io import read_solver_param
        param = read_solver_param(workdir / "lenet_solver.prototxt")
        if args.seed is not None:
            param.random_seed = args.seed
        theirs = None if args.no_torch else run_torch(workdir, args.iterations, param)
    finally:
        os.chdir(old)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nLeNet / MNIST, {args.iterations} iterations, batch 64, tests every "
          f"{param.test_interval} iterations (NumPy BLAS threads: {blas_threads()})")
    print(f"{'implementation':<42} {'test accuracy':>14} {'wall time':>11} {'iter/s':>9}")
    for r in (ours, theirs):
        if r is not None:
            print(f"{r['name']:<42} {100 * r['accuracy']:>13.2f}% {r['seconds']:>10.1f}s "
                  f"{r['iterations'] / r['seconds']:>9.1f}")
    print(f"our run's seed: {ours['random_seed']} (PyTorch: {max(param.random_seed, 0)})")
    if args.iterations >= 10000:
        ok = ours["accuracy"] >= TARGET_ACCURACY
        print(f"target >= {100 * TARGET_ACCURACY:.1f}% with our solver: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
