"""The net's own shortcuts against plain layer-by-layer execution, over random topologies.

A Net runs some work out of Caffe's layer order, each time for the same values: an in-place
ReLU applied by the layer before it while its top is in cache (``_fused_relus``), a ReLU's
gradient applied by the one layer that reads its blob (``_gated_relus``), and a Concat whose
bottoms are written straight into its top (``alias_bottoms``). Each is tested on fixed nets
in test_net.py and test_net_relu_gate.py. Here seeded random nets mix them: convolutions,
ReLUs (in place or not, plain or leaky), pooling, Concat, Eltwise, in-place BatchNorm and
Dropout, blobs read by several layers (Caffe's Splits), and a loss. Every blob's values
and gradients and every parameter gradient, after two training iterations, must equal bit
for bit those of the same net with the three shortcuts off, on one thread and, in small
chunks, on two. And a net reshaped between passes (other batch sizes and image sizes) must
give the bits of a net built at each shape: work arrays, cached paddings and chunk plans
follow the shape.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from conftest import small_work_units
from google.protobuf import text_format

from ristretto_cli import parallel
from ristretto_cli.net import TRAIN, Net
from ristretto_cli.proto import caffe_pb2

FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def random_net(seed: int) -> str:
    """A random TRAIN net as prototxt. In-place layers only take a blob that no layer has
    read since it was written: otherwise Caffe's Split would make the in-place top a second
    producer of the blob, which Caffe rejects."""
    rnd = random.Random(seed)
    channels, size, batch = rnd.choice([2, 4, 8]), rnd.choice([6, 8, 12]), rnd.choice([1, 2, 3])
    lines = ['name: "random" layer { name: "data" type: "Input" top: "data" top: "label" '
             f'input_param {{ shape {{ dim: {batch} dim: {channels} dim: {size} dim: {size} }} '
             f'shape {{ dim: {batch} }} }} }}']
    blobs = [("data", channels, size)]      # name, channels, spatial size
    read: set[str] = set()                  # blobs read since they were last written
    for k in range(1, rnd.randint(3, 10)):
        name, kind = f"l{k}", rnd.choice(["conv", "conv", "relu", "relu", "pool", "concat",
                                          "eltwise", "batchnorm", "dropout"])
        # A ReLU mostly right after the layer that wrote its blob, as in real nets
        src, c, s = blobs[-1] if kind == "relu" and rnd.random() < 0.6 else rnd.choice(blobs[-3:])
        if kind == "conv":
            o, ks = rnd.choice([2, 4, 6]), rnd.choice([1, 3])
            group = rnd.choice([1, 2]) if c % 2 == 0 and o % 2 == 0 else 1
            lines.append(f'layer {{ name: "{name}" type: "Convolution" bottom: "{src}" top: "{name}" '
                         f'convolution_param {{ num_output: {o} kernel_size: {ks} pad: {ks // 2} '
                         f'group: {group} {FILLERS} }} }}')
            blobs.append((name, o, s))
            read.add(src)
        elif kind == "relu":
            in_place = src not in read and rnd.random() < 0.8
            top = src if in_place else name
            slope = rnd.choice([0, 0, 0, 0.1])
            lines.append(f'layer {{ name: "{name}" type: "ReLU" bottom: "{src}" top: "{top}" '
                         f'relu_param {{ negative_slope: {slope} }} }}')
            if not in_place:
                blobs.append((name, c, s))
                read.add(src)
        elif kind == "pool":
            ks, stride = rnd.choice([2, 3]), rnd.choice([1, 2])
            if s < ks:
                continue
            pool = rnd.choice(["MAX", "MAX", "AVE"])
            lines.append(f'layer {{ name: "{name}" type: "Pooling" bottom: "{src}" top: "{name}" '
                         f'pooling_param {{ pool: {pool} kernel_size: {ks} stride: {stride} }} }}')
            blobs.append((name, c, math.ceil((s - ks) / stride) + 1))
            read.add(src)
        elif kind in ("concat", "eltwise"):
            others = [b for b in blobs if b[2] == s and b[0] != src and (kind == "concat" or b[1] == c)]
            if not others:
                continue
            other = rnd.choice(others)
            if kind == "concat":
                lines.append(f'layer {{ name: "{name}" type: "Concat" bottom: "{src}" '
                             f'bottom: "{other[0]}" top: "{name}" }}')
                blobs.append((name, c + other[1], s))
            else:
                op = rnd.choice(["SUM", "PROD", "MAX"])
                lines.append(f'layer {{ name: "{name}" type: "Eltwise" bottom: "{src}" '
                             f'bottom: "{other[0]}" top: "{name}" eltwise_param {{ operation: {op} }} }}')
                blobs.append((name, c, s))
            read.update([src, other[0]])
        elif src not in read:               # in-place BatchNorm or Dropout
            layer_type = "BatchNorm" if kind == "batchnorm" else "Dropout"
            lines.append(f'layer {{ name: "{name}" type: "{layer_type}" bottom: "{src}" top: "{src}" }}')
    lines.append(f'layer {{ name: "score" type: "InnerProduct" bottom: "{blobs[-1][0]}" top: "score" '
                 f'inner_product_param {{ num_output: 3 {FILLERS} }} }}')
    lines.append('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }')
    return "\n".join(lines)


def _train(text: str, seed: int, shortcuts: bool) -> dict[str, np.ndarray]:
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN, seed=seed)
    if not shortcuts:
        net._fused_relus, net._gated_relus = set(), {}
        for layer in net.layers:
            layer.alias_bottoms = ()
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 3, net.blobs["label"].shape)
    for iteration in range(2):
        net.reseed(seed, 0, iteration)
        net.clear_param_diffs()
        net.forward_backward()
    state = {}
    for name, blob in net.blobs.items():
        state[f"{name} data"], state[f"{name} diff"] = blob.data.copy(), blob.diff.copy()
    for layer_name, layer in zip(net.layer_names, net.layers):
        for j, blob in enumerate(layer.blobs):
            state[f"{layer_name} param {j} diff"] = blob.diff.copy()
    return state


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("first", range(0, 200, 25), ids=lambda s: f"seeds {s}-{s + 24}")
def test_shortcuts_give_the_values_of_plain_execution(first, threads, monkeypatch):
    if threads > 1:
        small_work_units(monkeypatch, threads)
    else:
        monkeypatch.setattr(parallel, "_threads", 1)
    for seed in range(first, first + 25):
        text = random_net(seed)
        fast, plain = _train(text, seed, True), _train(text, seed, False)
        assert fast.keys() == plain.keys()
        for key in fast:
            np.testing.assert_array_equal(fast[key].view(np.uint32), plain[key].view(np.uint32),
                                          err_msg=f"seed {seed}: {key}\n{text}")


def test_the_random_nets_use_every_shortcut():
    """The draws above are only worth their time if they reach the shortcuts."""
    fused = gated = aliased = 0
    for seed in range(200):
        net = Net(text_format.Parse(random_net(seed), caffe_pb2.NetParameter()), TRAIN, seed=seed)
        fused += bool(net._fused_relus)
        gated += bool(net._gated_relus)
        aliased += any(any(getattr(layer, "alias_bottoms", ())) for layer in net.layers)
    assert fused >= 20 and gated >= 20 and aliased >= 5, (fused, gated, aliased)


def _with_global_pooling_head(text: str) -> str:
    """The random net with a global average pooling before its scores, so that it takes any
    spatial size (the inner product's input size is fixed at set-up, as in Caffe)."""
    head = 'layer { name: "score" type: "InnerProduct" bottom: "'
    start = text.index(head) + len(head)
    last = text[start:text.index('"', start)]
    pooling = (f'layer {{ name: "gap" type: "Pooling" bottom: "{last}" top: "gap" '
               'pooling_param { pool: AVE global_pooling: true } }\n')
    return text.replace(head + last + '"', pooling + head + 'gap"')


@pytest.mark.parametrize("first", range(0, 60, 20), ids=lambda s: f"seeds {s}-{s + 19}")
def test_a_net_reshaped_between_passes_gives_the_bits_of_a_net_built_at_each_shape(first):
    """Work arrays, cached paddings and layouts, and chunk plans follow the input's shape."""
    for seed in range(first, first + 20):
        param = text_format.Parse(_with_global_pooling_head(random_net(seed)), caffe_pb2.NetParameter())
        n, c, _, s = param.layer[0].input_param.shape[0].dim
        moving = Net(param, TRAIN, seed=seed)
        for step, (batch, size) in enumerate([(n, s), (n + 2, s + 3), (max(1, n - 1), s + 1),
                                              (n + 5, s + 7), (n, s)]):
            fixed = caffe_pb2.NetParameter()
            fixed.CopyFrom(param)
            fixed.layer[0].input_param.shape[0].dim[:] = [batch, c, size, size]
            fixed.layer[0].input_param.shape[1].dim[:] = [batch]
            built = Net(fixed, TRAIN, seed=seed)
            for a, b in zip(moving.layers, built.layers):
                for pa, pb in zip(a.blobs, b.blobs):
                    pb.data[...] = pa.data
            rng = np.random.default_rng(seed * 10 + step)
            x, labels = rng.standard_normal((batch, c, size, size)), rng.integers(0, 3, batch)
            states = []
            for net in (moving, built):
                net.blobs["data"].reshape((batch, c, size, size))
                net.blobs["label"].reshape((batch,))
                net.reshape()
                net.blobs["data"].data[...], net.blobs["label"].data[...] = x, labels
                net.reseed(seed, 0, step)
                net.clear_param_diffs()
                net.forward_backward()
                states.append({name: (b.data.copy(), b.diff.copy()) for name, b in net.blobs.items()})
            for name, (data, diff) in states[0].items():
                np.testing.assert_array_equal(data.view(np.uint32), states[1][name][0].view(np.uint32),
                                              err_msg=f"seed {seed}, shape {step}: {name}")
                np.testing.assert_array_equal(diff.view(np.uint32), states[1][name][1].view(np.uint32),
                                              err_msg=f"seed {seed}, shape {step}: {name} diff")
