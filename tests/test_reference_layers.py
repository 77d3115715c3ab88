"""Forward and backward of single layers against the real Caffe CPU build (1e-5 relative).

Each case net (Input layers + the layer under test) is built by our Net; inputs and given
parameter blobs come from the reference file; the backward is driven as the reference driver
did: the top diff of every non-loss top is the fixed pattern, loss tops keep their loss
weight, propagate_down is true except for SoftmaxWithLoss labels, Accuracy is forward only.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TEST_DATA

from ristretto_cli.io.prototxt import read_net_param
from ristretto_cli.net import TEST, Net

CASES_DIR = TEST_DATA / "reference_layers"
INDEX = json.loads((CASES_DIR / "index.json").read_text())


def diff_pattern(shape) -> np.ndarray:
    i = np.arange(int(np.prod(shape)), dtype=np.int64)
    return (((i * 53 + 11) % 97 - 48) / 32).astype(np.float32).reshape(shape)


def assert_close(got, want, what):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    scale = max(np.abs(want).max(initial=0.0), 1e-30)
    err = np.abs(got - want).max(initial=0.0)
    # 1e-5 relative to the blob's magnitude (elementwise relative would reward tiny values)
    assert err <= 1e-5 * scale, f"{what}: max abs error {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("case", sorted(INDEX))
def test_layer_matches_caffe(case):
    ref = np.load(CASES_DIR / INDEX[case]["npz"])
    net = Net(read_net_param(str(CASES_DIR / INDEX[case]["prototxt"])), TEST)
    for name in net.input_names:
        net.blobs[name].data[...] = ref[f"blob_{name}"]
    layer = net.layers[-1]
    # Filler-initialised parameters were drawn by Caffe's RNG: use its values.
    for k, blob in enumerate(layer.blobs):
        key = f"param_{layer.name}_{k}"
        if key in ref:
            blob.data[...] = ref[key]
    net.forward()
    for name, blob in net.blobs.items():
        if f"blob_{name}" in ref:
            assert_close(blob.data, ref[f"blob_{name}"], f"{case}: forward blob {name}")
    if layer.type == "Accuracy":
        return
    for t, w in zip(net.top_vecs[-1], layer.loss_weights):
        t.diff = np.full(t.shape, w, np.float32) if w else diff_pattern(t.shape)
    for blob in layer.blobs:
        blob.diff = np.zeros_like(blob.data)
    layer.param_propagate_down = [True] * len(layer.blobs)
    propagate = [not (layer.type == "SoftmaxWithLoss" and j == 1) for j in range(len(net.bottom_vecs[-1]))]
    layer.backward(net.top_vecs[-1], propagate, net.bottom_vecs[-1])
    for j, b in enumerate(net.bottom_vecs[-1]):
        if propagate[j] and f"diff_{b.name}" in ref:
            assert_close(b.diff, ref[f"diff_{b.name}"], f"{case}: bottom diff {b.name}")
    for k, blob in enumerate(layer.blobs):
        key = f"pdiff_{layer.name}_{k}"
        if key in ref:
            assert_close(blob.diff, ref[key], f"{case}: param diff {k}")
