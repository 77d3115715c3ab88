"""SPP (spatial pyramid pooling): the per-level pooling geometry (kernel ceil(size / 2**l),
pad half the shortfall rounded up, stride = kernel), the output layout (levels in order,
each flattened per item), the 4-D top of a one-level pyramid, forward against direct
pooling loops, backward, Caffe's checks and shape tests, and a net whose input changes size."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import TEST, TRAIN, check_forward, check_gradient, forward, setup

from ristretto_cli.errors import RistrettoError
from ristretto_cli.net import Net
from ristretto_cli.proto import caffe_pb2

RNG = np.random.default_rng(5)


def distinct(*shape):
    """Values at least 0.1 apart: no max ties, no kink within a finite-difference step."""
    return RNG.permutation(int(np.prod(shape))).reshape(shape) * 0.1


def pool(x, kind, kernel, pad):
    """Direct loops over the windows of Caffe's pooling with stride = kernel (ceil mode; with
    padding, a last window starting in the padding is dropped). MAX over the cells of the
    window inside the image; AVE divides by the window clipped to the padded extent."""
    n_, c_, h, w = x.shape
    sizes = []
    for size, k, p in zip((h, w), kernel, pad):
        out = math.ceil((size + 2 * p - k) / k) + 1
        if p and (out - 1) * k >= size + p:
            out -= 1
        sizes.append(out)
    top = np.zeros((n_, c_, *sizes))
    for n, c, i, j in itertools.product(range(n_), range(c_), range(sizes[0]), range(sizes[1])):
        hs, ws = i * kernel[0] - pad[0], j * kernel[1] - pad[1]
        if kind == "MAX":
            top[n, c, i, j] = x[n, c, max(hs, 0):min(hs + kernel[0], h), max(ws, 0):min(ws + kernel[1], w)].max()
        else:
            he, we = min(hs + kernel[0], h + pad[0]), min(ws + kernel[1], w + pad[1])
            window = x[n, c, max(hs, 0):min(he, h), max(ws, 0):min(we, w)]
            top[n, c, i, j] = window.sum() / ((he - hs) * (we - ws))
    return top


def spp_reference(x, height, kind):
    """Levels 0..height-1: 2**l bins, kernel ceil(size / bins), pad (kernel * bins - size + 1) // 2."""
    levels = []
    for level in range(height):
        bins = 2 ** level
        kernel = [math.ceil(s / bins) for s in x.shape[2:]]
        pad = [(k * bins - s + 1) // 2 for k, s in zip(kernel, x.shape[2:])]
        levels.append(pool(x, kind, kernel, pad))
    if height == 1:
        return levels[0]
    return np.concatenate([lv.reshape(x.shape[0], -1) for lv in levels], axis=1)


def spec(height, kind="MAX"):
    return f'type: "SPP" spp_param {{ pyramid_height: {height} pool: {kind} }}'


def test_hand_computed_max_pyramid():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    # level 0: the whole map; level 1: four 2x2 quadrants, row-major
    check_forward(spec(2), [x], [[[15, 5, 7, 13, 15]]])


def test_hand_computed_average_pyramid_with_padding():
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    # level 1: kernel 3, pad 1: windows rows/cols [-1, 2) and [2, 5), each dividing by 9
    check_forward(spec(2, "AVE"), [x], [[[12, 12 / 9, 33 / 9, 93 / 9, 18]]])


def test_layout_is_levels_in_order_each_channel_major():
    x = distinct(2, 3, 8, 8).astype(np.float32)
    (top,) = forward(spec(3), [x])
    assert top.shape == (2, 3 * (1 + 4 + 16))
    np.testing.assert_array_equal(top[:, :3], x.max(axis=(2, 3)))
    level1 = top[:, 3:15].reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(level1[1, 2, 1, 0], x[1, 2, 4:, :4].max())


@pytest.mark.parametrize("shape, height, kind", [
    ((2, 3, 9, 8), 3, "MAX"),
    ((2, 2, 7, 7), 3, "AVE"),
    ((1, 2, 13, 6), 2, "AVE"),
    ((2, 2, 10, 11), 3, "MAX"),
    ((3, 1, 6, 9), 1, "AVE"),
])
def test_forward_matches_direct_pooling(shape, height, kind):
    x = RNG.standard_normal(shape).astype(np.float32)
    check_forward(spec(height, kind), [x], [spp_reference(x.astype(np.float64), height, kind)],
                  rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, height, channels", [
    # Caffe's own shape tests: C * (4**height - 1) / 3 values per item
    ((2, 3, 9, 8), 3, 63),
    ((1, 3, 1024, 765), 5, 1023),
    ((10, 3, 7, 7), 3, 63),
])
def test_output_length_is_fixed_by_the_pyramid(shape, height, channels):
    _, _, tops = setup(spec(height), [np.zeros(shape, np.float32)])
    assert tops[0].shape == (shape[0], channels)


def test_pyramid_of_height_one_keeps_the_pooling_top():
    x = RNG.standard_normal((2, 3, 5, 4))
    (top,) = forward(spec(1), [x])
    assert top.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(top[:, :, 0, 0], x.max(axis=(2, 3)))


@pytest.mark.parametrize("shape, height, kind", [
    ((2, 2, 6, 7), 3, "MAX"),
    ((2, 2, 7, 6), 3, "AVE"),
    ((2, 2, 3, 4), 1, "MAX"),
    ((1, 2, 5, 5), 2, "AVE"),
])
def test_gradient(shape, height, kind):
    check_gradient(spec(height, kind), [distinct(*shape)])


def test_backward_sums_the_levels():
    # every level of an AVE pyramid over a 4x4 map spreads the same total: dx = sum of levels
    layer, b, t = setup(spec(3, "AVE"), [np.zeros((1, 1, 4, 4))])
    layer.forward(b, t)
    t[0].diff = np.ones((1, 21))
    layer.backward(t, [True], b)
    # level 0: 1/16 per cell; level 1: 1/4; level 2: 1
    np.testing.assert_allclose(b[0].diff, np.full((1, 1, 4, 4), 1 / 16 + 1 / 4 + 1))


def test_stochastic_levels_sample_even_in_a_test_net():
    """Caffe builds each level's Pooling from a fresh parameter, whose phase is TRAIN: the
    levels sample a cell (TEST-phase stochastic pooling would average)."""
    x = RNG.uniform(0.5, 2.0, (2, 3, 4, 4))
    (top,) = forward(spec(1, "STOCHASTIC"), [x], phase=TEST)
    for n, c in itertools.product(range(2), range(3)):
        assert np.isclose(x[n, c], top[n, c, 0, 0]).any()
    (top,) = forward(spec(2, "STOCHASTIC"), [x], phase=TRAIN)
    assert top.shape == (2, 15)


@pytest.mark.parametrize("param, shape, match", [
    ("", (1, 2, 4, 4), "pyramid_height must be at least 1"),
    ("pyramid_height: 2", (1, 2, 4, 4, 4), "4-D bottom"),
    ("pyramid_height: 2", (2, 8), "must have 4 axes"),
    ("pyramid_height: 2", (1, 2, 0, 4), "cannot be zero"),
    # 4 bins over 5 rows: kernel 2, pad 2 -- Pooling refuses a pad as large as the kernel
    ("pyramid_height: 3", (1, 1, 5, 8), "pad must be smaller than the kernel"),
    ("pyramid_height: 2 pool: STOCHASTIC", (1, 1, 5, 5), "padding implemented only"),
])
def test_checks(param, shape, match):
    with pytest.raises(RistrettoError, match=match) as err:
        layer, b, t = setup(f'type: "SPP" spp_param {{ {param} }}', [np.zeros(shape)])
        layer.forward(b, t)
    assert err.value.layer == "layer"


def test_in_a_net_a_new_input_size_keeps_the_output_length():
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
    layer { name: "spp" type: "SPP" bottom: "x" top: "v" spp_param { pyramid_height: 3 pool: MAX } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "v" top: "y"
            inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
    """
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN)
    for shape in ((2, 3, 8, 8), (2, 3, 13, 10)):
        net.blobs["x"].reshape(shape)
        x = distinct(*shape).astype(np.float32)
        net.blobs["x"].data[...] = x
        net.reshape()
        net.clear_param_diffs()
        net.forward_backward()
        assert net.blobs["v"].shape == (2, 63)
        np.testing.assert_allclose(net.blobs["v"].data, spp_reference(x.astype(np.float64), 3, "MAX"),
                                   rtol=1e-6)
        assert net.layer_by_name("ip").blobs[0].diff.any()
