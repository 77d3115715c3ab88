"""Cost of Ristretto's quantization: the TEST-phase forward of a quantized net against the float
forward of the same net, in the same process.

For LeNet (batch 64), CIFAR-10 quick (100) and CaffeNet (10) the float net is built from its
deploy prototxt, and two quantized twins are generated from the same text by renaming every
``Convolution`` to ``ConvolutionRistretto`` and every ``InnerProduct`` to ``FcRistretto`` with an
8-bit ``quantization_param``:

* ``dfp8``: dynamic fixed point, 8-bit weights, inputs and outputs; the fractional lengths come
  from one float forward pass with the integer-length rule of ``ristretto quantize``
  (ristretto.md §6.5);
* ``mf8``: minifloat with 3 mantissa and 4 exponent bits (what ``quantize`` tries at 8 bits).

LeNet and CIFAR-10 quick use their trained weights, CaffeNet He-scaled random weights (its
deploy prototxt has no fillers). Every net gets the same input batch (MNIST-like values in
[0, 1), mean-subtracted pixel values for the others); the quantized nets trim it in place, so
it is restored before every pass (outside the timed region).

The passes alternate between the three nets (rotating the order) so that load from other
processes hits all of them; the table shows the minimum time per net and ``ratio`` = quantized
minimum / float minimum (``med`` = the same for the medians). The target is a ratio of at most
1.15. A report, not a test::

    .venv/bin/python benchmarks/bench_quantized_forward.py [--nets lenet,cifar10,caffenet]
        [--repeats N] [--semantics ristretto|caffe-cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("RISTRETTO_SHARED_DATA", REPO.parent / "shared" / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_layers import randomise_weights  # noqa: E402  (the same random weights as there)

#: name -> (label, prototxt, batch, trained weights or None, input range, default repeats)
NETS = {
    "lenet": ("LeNet", "models/lenet/lenet.prototxt", 64,
              "models/lenet/lenet_iter_10000.caffemodel", (0.0, 1.0), 40),
    "cifar10": ("CIFAR-10 quick", "models/cifar10_quick/cifar10_quick.prototxt", 100,
                "models/cifar10_quick/cifar10_quick_iter_4000.caffemodel", (-128.0, 128.0), 15),
    "caffenet": ("CaffeNet", "prototxt/bvlc_reference_caffenet/deploy.prototxt", 10,
                 None, (-120.0, 135.0), 8),
}
TARGET_RATIO = 1.15
BITS = 8
MINIFLOAT = (3, 4)     # mant_bits, exp_bits
RENAME = {"Convolution": "ConvolutionRistretto", "InnerProduct": "FcRistretto"}


def read_param(path: Path, batch: int):
    from ristretto_cli.io import read_net_param
    param = read_net_param(path)
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    return param


def integer_length(max_abs: float, *, params: bool) -> int:
    """``quantize``'s integer lengths: ceil(log2 max) for activations, ceil(log2 max + 1) for
    parameters (a max of 0 is treated as 1)."""
    m = max(float(max_abs), np.finfo(np.float32).tiny)
    return int(math.ceil(math.log2(m) + (1 if params else 0)))


def quantized_param(param, ranges: dict, kind: str):
    """A copy of ``param`` with the Ristretto types and an 8-bit quantization_param."""
    from ristretto_cli.proto import caffe_pb2
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for lp in out.layer:
        if lp.type not in RENAME:
            continue
        lp.type = RENAME[lp.type]
        qp = lp.quantization_param
        if kind == "mf8":
            qp.precision = qp.MINIFLOAT
            qp.mant_bits, qp.exp_bits = MINIFLOAT
        else:
            max_in, max_out, max_w = ranges[lp.name]
            qp.bw_layer_in = qp.bw_layer_out = qp.bw_params = BITS
            qp.fl_layer_in = BITS - integer_length(max_in, params=False)
            qp.fl_layer_out = BITS - integer_length(max_out, params=False)
            qp.fl_params = BITS - integer_length(max_w, params=True)
    return out


def build(key: str, semantics: str):
    """(float net, {"dfp8": net, "mf8": net}, input batch) with identical weights."""
    from ristretto_cli.io import read_weights
    from ristretto_cli.net import TEST, Net
    label, proto, batch, weights, (lo, hi), _ = NETS[key]
    param = read_param(SHARED / proto, batch)
    float_net = Net(param, TEST, seed=0)
    if weights:
        float_net.copy_trained_layers_from(read_weights(SHARED / weights))
    else:
        randomise_weights(float_net, np.random.default_rng(0))
    data_name = float_net.input_names[0]
    x = np.random.default_rng(1).uniform(lo, hi, float_net.blobs[data_name].shape).astype(np.float32)

    float_net.blobs[data_name].data[...] = x
    float_net.forward()
    ranges = {}
    for layer, bottoms, tops in zip(float_net.layers, float_net.bottom_vecs, float_net.top_vecs):
        if layer.type in RENAME:
            ranges[layer.name] = (np.abs(bottoms[0].data).max(), np.abs(tops[0].data).max(),
                                  np.abs(layer.blobs[0].data).max())
    trained = float_net.to_proto()
    quantized = {}
    for kind in ("dfp8", "mf8"):
        net = Net(quantized_param(param, ranges, kind), TEST, semantics=semantics, seed=0)
        net.copy_trained_layers_from(trained)
        quantized[kind] = net
    return float_net, quantized, x


def time_nets(nets: dict, x: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Seconds per forward pass of every net, passes interleaved in rotating order."""
    names = list(nets)
    times = {n: [] for n in names}
    with contextlib.ExitStack() as frozen:  # weights read-only, as when scoring (test, quantize)
        for net in nets.values():
            frozen.enter_context(net.frozen_params())
        for name in names:                      # warm-up: buffers, trimmed-weight caches
            run_once(nets[name], x)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                times[name].append(run_once(nets[name], x))
    return times


def run_once(net, x: np.ndarray) -> float:
    net.blobs[net.input_names[0]].data[...] = x   # the quantized nets trimmed it in place
    t0 = time.perf_counter()
    net.forward()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of " + ", ".join(NETS))
    ap.add_argument("--repeats", type=int, default=None, help="timed passes per net (default: per net)")
    ap.add_argument("--semantics", default="ristretto", choices=("ristretto", "caffe-cpu"))
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    keys = [k.strip() for k in args.nets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in NETS]
    if unknown:
        ap.error(f"unknown net(s) {', '.join(unknown)}; choose from {', '.join(NETS)}")

    print(f"quantized (8-bit) vs float TEST forward, semantics '{args.semantics}', "
          f"numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(f"{'net':<16}{'batch':>6}{'float ms':>10}{'dfp8 ms':>10}{'ratio':>7}{'med':>7}"
          f"{'mf8 ms':>10}{'ratio':>7}{'med':>7}")
    results = {}
    worst = 0.0
    for key in keys:
        label, _, batch, _, _, default_repeats = NETS[key]
        float_net, quantized, x = build(key, args.semantics)
        times = time_nets({"float": float_net, **quantized}, x, args.repeats or default_repeats)
        best = {n: min(t) for n, t in times.items()}
        med = {n: statistics.median(t) for n, t in times.items()}
        row = {"batch": batch, "ms": {n: best[n] * 1e3 for n in best},
               "median_ms": {n: med[n] * 1e3 for n in med},
               "ratio": {n: best[n] / best["float"] for n in quantized},
               "median_ratio": {n: med[n] / med["float"] for n in quantized}}
        results[key] = row
        worst = max(worst, *row["ratio"].values())
        r, m = row["ratio"], row["median_ratio"]
        print(f"{label:<16}{batch:>6}{best['float'] * 1e3:>10.2f}"
              f"{best['dfp8'] * 1e3:>10.2f}{r['dfp8']:>7.3f}{m['dfp8']:>7.3f}"
              f"{best['mf8'] * 1e3:>10.2f}{r['mf8']:>7.3f}{m['mf8']:>7.3f}", flush=True)
    verdict = "within" if worst <= TARGET_RATIO else "ABOVE"
    print(f"worst ratio {worst:.3f}: {verdict} the target of {TARGET_RATIO}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"semantics": args.semantics, "target": TARGET_RATIO, "nets": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
