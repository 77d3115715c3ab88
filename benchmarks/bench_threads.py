"""What a second thread buys our engine, layer by layer, and what one NumPy call costs on it.

Two reports, each against a reference measured in the same run:

* **Calls.** The time per call of NumPy operations our layers make by the hundred per
  pass: an element-wise ufunc on a block that fits the cache (``maximum`` over 32768 and
  over 4096 float32 values against an array of zeros, as ReLU uses) and a scatter-add
  (``add.at``, as max pooling's backward routes gradients). Each runs in a loop on one
  thread, then on two threads of one process at once, then in two processes at once.
  Processes share the cores and the memory as threads do, but not the interpreter lock
  (GIL): where two threads are slower than two processes, the difference is the GIL's
  hand-overs, which every NumPy call takes part in; they cost about as much per call
  whatever its length, so short calls suffer most.
* **Shared calls.** What handing work to the engine's threads costs by itself:
  ``parallel.for_ranges`` over two empty ranges on two threads, called back to back and
  after the caller has computed alone for a millisecond (against the same call on one
  thread). Waking a worker that went to sleep dominates.
* **Layers.** Our TRAIN-phase forward+backward pass of each net (the networks and random
  weights of ``bench_layers.py``), each layer's time inside whole passes (medians; passes at
  1 and at 2 threads alternate), the gain ``1t / 2t`` and the excess ``2t - 1t / 2`` over a
  perfect split, largest first.

A report, not a test; it needs no PyTorch:

    .venv/bin/python benchmarks/bench_threads.py [--quick] [--nets cifar10,squeezenet]
                        [--passes N] [--rows N]
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_layers import NETS, SHARED, build_ours, host_description, randomise_weights  # noqa: E402

CALL_SECONDS = 1.5


# ----------------------------------------------------------------------------- calls
def _operation(name: str):
    """A fresh set of arrays and the call to time on them (each thread or process its own)."""
    rng = np.random.default_rng(0)
    if name.startswith("maximum"):
        a = rng.standard_normal(1 << (12 if name.endswith("short") else 15), dtype=np.float32)
        out, zeros = np.empty_like(a), np.zeros_like(a)     # zeros as an array, as ReLU has them
        return lambda: np.maximum(a, zeros, out=out)
    out = np.zeros(1 << 20, np.float32)
    index = rng.integers(0, out.size, 1 << 18).astype(np.intp)
    values = rng.standard_normal(index.size, dtype=np.float32)
    return lambda: np.add.at(out, index, values)


def _per_call(name: str, seconds: float = CALL_SECONDS) -> float:
    """Seconds per call of the operation, looped for about ``seconds``."""
    from threadpoolctl import threadpool_limits
    call = _operation(name)
    with threadpool_limits(limits=1):
        call()
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            call()
            calls += 1
    return (time.perf_counter() - start) / calls


def _in_process(name: str, queue) -> None:
    queue.put(_per_call(name))


def call_costs(name: str) -> tuple[float, float, float]:
    """Per-call seconds: alone, on each of two threads at once, in each of two processes."""
    alone = _per_call(name)
    results: list[float] = []
    threads = [threading.Thread(target=lambda: results.append(_per_call(name))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    procs = [context.Process(target=_in_process, args=(name, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    in_procs = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return alone, statistics.mean(results), statistics.mean(in_procs)


def shared_call_costs(threads: int, reps: int = 400) -> tuple[float, float]:
    """Median seconds of ``parallel.for_ranges`` over ``threads`` empty ranges: called back to
    back, and after the caller has computed alone for a millisecond (its workers idle)."""
    from ristretto_cli import parallel

    def empty(i0: int, i1: int) -> None:
        pass
    medians = []
    with parallel.limited(threads), parallel.blas_single_threaded():
        for pause in (0.0, 1e-3):
            times = []
            for _ in range(reps):
                until = time.perf_counter() + pause
                while time.perf_counter() < until:
                    pass
                t0 = time.perf_counter()
                parallel.for_ranges(threads, empty)
                times.append(time.perf_counter() - t0)
            medians.append(statistics.median(times))
    return medians[0], medians[1]


# ----------------------------------------------------------------------------- layers
def layer_times(net, dy: np.ndarray, passes: int, counts=(1, 2)):
    """Per thread count: the median milliseconds per pass of each layer's forward and
    backward call inside whole forward+backward passes (``dy``: the output's gradient), and
    the median pass. Passes at the thread counts alternate (in turn first), so that the
    machine's slow and fast spells fall on all of them alike."""
    from threadpoolctl import threadpool_limits

    from ristretto_cli import parallel
    spent: dict[str, float] = collections.defaultdict(float)
    originals = []
    for layer in net.layers:
        for kind in ("forward", "backward"):
            call = getattr(layer, kind)
            originals.append((layer, kind))

            def timed(*args, _call=call, _key=f"{layer.name} {kind[:3]}", **kwargs):
                t0 = time.perf_counter()
                try:
                    return _call(*args, **kwargs)
                finally:
                    spent[_key] += time.perf_counter() - t0
            setattr(layer, kind, timed)
    samples = {n: collections.defaultdict(list) for n in counts}
    totals: dict[int, list[float]] = {n: [] for n in counts}
    try:
        for i in range(passes + 2):
            for n in (counts if i % 2 == 0 else counts[::-1]):
                with threadpool_limits(limits=n, user_api="blas"), parallel.limited(n):
                    spent.clear()
                    t0 = time.perf_counter()
                    net.forward()
                    net.blobs[net.output_names[0]].diff[...] = dy
                    net.backward()
                    if i >= 2:              # two warm-up rounds
                        totals[n].append(time.perf_counter() - t0)
                        for key, seconds in spent.items():
                            samples[n][key].append(seconds)
    finally:
        for layer, kind in originals:
            delattr(layer, kind)        # back to the class's method
    return {n: ({k: 1e3 * statistics.median(v) for k, v in samples[n].items()},
                1e3 * statistics.median(totals[n])) for n in counts}


def report_layers(key: str, passes: int, rows: int) -> None:
    from ristretto_cli.net import TRAIN
    title, rel, batch = NETS[key]
    net = build_ours(SHARED / rel, batch, TRAIN)
    randomise_weights(net, np.random.default_rng(0))
    name = net.input_names[0]
    rng = np.random.default_rng(1)
    net.blobs[name].data[...] = rng.standard_normal(net.blobs[name].shape)
    dy = rng.standard_normal(net.blobs[net.output_names[0]].shape).astype(np.float32)
    times = layer_times(net, dy, passes)
    (one, pass_one), (two, pass_two) = times[1], times[2]
    excess = {k: two[k] - one[k] / 2 for k in one}
    order = sorted(one, key=lambda k: -excess[k])
    print(f"\n{title} (batch {batch}), forward+backward, medians of {passes} passes:")
    print(f"{'layer':34s} {'1 thread':>9s} {'2 threads':>10s} {'gain':>6s} {'excess ms':>10s}")
    for k in order[:rows]:
        print(f"{k:34s} {one[k]:9.2f} {two[k]:10.2f} {one[k] / max(two[k], 1e-9):5.2f}x {excess[k]:10.2f}")
    print(f"{'whole pass':34s} {pass_one:9.2f} {pass_two:10.2f} {pass_one / pass_two:5.2f}x "
          f"{pass_two - pass_one / 2:10.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CIFAR-10 quick only, fewer passes")
    ap.add_argument("--nets", default=None, help=f"subset of {','.join(NETS)} (default cifar10,squeezenet)")
    ap.add_argument("--passes", type=int, default=None,
                    help="timed passes per thread count (default 20, quick 8)")
    ap.add_argument("--rows", type=int, default=12, help="layers listed per net (default 12)")
    args = ap.parse_args(argv)
    try:
        import threadpoolctl  # noqa: F401
    except ImportError as exc:
        print(f"bench_threads needs threadpoolctl ({exc}); skipped")
        return 0
    keys = [k.strip() for k in (args.nets or ("cifar10" if args.quick else "cifar10,squeezenet")).split(",")]
    unknown = [k for k in keys if k not in NETS]
    if unknown:
        ap.error(f"unknown net(s) {', '.join(unknown)}; choose from {', '.join(NETS)}")
    passes = args.passes or (8 if args.quick else 20)
    print(f"bench_threads: {host_description()}, {os.cpu_count()} CPUs, numpy {np.__version__}, Python "
          f"{sys.version.split()[0]}")
    print("\nmicroseconds per NumPy call: alone | each of 2 threads | each of 2 processes")
    for name, what in (("maximum", "maximum, 32768 float32 (in cache)"),
                       ("maximum_short", "maximum, 4096 float32 (in cache)"),
                       ("add.at", "add.at, 262144 values into 1M")):
        alone, threads, procs = call_costs(name)
        print(f"  {what:36s} {1e6 * alone:9.1f} | {1e6 * threads:9.1f} ({threads / alone:.2f}x) | "
              f"{1e6 * procs:9.1f} ({procs / alone:.2f}x)")
    print("\nmicroseconds per shared call (parallel.for_ranges, empty ranges): back to back | "
          "after 1 ms alone")
    for n in (1, 2):
        hot, idle = shared_call_costs(n)
        print(f"  {n} thread(s){'':26s} {1e6 * hot:9.1f} | {1e6 * idle:9.1f}")
    for key in keys:
        report_layers(key, passes, args.rows)
    print("\ngain = 1 thread / 2 threads; excess = 2 threads - 1 thread / 2 (what a perfect split "
          "would save)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
