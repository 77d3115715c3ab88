"""Layer-engine speed against PyTorch (CPU) on four real Caffe networks.

For LeNet (batch 64), CIFAR-10 quick (100), CaffeNet (10) and SqueezeNet 1.0 (10) this builds
our Net from the prototxt and a PyTorch network translated layer by layer from the same Net
(convolution, Caffe's ceil-mode pooling, LRN, ReLU, dropout, concat, inner product, softmax)
with the same random weights, and times in the same process:

* ``fwd``: inference. Our TEST-phase net (dropout is the identity) against the PyTorch net in
  eval mode under ``torch.inference_mode()``.
* ``fwd+bwd``: our TRAIN-phase net with ``force_backward`` (every layer runs backward: the
  input gradient of every layer, the first included, and all parameter gradients) against
  the PyTorch net in train mode (dropout active), input ``requires_grad``, ``backward`` with
  the same random gradient on the output. Parameter gradients are reset outside the timed
  region on both sides.

Each measurement alternates one repetition of ours with one of PyTorch's (in swapped order
every other time), so that load from other processes on a shared machine hits both; the
table shows the minimum per side and ``ours/torch`` as the ratio of the minima (``med`` is
the ratio of the medians, for the noise). Both sides are limited alike to 1 and to 2 threads
(threadpoolctl for the BLAS, ``ristretto_cli.parallel`` for our element-wise work,
``torch.set_num_threads``). A pair of repetitions during which
other processes used CPU time that our threads needed (from /proc/stat) is redone, within
``--patience`` seconds per measurement; the table flags what was kept under load. With
several threads each timed call starts after a short pause (``--settle``), so that neither
library's idle worker threads, which spin for a while after a call, take the CPUs from the
other's next call, followed by untimed calls of the same side for ``--warm`` seconds: the
timed call then runs as passes do in training or scoring, right after others.

``--nets mobilenet,mobilenet_v2,resnet50`` times further model-zoo nets the same way (their
BatchNorm statistics calibrated on the input, see ``calibrate_batch_norm``; no targets).

It also measures the machine's float32 GEMM rate (a large square ``numpy.matmul``) and the
fraction of it that our convolution and inner-product FLOPs achieve per pass (a backward pass
is counted as twice the forward FLOPs). A report, not a test:

    .venv/bin/python benchmarks/bench_layers.py [--quick] [--reps N] [--threads 1,2]
                        [--nets lenet,caffenet] [--patience S] [--settle S] [--warm S]
                        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("RISTRETTO_SHARED_DATA", REPO.parent / "shared" / "data"))

NETS = {
    "lenet": ("LeNet", "models/lenet/lenet.prototxt", 64),
    "cifar10": ("CIFAR-10 quick", "models/cifar10_quick/cifar10_quick.prototxt", 100),
    "caffenet": ("CaffeNet", "prototxt/bvlc_reference_caffenet/deploy.prototxt", 10),
    "squeezenet": ("SqueezeNet 1.0", "prototxt/squeezenet_v1.0/deploy.prototxt", 10),
}
#: Further nets, timed only when named in ``--nets`` and held to no target: deploy files with
#: batch normalisation, residual sums and depthwise convolutions.
MORE_NETS = {
    "mobilenet": ("MobileNet v1", "prototxt/mobilenet/mobilenet_deploy.prototxt", 10),
    "mobilenet_v2": ("MobileNet v2", "prototxt/mobilenet/mobilenet_v2_deploy.prototxt", 10),
    "resnet50": ("ResNet-50", "prototxt/resnet/ResNet-50-deploy.prototxt", 4),
}
CONV_HEAVY = ("caffenet", "squeezenet")
TARGET_RATIO = 1.25
TARGET_GEMM_FRACTION = 0.5


# ----------------------------------------------------------------------------- our nets
def build_ours(path: Path, batch: int, phase: int):
    from ristretto_cli.io import read_net_param
    from ristretto_cli.net import TRAIN, Net
    param = read_net_param(path)
    param.force_backward = phase == TRAIN   # inference: no backward state, as torch.inference_mode
    for lp in param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    return Net(param, phase, seed=0)


def randomise_weights(net, rng: np.random.Generator) -> None:
    """He-scaled Gaussian weights and small biases: activations stay in a normal range through
    deep nets (deploy prototxts have no fillers, and all-zero weights would be unrealistic)."""
    for layer in net.layers:
        if not layer.blobs:
            continue
        if layer.type == "BatchNorm":     # unit statistics until calibrate_batch_norm
            for blob, value in zip(layer.blobs, (0, 1, 1)):
                blob.data[...] = value
            continue
        if layer.type == "Scale":         # factors near one, small offsets
            layer.blobs[0].data[...] = rng.uniform(0.8, 1.2, layer.blobs[0].shape).astype(np.float32)
            for b in layer.blobs[1:]:
                b.data[...] = rng.uniform(-0.05, 0.05, b.data.shape).astype(np.float32)
            continue
        w = layer.blobs[0].data
        fan_in = w.size // w.shape[0]
        w[...] = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        for b in layer.blobs[1:]:
            b.data[...] = rng.uniform(-0.05, 0.05, b.data.shape).astype(np.float32)


def calibrate_batch_norm(net) -> bool:
    """Sets every BatchNorm's running statistics to those of its input in a forward pass of
    the net's current input, layer by layer (as a trained net's would be), so that the
    activations of deep random nets keep their scale and the outputs compared with PyTorch
    are not saturated. Returns whether the net has any BatchNorm."""
    found = False
    for i, layer in enumerate(net.layers):
        if layer.type == "BatchNorm":
            x = net.bottom_vecs[i][0].data
            axes = (0,) + tuple(range(2, x.ndim))
            layer.blobs[0].data[...] = x.mean(axis=axes).reshape(layer.blobs[0].shape)
            layer.blobs[1].data[...] = x.var(axis=axes).reshape(layer.blobs[1].shape)
            layer.blobs[2].data[...] = 1
            found = True
        net.forward(i, i)
    return found


def share_weights(dst, src) -> None:
    for a, b in zip(src.layers, dst.layers):
        for pa, pb in zip(a.blobs, b.blobs):
            pb.data[...] = pa.data


def gemm_flops(net) -> int:
    """Multiply-adds x 2 of every Convolution and InnerProduct layer's forward."""
    total = 0
    for layer, tops in zip(net.layers, net.top_vecs):
        if layer.type == "Convolution":
            w = layer.blobs[0].data
            total += 2 * tops[0].count * (w.size // w.shape[0])
        elif layer.type == "InnerProduct":
            total += 2 * layer.m * layer.k * layer.num_output
    return total


# ----------------------------------------------------------------------------- PyTorch twin
def _torch_op(layer, bottoms: list[str], tops: list[str], param_of):
    """The PyTorch function computing ``layer`` (tensors in, tensor out), or a
    ``("dropout", ratio)`` marker (dropout follows the module's training flag)."""
    import torch
    import torch.nn.functional as F

    from ristretto_cli.proto import caffe_pb2

    t, lp = layer.type, layer.param
    if t == "Convolution":
        w = param_of(layer.blobs[0])
        b = param_of(layer.blobs[1]) if layer.bias_term else None
        stride, pad, dilation, group = layer.stride, layer.pad, layer.dilation, layer.group

        def conv(x):
            return F.conv2d(x, w, b, stride, pad, dilation, group)
        return conv
    if t == "InnerProduct":
        w = param_of(layer.blobs[0])
        b = param_of(layer.blobs[1]) if layer.bias_term else None

        def linear(x):
            return F.linear(x.flatten(1), w, b)
        return linear
    if t == "Pooling":
        pp = lp.pooling_param
        kernel, stride, pad = layer.kernel, layer.stride, layer.pad
        if layer.global_pooling:
            reduce = F.adaptive_max_pool2d if pp.pool == pp.MAX else F.adaptive_avg_pool2d

            def global_pool(x):
                return reduce(x, 1)
            return global_pool
        if pp.pool == pp.MAX:
            def max_pool(x):
                return F.max_pool2d(x, kernel, stride, pad, ceil_mode=True)
            return max_pool
        if pp.pool == pp.AVE:
            def ave_pool(x):
                return F.avg_pool2d(x, kernel, stride, pad, ceil_mode=True, count_include_pad=True)
            return ave_pool
    if t == "ReLU" and not lp.relu_param.negative_slope:
        inplace = bottoms[0] == tops[0]   # as in Caffe (a conv/fc backward needs no output)

        def relu(x):
            return F.relu(x, inplace=inplace)
        return relu
    if t == "LRN" and lp.lrn_param.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
        size, alpha, beta, k = layer.size, layer.alpha, layer.beta, layer.k

        def lrn(x):
            return F.local_response_norm(x, size, alpha, beta, k)
        return lrn
    if t == "Dropout":
        return ("dropout", lp.dropout_param.dropout_ratio)
    if t == "BatchNorm":
        factor = float(layer.blobs[2].data.reshape(-1)[0])
        scale = 0.0 if factor == 0 else 1.0 / factor
        mean = torch.from_numpy(layer.blobs[0].data.reshape(-1) * np.float32(scale))
        var = torch.from_numpy(layer.blobs[1].data.reshape(-1) * np.float32(scale))
        return ("batchnorm", mean, var, float(np.float32(lp.batch_norm_param.eps)))
    if t == "Scale" and len(bottoms) == 1 and layer.param.scale_param.axis == 1:
        s = param_of(layer.blobs[0])
        b = param_of(layer.blobs[1]) if len(layer.blobs) > 1 else None

        def scale(x):
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = x * s.view(shape)
            return y if b is None else y + b.view(shape)
        return scale
    if t == "Eltwise" and not lp.eltwise_param.coeff:
        ep = lp.eltwise_param
        if ep.operation == ep.SUM:
            def eltwise_sum(*xs):
                return sum(xs[1:], xs[0])
            return eltwise_sum
        if ep.operation == ep.PROD:
            def eltwise_prod(*xs):
                y = xs[0]
                for x in xs[1:]:
                    y = y * x
                return y
            return eltwise_prod
    if t == "Softmax" and lp.softmax_param.axis == 1:
        def softmax(x):
            return F.softmax(x, dim=1)
        return softmax
    if t == "Concat":
        axis = lp.concat_param.axis

        def concat(*xs):
            return torch.cat(xs, axis)
        return concat
    raise NotImplementedError(f"no PyTorch twin for layer {layer.name} ({t})")


def torch_twin(net):
    """A torch.nn.Module running ``net``'s layers in order on torch tensors, with copies of
    its weights; the output is the net's single output blob."""
    import torch
    import torch.nn.functional as F

    ops = []          # (function, bottom names, top name)
    params = torch.nn.ParameterList()

    def param_of(blob):
        params.append(torch.nn.Parameter(torch.from_numpy(blob.data.copy())))
        return params[-1]

    for layer in net.layers:
        bottoms, tops = list(layer.param.bottom), list(layer.param.top)
        if layer.type == "Input":
            continue
        if layer.type == "Split":      # the same tensor twice: autograd sums the gradients
            ops.extend((None, bottoms, top) for top in tops)
            continue
        ops.append((_torch_op(layer, bottoms, tops, param_of), bottoms, tops[0]))

    class Twin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = params
            self.input_name = net.input_names[0]
            self.output_name = net.output_names[0]

        def forward(self, x):
            blobs = {self.input_name: x}
            for fn, bottoms, top in ops:
                if fn is None:
                    blobs[top] = blobs[bottoms[0]]
                elif isinstance(fn, tuple) and fn[0] == "batchnorm":   # running or batch statistics
                    blobs[top] = F.batch_norm(blobs[bottoms[0]], fn[1], fn[2], training=self.training,
                                              momentum=0.0, eps=fn[3])
                elif isinstance(fn, tuple):
                    blobs[top] = F.dropout(blobs[bottoms[0]], fn[1], self.training)
                else:
                    blobs[top] = fn(*(blobs[b] for b in bottoms))
            return blobs[self.output_name]

    return Twin()


# ----------------------------------------------------------------------------- timing
class Case:
    """One network, both implementations, ready to run forward or forward+backward."""

    def __init__(self, key: str):
        import torch

        from ristretto_cli.net import TEST, TRAIN
        self.key = key
        self.title, rel, self.batch = {**NETS, **MORE_NETS}[key]
        path = SHARED / rel
        self.test_net = build_ours(path, self.batch, TEST)
        self.train_net = build_ours(path, self.batch, TRAIN)
        rng = np.random.default_rng(0)
        randomise_weights(self.test_net, rng)
        share_weights(self.train_net, self.test_net)
        name = self.test_net.input_names[0]
        shape = self.test_net.blobs[name].shape
        x = rng.standard_normal(shape, dtype=np.float32)
        for net in (self.test_net, self.train_net):
            net.blobs[name].data[...] = x
        if calibrate_batch_norm(self.test_net):
            share_weights(self.train_net, self.test_net)
        self.torch_net = torch_twin(self.test_net)
        self.x = torch.from_numpy(x.copy())
        self.x_grad = self.x.clone().requires_grad_(True)
        out = self.test_net.output_names[0]
        self.out = out
        self.dy = rng.standard_normal(self.test_net.blobs[out].shape, dtype=np.float32)
        self.dy_t = torch.from_numpy(self.dy.copy())
        self.flops = gemm_flops(self.test_net)
        self.check = self._check()

    def _check(self) -> float:
        """Largest |ours - torch| of the inference outputs relative to the largest |output|:
        evidence that the two nets compute the same function."""
        import torch
        self.test_net.forward()
        self.torch_net.eval()
        with torch.inference_mode():
            ref = self.torch_net(self.x).numpy()
        ours = self.test_net.blobs[self.out].data
        if ours.shape != ref.shape:
            raise RuntimeError(f"{self.title}: output shapes differ: {ours.shape} vs {ref.shape}")
        return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))

    # -- single repetitions, each returning seconds
    def ours_fwd(self) -> float:
        t0 = time.perf_counter()
        self.test_net.forward()
        return time.perf_counter() - t0

    def ours_fwdbwd(self) -> float:
        net = self.train_net
        net.clear_param_diffs()
        net.blobs[self.out].diff[...] = self.dy
        t0 = time.perf_counter()
        net.forward()
        net.blobs[self.out].diff[...] = self.dy
        net.backward()
        return time.perf_counter() - t0

    def torch_fwd(self) -> float:
        import torch
        self.torch_net.eval()
        with torch.inference_mode():
            t0 = time.perf_counter()
            self.torch_net(self.x)
            return time.perf_counter() - t0

    def torch_fwdbwd(self) -> float:
        self.torch_net.train()
        self.torch_net.zero_grad(set_to_none=True)
        self.x_grad.grad = None
        t0 = time.perf_counter()
        y = self.torch_net(self.x_grad)
        y.backward(self.dy_t)
        return time.perf_counter() - t0


class LoadMonitor:
    """CPU time that *other* processes used during a measurement: all CPUs' busy time from
    /proc/stat minus this process's own CPU time. On a shared machine a repetition during
    which others were busy is timed against a partly taken machine, so it is redone."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.available = self._busy() is not None
        self.rejected = 0
        self.spare = 0.0     # CPUs that others may use without taking ours (set per thread count)

    @staticmethod
    def _busy():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)   # minus idle, iowait

    def start(self):
        return (self._busy(), time.process_time(), time.perf_counter())

    def disturbed(self, mark, limit: float = 0.15) -> bool:
        """True when other processes used more than the spare CPUs plus ``limit`` of one CPU
        since ``mark`` (plus two clock ticks of slack: /proc/stat counts in ticks)."""
        if not self.available:
            return False
        busy0, cpu0, t0 = mark
        others = (self._busy() - busy0) / self.hz - (time.process_time() - cpu0)
        return others > (self.spare + limit) * (time.perf_counter() - t0) + 2 / self.hz


def interleaved(ours, theirs, reps: int, monitor: LoadMonitor, patience: float, settle: float,
                warm: float = 0.0, warmup: int = 2) -> tuple[list[float], list[float], int]:
    """``reps`` timings of each, alternating which goes first. A pair during which other
    processes were busy is redone after a pause, for up to ``patience`` seconds; after that
    pairs are kept as they come. Returns the timings and how many kept pairs were disturbed.

    ``settle`` seconds pass before each timed call: after a parallel call, OpenBLAS's and
    OpenMP's worker threads keep spinning for a while (about 0.1 s for OpenBLAS, over half a
    second for PyTorch's: our SqueezeNet forward measured 286 ms 0.5 s after a PyTorch
    convolution, 201 ms 1 s after it), and on a machine with few cores they would take the
    CPUs from the other side's next call. After the pause each side makes untimed calls for
    ``warm`` seconds (at least one), so that the timed call runs as passes do in training or
    scoring, right after others of the same side: on a virtual machine, cores that idled for
    a second are slow to come back (our CIFAR-10 quick forward at 2 threads measured 46, 30,
    then 24 ms in three calls after a 1 s pause)."""
    def timed(fn):
        if settle:
            time.sleep(settle)
            until = time.perf_counter() + warm
            fn()
            while time.perf_counter() < until:
                fn()
        return fn()

    for _ in range(warmup):
        ours()
        theirs()
    a, b = [], []
    deadline = time.perf_counter() + patience
    disturbed = 0
    while len(a) < reps:
        mark = monitor.start()
        if len(a) % 2:
            tb, ta = timed(theirs), timed(ours)
        else:
            ta, tb = timed(ours), timed(theirs)
        if monitor.disturbed(mark):
            if time.perf_counter() < deadline:
                monitor.rejected += 1
                time.sleep(0.5)
                continue
            disturbed += 1
        a.append(ta)
        b.append(tb)
    return a, b, disturbed


def gemm_gflops(reps: int, monitor: LoadMonitor, patience: float, n: int = 2048) -> float:
    """Best float32 GEMM rate of numpy's BLAS (n x n times n x n), preferring runs that other
    processes did not disturb (see ``interleaved``)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    times = []
    deadline = time.perf_counter() + patience
    while len(times) < reps:
        mark = monitor.start()
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        t = time.perf_counter() - t0
        if monitor.disturbed(mark) and time.perf_counter() < deadline:
            time.sleep(0.5)
            continue
        times.append(t)
    return 2.0 * n ** 3 / min(times) / 1e9


def measure(cases: list[Case], threads: int, reps: int, monitor: LoadMonitor,
            patience: float, settle: float, warm: float) -> dict:
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(threads)
    result = {"threads": threads, "nets": {}}
    rejected = monitor.rejected
    monitor.spare = max(0, (os.cpu_count() or threads) - threads)
    from ristretto_cli import parallel
    with threadpool_limits(limits=threads, user_api="blas"), parallel.limited(threads):
        gemm = gemm_gflops(max(3, reps // 2), monitor, patience)
        for case in cases:
            entry = {"batch": case.batch, "gemm_gflop_per_fwd": case.flops / 1e9,
                     "max_rel_diff": case.check}
            for mode, ours, theirs, flops in (
                    ("fwd", case.ours_fwd, case.torch_fwd, case.flops),
                    ("fwd+bwd", case.ours_fwdbwd, case.torch_fwdbwd, 3 * case.flops)):
                a, b, disturbed = interleaved(ours, theirs, reps, monitor, patience,
                                              settle if threads > 1 else 0.0, warm)
                entry[mode] = {
                    "ours_ms": min(a) * 1e3, "torch_ms": min(b) * 1e3,
                    "ours_median_ms": statistics.median(a) * 1e3,
                    "torch_median_ms": statistics.median(b) * 1e3,
                    "ratio": min(a) / min(b),
                    "median_ratio": statistics.median(a) / statistics.median(b),
                    "disturbed_pairs": disturbed,
                    "ours_gflops": flops / min(a) / 1e9,
                    "torch_gflops": flops / min(b) / 1e9,
                }
            result["nets"][case.key] = entry
        # measured again at the end: the better of the two is the machine's rate
        result["gemm_gflops"] = max(gemm, gemm_gflops(max(3, reps // 2), monitor, patience))
    for entry in result["nets"].values():
        for mode in ("fwd", "fwd+bwd"):
            m = entry[mode]
            m["ours_gemm_fraction"] = m["ours_gflops"] / result["gemm_gflops"]
            m["torch_gemm_fraction"] = m["torch_gflops"] / result["gemm_gflops"]
    result["rejected_repetitions"] = monitor.rejected - rejected
    return result


# ----------------------------------------------------------------------------- report
def print_table(res: dict, cases: list[Case]) -> list[str]:
    """Prints one thread count's table; returns the missed targets."""
    missed = []
    print(f"\n{res['threads']} thread(s): float32 GEMM {res['gemm_gflops']:.1f} GFLOP/s; "
          f"{res['rejected_repetitions']} repetition pair(s) redone because other processes "
          f"were busy meanwhile")
    head = (f"{'net':<15}{'batch':>6}  {'mode':<8}{'ours ms':>10}{'torch ms':>10}"
            f"{'ours/torch':>11}{'med':>6}{'GEMM %':>8}{'torch %':>8}")
    print(head)
    print("-" * len(head))
    for case in cases:
        entry = res["nets"][case.key]
        for mode in ("fwd", "fwd+bwd"):
            m = entry[mode]
            flag = "" if m["ratio"] <= TARGET_RATIO or case.key not in NETS else "  > target"
            if m["disturbed_pairs"]:
                flag += f"  ({m['disturbed_pairs']} pair(s) under load)"
            print(f"{case.title:<15}{case.batch:>6}  {mode:<8}{m['ours_ms']:>10.2f}{m['torch_ms']:>10.2f}"
                  f"{m['ratio']:>10.2f}x{m['median_ratio']:>5.2f}x"
                  f"{100 * m['ours_gemm_fraction']:>7.0f}%{100 * m['torch_gemm_fraction']:>7.0f}%{flag}")
            if m["ratio"] > TARGET_RATIO and case.key in NETS:
                missed.append(f"{case.title} {mode} at {res['threads']} thread(s): {m['ratio']:.2f}x")
            if case.key in CONV_HEAVY and m["ours_gemm_fraction"] < TARGET_GEMM_FRACTION:
                missed.append(f"{case.title} {mode} at {res['threads']} thread(s): "
                              f"{100 * m['ours_gemm_fraction']:.0f}% of GEMM")
    return missed


def host_description() -> str:
    """The CPU's model name and the BLAS kernels NumPy's OpenBLAS picked for it: the ratios
    depend on both (see docs/performance.md), so every report names them."""
    from threadpoolctl import threadpool_info
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    blas = next((i for i in threadpool_info()
                 if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")), None)
    if blas is None:
        return model
    return f"{model} ({blas.get('internal_api')} {blas.get('version')}, {blas.get('architecture')} kernels)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per side (default 15, quick 5)")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    ap.add_argument("--nets", default=",".join(NETS),
                    help=f"subset of {','.join(NETS)}, or of {','.join(MORE_NETS)} (no targets)")
    ap.add_argument("--json", type=Path, default=None, help="write the results to this file")
    ap.add_argument("--patience", type=float, default=None,
                    help="seconds per measurement to wait out other processes' load (default 20, quick 5)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="pause in seconds before each timed call with several threads (default 1)")
    ap.add_argument("--warm", type=float, default=0.2,
                    help="seconds of untimed calls after each pause (default 0.2)")
    args = ap.parse_args(argv)
    if args.patience is None:
        args.patience = 5.0 if args.quick else 20.0
    try:
        import threadpoolctl  # noqa: F401
        import torch
    except ImportError as exc:
        print(f"bench_layers needs torch and threadpoolctl ({exc}); skipped")
        return 0
    reps = args.reps or (5 if args.quick else 15)
    keys = [k.strip() for k in args.nets.split(",") if k.strip()]
    unknown = [k for k in keys if k not in NETS and k not in MORE_NETS]
    if unknown:
        known = ", ".join(list(NETS) + list(MORE_NETS))
        ap.error(f"unknown net(s) {', '.join(unknown)}; choose from {known}")
    threads = [int(t) for t in args.threads.split(",")]

    host = host_description()
    print(f"bench_layers: {host}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, torch {torch.__version__}, {reps} repetitions per side")
    cases = [Case(k) for k in keys]
    for case in cases:
        print(f"  {case.title}: {case.flops / 1e9:.3f} GFLOP conv+fc per forward, outputs match "
              f"PyTorch to {case.check:.1e} (max |diff| / max |output|)")
    monitor = LoadMonitor()
    results = [measure(cases, t, reps, monitor, args.patience, args.settle, args.warm) for t in threads]
    missed = []
    for res in results:
        missed += print_table(res, cases)
    print(f"\nratio = min ours / min torch over {reps} interleaved repetitions (med: medians); "
          f"GEMM % = conv+fc FLOPs / time / GEMM rate (backward counted as 2x forward)")
    print(f"targets: ours/torch <= {TARGET_RATIO} everywhere; >= {100 * TARGET_GEMM_FRACTION:.0f}% "
          f"of GEMM for {', '.join(NETS[k][0] for k in CONV_HEAVY)}")
    print("all targets met" if not missed else "missed: " + "; ".join(missed))
    if args.json:
        args.json.write_text(json.dumps({"host": host, "reps": reps, "results": results,
                                         "targets_met": not missed, "missed": missed}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
