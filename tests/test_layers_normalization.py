"""BatchNorm, MVN, Scale and Bias: forward against independent NumPy formulas, backward against
finite differences, running statistics, learnability of the BatchNorm blobs, in-place use."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import TEST, TRAIN, check_forward, check_gradient, make_layer, setup

from ristretto_cli import parallel
from ristretto_cli.blob import Blob
from ristretto_cli.errors import RistrettoError
from ristretto_cli.net import Net
from ristretto_cli.proto import caffe_pb2

RNG = np.random.default_rng(7)
EPS32 = float(np.float32(1e-5))  # the protos' float eps values, as Caffe reads them
MVN_EPS = float(np.float32(1e-9))


def rand(*shape):
    return RNG.standard_normal(shape)


def bn_reference(x, mean, var, eps=EPS32):
    c = 1 if x.ndim == 1 else x.shape[1]
    shape = (1, c) + (1,) * (x.ndim - 2) if x.ndim > 1 else (1,)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def batch_stats(x):
    axes = tuple(i for i in range(x.ndim) if i != 1) if x.ndim > 1 else (0,)
    return x.mean(axis=axes), x.var(axis=axes)


def bn_with_blobs(spec, blobs, phase=TEST):
    layer = make_layer(spec, phase=phase)
    layer.blobs = [Blob(data=np.asarray(b, np.float64)) for b in blobs]
    return layer


# ----------------------------------------------------------------------------- BatchNorm
def test_batchnorm_statistics_forward_and_running_update():
    x = rand(2, 3, 2, 2)
    layer, b, t = setup('type: "BatchNorm"', [x], phase=TRAIN)
    assert not layer.use_global_stats
    layer.forward(b, t)
    mean, var = batch_stats(x)
    np.testing.assert_allclose(t[0].data, bn_reference(x, mean, var), rtol=1e-10)
    m = x.size // 3
    lam = float(np.float32(0.999))
    np.testing.assert_allclose(layer.blobs[2].data, [1.0])
    # the blobs are float32, as every parameter blob
    np.testing.assert_allclose(layer.blobs[0].data, mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.blobs[1].data, var * m / (m - 1), rtol=1e-5, atol=1e-7)
    x2 = rand(2, 3, 2, 2)
    b[0].data = x2
    layer.forward(b, t)
    mean2, var2 = batch_stats(x2)
    np.testing.assert_allclose(layer.blobs[2].data, [lam + 1], rtol=1e-6)
    np.testing.assert_allclose(layer.blobs[0].data, mean2 + lam * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(layer.blobs[1].data, (var2 + lam * var) * m / (m - 1), rtol=1e-5, atol=1e-7)


def test_batchnorm_running_blobs_updated_in_their_arrays():
    layer, b, t = setup('type: "BatchNorm"', [rand(3, 2)], phase=TRAIN)
    arrays = [blob.data for blob in layer.blobs]
    layer.forward(b, t)
    assert all(blob.data is a for blob, a in zip(layer.blobs, arrays))


def test_batchnorm_global_forward():
    x = rand(2, 3, 2, 2)
    sums = [np.array([1.0, -2.0, 0.5]), np.array([4.0, 1.0, 0.25]), np.array([2.0])]
    spec = 'type: "BatchNorm" batch_norm_param { eps: 0.001 }'
    layer = bn_with_blobs(spec, sums)
    want = bn_reference(x, sums[0] / 2, sums[1] / 2, eps=float(np.float32(0.001)))
    check_forward(spec, [x], [want], layer=layer, rtol=1e-10)
    assert layer.use_global_stats


def test_batchnorm_global_with_zero_factor_uses_zero_statistics():
    x = rand(2, 3)
    layer = bn_with_blobs('type: "BatchNorm"', [np.ones(3), np.ones(3), [0.0]])
    check_forward('type: "BatchNorm"', [x], [x / np.sqrt(EPS32)], layer=layer, rtol=1e-10)


@pytest.mark.parametrize("param, phase, want", [
    ("", TEST, True), ("", TRAIN, False),
    ("batch_norm_param { use_global_stats: false }", TEST, False),
    ("batch_norm_param { use_global_stats: true }", TRAIN, True),
    ("phase: TRAIN", TEST, False),
])
def test_batchnorm_use_global_stats_default_follows_phase(param, phase, want):
    layer, _, _ = setup(f'type: "BatchNorm" {param}', [rand(2, 3)], phase=phase)
    assert layer.use_global_stats is want


def test_batchnorm_one_axis_bottom_has_one_channel():
    x = rand(5)
    layer, b, t = setup('type: "BatchNorm"', [x], phase=TRAIN)
    layer.forward(b, t)
    assert [blob.shape for blob in layer.blobs] == [(1,), (1,), (1,)]
    np.testing.assert_allclose(t[0].data, (x - x.mean()) / np.sqrt(x.var() + EPS32), rtol=1e-10)
    check_gradient('type: "BatchNorm"', [x], phase=TRAIN)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batchnorm_gradient(phase, in_place):
    x = rand(2, 3, 2, 3)
    spec = 'type: "BatchNorm"'
    layer = None
    if phase == TEST:
        layer = bn_with_blobs(spec, [rand(3), np.abs(rand(3)) + 0.5, [1.5]])
    # The statistic blobs get no gradient (Caffe computes none), so only bottoms are checked.
    check_gradient(spec, [x], phase=phase, in_place=in_place, layer=layer, check_params=False)


def test_batchnorm_in_place_writes_into_bottom():
    x = rand(2, 3, 2)
    layer, b, _ = setup('type: "BatchNorm"', [x], in_place=True, phase=TRAIN)
    arr = b[0].data
    layer.forward(b, b)
    assert b[0].data is arr
    mean, var = batch_stats(x)
    np.testing.assert_allclose(arr, bn_reference(x, mean, var), rtol=1e-10)


def test_batchnorm_appends_fixed_param_specs():
    layer, _, _ = setup('type: "BatchNorm"', [rand(2, 3)])
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]
    assert all(p.HasField("lr_mult") for p in layer.param.param)
    layer, _, _ = setup('type: "BatchNorm" param { lr_mult: 0 decay_mult: 0 }', [rand(2, 3)])
    assert [p.lr_mult for p in layer.param.param] == [0, 0, 0]
    assert layer.param.param[0].decay_mult == 0


@pytest.mark.parametrize("params", ["param { lr_mult: 1 }", "param { lr_mult: 0 } param { }"])
def test_batchnorm_learnable_statistics_are_an_error(params):
    with pytest.raises(RistrettoError, match="Cannot configure batch normalization") as info:
        setup(f'name: "bn" type: "BatchNorm" {params}', [rand(2, 3)])
    assert info.value.layer == "bn"


@pytest.mark.parametrize("blobs", [
    "blobs { shape { dim: 3 } data: [1, 1, 1] } blobs { shape { dim: 3 } data: [1, 1, 1] }",
    "blobs { shape { dim: 2 } data: [1, 1] } blobs { shape { dim: 3 } data: [1, 1, 1] } "
    "blobs { shape { dim: 1 } data: [1] }",
    "blobs { shape { dim: 3 } data: [1, 1, 1] } blobs { shape { dim: 3 } data: [1, 1, 1] } "
    "blobs { shape { dim: 2 } data: [1, 1] }",
])
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batchnorm_preloaded_blobs_of_the_wrong_size_are_an_error(blobs, phase):
    # Caffe reads blobs [0], [1] (C values) and [2] (one value) unchecked (a crash past their end);
    # we require the sizes it creates
    with pytest.raises(RistrettoError, match="BatchNorm") as info:
        layer, b, t = setup(f'name: "bn" type: "BatchNorm" {blobs}', [rand(2, 3, 2)], phase=phase)
        layer.forward(b, t)
    assert info.value.layer == "bn"


def test_batchnorm_preloaded_legacy_shaped_blobs_are_accepted():
    blobs = ("blobs { num: 1 channels: 3 height: 1 width: 1 data: [2, 4, 6] } "
             "blobs { shape { dim: 1 dim: 3 } data: [8, 8, 8] } blobs { shape { dim: 1 dim: 1 } data: [2] }")
    x = rand(2, 3, 2)
    check_forward(f'type: "BatchNorm" {blobs}', [x],
                  [bn_reference(x, np.array([1.0, 2.0, 3.0]), np.full(3, 4.0))], rtol=1e-10)


NET = """
name: "n"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "%s" }
layer { name: "sc" type: "Scale" bottom: "%s" top: "%s"
        scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                      bias_filler { type: "gaussian" std: 1 } } }
"""


def make_net(names, phase):
    return Net(text_format.Parse(NET % names, caffe_pb2.NetParameter()), phase, seed=3)


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_batchnorm_statistics_never_learnable_in_a_net(phase):
    net = make_net(("bn", "bn", "sc"), phase)
    bn = net.layer_by_name("bn")
    assert bn.use_global_stats is (phase == TEST)
    bn_params = [p for p in net.learnable_params if any(p.blob is blob for blob in bn.blobs)]
    assert len(bn_params) == 3 and all(p.lr_mult == 0 for p in bn_params)
    net_plain = Net(text_format.Parse((NET % ("bn", "bn", "sc")).replace("force_backward: true", ""),
                                      caffe_pb2.NetParameter()), phase)
    # Caffe sets the propagation flags from the specs written in the net (none here: lr_mult
    # 1); the lr_mult 0 specs BatchNorm adds to its own copy keep the statistics unlearned.
    assert net_plain.layer_by_name("bn").param_propagate_down == [True] * 3


@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_in_place_batchnorm_scale_chain_matches_separate_blobs(phase):
    x = rand(2, 3, 2, 2).astype(np.float32)
    results = []
    for names in (("bn", "bn", "sc"), ("data", "data", "data")):
        net = make_net(names, phase)
        bn, sc = net.layer_by_name("bn"), net.layer_by_name("sc")
        for blob, v in zip(bn.blobs, (np.array([0.5, -1, 2]), np.array([2, 1, 3]), np.array([2.0]))):
            blob.data[...] = v
        for blob, v in zip(sc.blobs, (np.array([1.5, -0.5, 2]), np.array([0.1, 0.2, -0.3]))):
            blob.data[...] = v
        net.blobs["data"].data[...] = x
        net.forward()
        out = net.blobs[names[2]]
        y = out.data.copy()
        out.diff = np.linspace(-1, 1, out.data.size, dtype=np.float32).reshape(out.shape)
        net.backward()
        results.append((y, net.blobs["data"].diff.copy(), sc.blobs[0].diff.copy(), sc.blobs[1].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- MVN
def mvn_reference(x, normalize_variance, across_channels, eps=MVN_EPS):
    shape = x.shape
    x4 = x.reshape(shape + (1,) * (4 - x.ndim))
    axes = (1, 2, 3) if across_channels else (2, 3)
    y = x4 - x4.mean(axis=axes, keepdims=True)
    if normalize_variance:
        y = y / (np.sqrt((y * y).mean(axis=axes, keepdims=True)) + eps)
    return y.reshape(shape)


FLAGS = [(nv, ac) for nv in ("true", "false") for ac in ("true", "false")]


@pytest.mark.parametrize("nv, ac", FLAGS)
@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (2, 3, 4), (3, 5)])
def test_mvn_forward(nv, ac, shape):
    x = rand(*shape) * 3 + 1
    spec = f'type: "MVN" mvn_param {{ normalize_variance: {nv} across_channels: {ac} }}'
    top = shape + (1,) * (4 - len(shape))  # Caffe's top is 4-D
    check_forward(spec, [x], [mvn_reference(x, nv == "true", ac == "true").reshape(top)], rtol=1e-10)


def test_mvn_eps_is_added_to_the_standard_deviation():
    x = np.array([[[[1.0, 3.0]]]])  # mean 2, std 1
    check_forward('type: "MVN" mvn_param { eps: 0.5 }', [x], [[[[[-1 / 1.5, 1 / 1.5]]]]], rtol=1e-12)


@pytest.mark.parametrize("nv, ac", FLAGS)
def test_mvn_gradient(nv, ac):
    spec = f'type: "MVN" mvn_param {{ normalize_variance: {nv} across_channels: {ac} }}'
    check_gradient(spec, [rand(2, 2, 2, 3)])


@pytest.mark.parametrize("nv", ["true", "false"])
def test_mvn_in_place(nv):
    x = rand(2, 3, 4)
    spec = f'type: "MVN" mvn_param {{ normalize_variance: {nv} }}'
    layer, b, _ = setup(spec, [x], in_place=True)
    arr = b[0].data
    layer.forward(b, b)
    assert b[0].data is arr and arr.shape == (2, 3, 4, 1)  # the 4-D view setup gave the blob
    np.testing.assert_allclose(arr, mvn_reference(x, nv == "true", False).reshape(2, 3, 4, 1), rtol=1e-10)
    check_gradient(spec, [x], in_place=True)


def test_mvn_more_than_four_axes_is_an_error():
    with pytest.raises(RistrettoError, match="at most 4 axes"):
        setup('type: "MVN"', [rand(1, 2, 1, 2, 2)])


@pytest.mark.parametrize("shape, top", [((3, 5), (3, 5, 1, 1)), ((2, 3, 4), (2, 3, 4, 1)),
                                        ((6,), (6, 1, 1, 1)), ((2, 3, 2, 2), (2, 3, 2, 2))])
@pytest.mark.parametrize("in_place", [False, True])
def test_mvn_top_has_the_legacy_4d_shape(shape, top, in_place):
    # Caffe's MVN Reshape: top->Reshape(num(), channels(), height(), width())
    x = rand(*shape)
    layer = make_layer('type: "MVN"')
    bottom = Blob(data=x.copy())
    memory = bottom.data
    tops = [bottom] if in_place else [Blob()]
    layer.setup([bottom], tops)
    layer.forward([bottom], tops)
    assert tops[0].shape == top
    want = mvn_reference(x, True, False)
    np.testing.assert_allclose(tops[0].data, want.reshape(top), rtol=1e-10)
    if in_place:  # the values land in the bottom's memory, which other blobs may view
        np.testing.assert_allclose(memory, want, rtol=1e-10)
    else:
        assert bottom.shape == shape
        np.testing.assert_array_equal(memory, x)
    tops[0].diff = np.ones(top)
    layer.backward(tops, [True], [bottom])
    assert bottom.diff.shape == bottom.shape
    np.testing.assert_allclose(bottom.diff, 0, atol=1e-12)  # a constant dy has no effect


def test_mvn_2d_top_in_a_net_is_4d():
    text = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 5 } } }
layer { name: "mvn" type: "MVN" bottom: "x" top: "y" }
layer { name: "f" type: "Flatten" bottom: "y" top: "z" flatten_param { axis: 2 } }"""
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    assert net.blobs["y"].shape == (3, 5, 1, 1)
    assert net.blobs["z"].shape == (3, 5, 1)


# ----------------------------------------------------------------------------- Scale
GAUSS = 'filler { type: "gaussian" mean: 1 std: 1 }'
BIAS_GAUSS = 'bias_term: true bias_filler { type: "gaussian" std: 1 }'


def broadcast_param(p, x_shape, axis):
    p = np.asarray(p)
    if p.ndim == 0:
        return p
    axis %= len(x_shape)
    return p.reshape((1,) * axis + p.shape + (1,) * (len(x_shape) - axis - p.ndim))


@pytest.mark.parametrize("param, axis, pshape", [
    ("", 1, (3,)),
    ("axis: 0 num_axes: -1", 0, (2, 3, 4)),
    ("axis: -1", 2, (4,)),
    ("num_axes: 0", 1, ()),
    ("axis: 1 num_axes: 2", 1, (3, 4)),
    ("axis: 1 num_axes: -1", 1, (3, 4)),
    ("axis: 0 num_axes: 2", 0, (2, 3)),
])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_learned(param, axis, pshape, bias):
    x = rand(2, 3, 4)
    spec = f'type: "Scale" scale_param {{ {param} {GAUSS} {BIAS_GAUSS if bias else ""} }}'
    layer, b, t = setup(spec, [x])
    assert [blob.shape for blob in layer.blobs] == [pshape] * (2 if bias else 1)
    layer.forward(b, t)
    want = x * broadcast_param(layer.blobs[0].data, x.shape, axis)
    if bias:
        want = want + broadcast_param(layer.blobs[1].data, x.shape, axis)
    np.testing.assert_allclose(t[0].data, want, rtol=1e-6)
    check_gradient(spec, [x])


def test_scale_default_filler_is_identity():
    x = rand(2, 3)
    layer, b, t = setup('type: "Scale" scale_param { bias_term: true }', [x])
    np.testing.assert_array_equal(layer.blobs[0].data, 1)
    np.testing.assert_array_equal(layer.blobs[1].data, 0)
    check_forward('type: "Scale"', [x], [x])


@pytest.mark.parametrize("param, fshape", [
    ("", (3,)), ("axis: 1", (3, 4)), ("axis: 0", (2, 3)), ("axis: -1", (4,)), ("", ()),
    ("axis: 0", (2, 3, 4)),
])
@pytest.mark.parametrize("bias", [False, True])
def test_scale_two_bottoms(param, fshape, bias):
    x, s = rand(2, 3, 4), rand(*fshape)
    axis = {"": 1, "axis: 1": 1, "axis: 0": 0, "axis: -1": 2}[param]
    spec = f'type: "Scale" scale_param {{ {param} {BIAS_GAUSS if bias else ""} }}'
    layer, b, t = setup(spec, [x, s])
    assert [blob.shape for blob in layer.blobs] == ([fshape] if bias else [])
    layer.forward(b, t)
    want = x * broadcast_param(s, x.shape, axis)
    if bias:
        want = want + broadcast_param(layer.blobs[0].data, x.shape, axis)
    np.testing.assert_allclose(t[0].data, want, rtol=1e-6)
    check_gradient(spec, [x, s])


@pytest.mark.parametrize("bottoms", [1, 2])
def test_scale_in_place(bottoms):
    x = rand(2, 3, 2)
    spec = f'type: "Scale" scale_param {{ {GAUSS} {BIAS_GAUSS} }}'
    if bottoms == 1:
        check_gradient(spec, [x], in_place=True)
    layer = make_layer(spec)
    b = [Blob(data=x.copy())] + [Blob(data=rand(3)) for _ in range(bottoms - 1)]
    top = [b[0]]
    layer.setup(b, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    arr = b[0].data
    scale = (b[1].data if bottoms == 2 else layer.blobs[0].data).reshape(1, 3, 1)
    bias = layer.blobs[-1].data.reshape(1, 3, 1)
    layer.forward(b, top)
    assert b[0].data is arr
    np.testing.assert_allclose(arr, x * scale + bias, rtol=1e-6)
    top[0].diff = np.ones_like(x)
    layer.backward(top, [True] * bottoms, b)
    # the factor's gradient uses the input as it was before being overwritten
    ds = x.sum(axis=(0, 2))
    got = b[1].diff if bottoms == 2 else layer.blobs[0].diff
    np.testing.assert_allclose(got, ds, rtol=1e-6)


def test_scale_param_gradients_accumulate_and_bottom_factor_overwrites():
    x = rand(2, 3, 2)
    spec = f'type: "Scale" scale_param {{ axis: 0 num_axes: -1 {GAUSS} {BIAS_GAUSS} }}'
    layer, b, t = setup(spec, [x])
    layer.forward(b, t)
    t[0].diff = np.ones_like(x)
    for blob in layer.blobs:
        blob.diff = np.full(blob.shape, 10.0)
    layer.backward(t, [True], b)
    np.testing.assert_allclose(layer.blobs[0].diff, 10 + x)
    np.testing.assert_allclose(layer.blobs[1].diff, 11)
    layer, b, t = setup('type: "Scale"', [x, rand(3)])
    layer.forward(b, t)
    t[0].diff = np.ones_like(x)
    b[1].diff = np.full(3, 10.0)
    layer.backward(t, [False, True], b)
    np.testing.assert_allclose(b[1].diff, x.sum(axis=(0, 2)))


@pytest.mark.parametrize("spec, bottoms, match", [
    ('type: "Scale"', [rand(2, 3, 4), rand(4)], "dimension mismatch"),
    ('type: "Scale" scale_param { axis: 2 }', [rand(2, 3, 4), rand(4, 2)], "extends past"),
    ('type: "Scale" scale_param { axis: 2 num_axes: 2 }', [rand(2, 3, 4)], "extends past"),
    ('type: "Scale" scale_param { num_axes: -2 }', [rand(2, 3, 4)], "num_axes"),
    ('type: "Scale" scale_param { axis: 3 }', [rand(2, 3, 4)], "out of range"),
    ('type: "Bias"', [rand(2, 3, 4), rand(2)], "dimension mismatch"),
])
def test_scale_bias_shape_errors(spec, bottoms, match):
    with pytest.raises(RistrettoError, match=match) as info:
        setup(spec, bottoms)
    assert info.value.layer == "layer"


# ----------------------------------------------------------------------------- Bias
@pytest.mark.parametrize("param, axis, pshape", [
    ("", 1, (3,)), ("num_axes: 0", 1, ()), ("axis: -1", 2, (4,)), ("axis: 0 num_axes: -1", 0, (2, 3, 4)),
    ("axis: 1 num_axes: 2", 1, (3, 4)),
])
def test_bias_learned(param, axis, pshape):
    x = rand(2, 3, 4)
    spec = f'type: "Bias" bias_param {{ {param} filler {{ type: "gaussian" std: 1 }} }}'
    layer, b, t = setup(spec, [x])
    assert layer.blobs[0].shape == pshape
    layer.forward(b, t)
    np.testing.assert_allclose(t[0].data, x + broadcast_param(layer.blobs[0].data, x.shape, axis))
    check_gradient(spec, [x])
    check_gradient(spec, [x], in_place=True)


@pytest.mark.parametrize("param, bshape, axis", [("", (3,), 1), ("axis: 0", (2, 3), 0), ("", (), 1)])
def test_bias_two_bottoms(param, bshape, axis):
    x, bias = rand(2, 3, 4), rand(*bshape)
    spec = f'type: "Bias" bias_param {{ {param} }}'
    check_forward(spec, [x, bias], [x + broadcast_param(bias, x.shape, axis)])
    check_gradient(spec, [x, bias])


def test_bias_default_filler_is_zero():
    x = rand(2, 3)
    check_forward('type: "Bias"', [x], [x])


# ----------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("spec, shapes", [
    ('type: "BatchNorm"', [(2, 3, 2)]),
    ('type: "MVN"', [(2, 3, 2)]),
    ('type: "Scale" scale_param { bias_term: true }', [(2, 3, 2)]),
    ('type: "Scale"', [(2, 3, 2), (3,)]),
    ('type: "Bias"', [(2, 3, 2)]),
])
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_float32_stays_float32(spec, shapes, phase):
    bottoms = [rand(*s).astype(np.float32) for s in shapes]
    layer, b, t = setup(spec, bottoms, phase=phase)
    layer.forward(b, t)
    assert t[0].data.dtype == np.float32
    assert all(blob.data.dtype == np.float32 for blob in layer.blobs)
    t[0].diff = np.ones(t[0].shape, np.float32)
    layer.backward(t, [True] * len(b), b)
    assert all(x.diff.dtype == np.float32 for x in b)
    assert all(blob.diff.dtype == np.float32 for blob in layer.blobs)


IN_PLACE_SPECS = {
    "BatchNorm global": ('type: "BatchNorm" batch_norm_param { use_global_stats: true } '
                         'blobs { shape { dim: 3 } data: [1, -2, 0.5] } blobs { shape { dim: 3 } data: [4, 2, 9] } '
                         'blobs { shape { dim: 1 } data: [2] }', TEST),
    "BatchNorm batch": ('type: "BatchNorm"', TRAIN),
    "Scale and bias": ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" std: 1 } '
                       'bias_filler { type: "gaussian" std: 1 } }', TRAIN),
    "Bias": ('type: "Bias" bias_param { filler { type: "gaussian" std: 1 } }', TRAIN),
}


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided bottom"])
@pytest.mark.parametrize("name", list(IN_PLACE_SPECS))
def test_in_place_writes_through_with_the_separate_tops_bits(name, strided):
    """In place the results go into the bottom's own array (which other blobs may alias),
    with the same bits as into a separate top, and the backward is the same too; a strided
    bottom (no reshaped view of it) is written through all the same."""
    spec, phase = IN_PLACE_SPECS[name]
    x = (rand(2, 3, 4, 5) * 2 + 1).astype(np.float32)
    dy = rand(2, 3, 4, 5).astype(np.float32)
    separate = setup(spec, [x], phase=phase, seed=9)
    in_place = setup(spec, [x], phase=phase, seed=9, in_place=True)
    if strided:   # the same values in a Fortran-ordered array
        in_place[1][0].data = np.asfortranarray(in_place[1][0].data)
    alias = in_place[1][0].data
    grads = []
    for layer, bottoms, tops in (separate, in_place):
        layer.forward(bottoms, tops)
        tops[0].diff = dy.copy()
        layer.backward(tops, [True], bottoms)
        grads.append([bottoms[0].diff.copy()] + [blob.diff.copy() for blob in layer.blobs])
    assert in_place[2][0].data is alias
    np.testing.assert_array_equal(alias.view(np.uint32), separate[2][0].data.view(np.uint32))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint32), b.view(np.uint32))


BIG = (4, 16, 96, 96)    # 590 K elements: several row blocks, shared among the threads


def _run_big(spec, phase, threads, in_place, monkeypatch, bottoms=1):
    monkeypatch.setattr(parallel, "_threads", threads)
    rng = np.random.default_rng(11)
    xs = [(rng.standard_normal(BIG) * 3 + 1).astype(np.float32) for _ in range(bottoms)]
    layer, b, t = setup(spec, xs, phase=phase, seed=9, in_place=in_place)
    originals = [x.copy() for x in xs]
    layer.forward(b, t)
    y = t[0].data.copy()
    t[0].diff = rng.standard_normal(BIG).astype(np.float32)
    dy = t[0].diff.copy()
    layer.backward(t, [True] * bottoms, b)
    results = [y, dy] + [bb.diff.copy() for bb in b] + [blob.diff.copy() for blob in layer.blobs]
    return originals, results, layer


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("name", list(IN_PLACE_SPECS))
def test_big_blobs_in_blocks_on_threads_keep_the_bits(name, in_place, monkeypatch):
    """Big blobs go row block by row block, shared among the threads: the same bits at one
    and two threads, and the forward the same bits as one NumPy expression over the whole
    blob."""
    spec, phase = IN_PLACE_SPECS[name]
    if name == "BatchNorm global":   # 16 channels
        spec = ('type: "BatchNorm" batch_norm_param { use_global_stats: true } '
                f'blobs {{ shape {{ dim: 16 }} data: [{", ".join(f"{v:g}" for v in np.linspace(-2, 2, 16))}] }} '
                f'blobs {{ shape {{ dim: 16 }} data: [{", ".join(f"{v:g}" for v in np.linspace(0.5, 9, 16))}] }} '
                'blobs { shape { dim: 1 } data: [2] }')
    runs = [_run_big(spec, phase, threads, in_place, monkeypatch) for threads in (1, 2)]
    for one, two in zip(runs[0][1], runs[1][1]):
        np.testing.assert_array_equal(_bits(one), _bits(two))
    (x,), (y, *_), layer = runs[1]
    x3 = x.reshape(4, 16, -1)
    if name == "BatchNorm global":
        mean, var = (np.float32(0.5) * blob.data for blob in layer.blobs[:2])
        expected = (x3 - mean[:, None]) / np.sqrt(var + np.float32(EPS32))[:, None]
        np.testing.assert_array_equal(_bits(y.reshape(x3.shape)), _bits(expected))
    elif name == "Scale and bias":
        s, bias = (blob.data.reshape(1, 16, 1) for blob in layer.blobs)
        np.testing.assert_array_equal(_bits(y.reshape(x3.shape)), _bits(x3 * s + bias))
    elif name == "Bias":
        np.testing.assert_array_equal(_bits(y.reshape(x3.shape)), _bits(x3 + layer.blobs[0].data.reshape(1, 16, 1)))
    elif name == "BatchNorm batch":
        inv_m = np.float32(1.0 / (4 * x3.shape[2]))
        mean = (x3.sum(axis=2) * inv_m).sum(axis=0)
        centred = x3 - mean[:, None]
        var = ((centred * centred).sum(axis=2) * inv_m).sum(axis=0)
        expected = centred / np.sqrt(var + np.float32(EPS32))[:, None]
        np.testing.assert_array_equal(_bits(y.reshape(x3.shape)), _bits(expected))
