"""Neuron (element-wise) layers against hand computations and finite differences.

Forward references are written out per element with the ``math`` module, following Caffe's
rounding (float32 steps where Caffe computes in float, double where it computes in double).
Gradient checks follow Caffe's layer tests (Gaussian inputs, stepsize 1e-2, threshold 1e-3, kinks
skipped), in place and not in place wherever Caffe's in-place backward is correct.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from layer_check import TRAIN, check_forward, check_gradient, setup

from ristretto_cli.errors import RistrettoError

F32 = np.float32


def gauss(shape=(2, 3, 4, 5), seed=0, dtype=F32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def run(spec, x, dy=None, *, in_place=False, phase=None, seed=1701, dtype=None):
    """Forward (and backward with top diff ``dy``); returns (layer, bottom, top, y, dx)."""
    kw = {} if phase is None else {"phase": phase}
    layer, bottoms, tops = setup(spec, [x], in_place=in_place, seed=seed, dtype=dtype, **kw)
    layer.forward(bottoms, tops)
    y = tops[0].data.copy()
    dx = None
    if dy is not None:
        tops[0].diff = np.array(dy, dtype=tops[0].data.dtype)
        layer.backward(tops, [True], bottoms)
        dx = bottoms[0].diff.copy()
    return layer, bottoms[0], tops[0], y, dx


def per_element(func, x, dtype=F32):
    """``func`` applied to every element as a Python float, the result rounded to ``dtype``."""
    flat = np.asarray(x).ravel()
    return np.array([func(float(v)) for v in flat], dtype=dtype).reshape(np.shape(x))


def assert_ulp(got, want, maxulp=1):
    """Equal within ``maxulp`` float32 ulps (NaNs and infinities must match exactly)."""
    got, want = np.asarray(got), np.asarray(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    np.testing.assert_array_max_ulp(got[finite], want[finite], maxulp=maxulp)


def c_pow(a: float, b: float) -> float:
    """C's pow for the cases the tests use (math.pow raises where C returns NaN)."""
    try:
        return math.pow(a, b)
    except ValueError:
        return math.nan


# Specs used by the generic tests (every layer of the module).
SPECS = {
    "relu": 'type: "ReLU"',
    "leaky_relu": 'type: "ReLU" relu_param { negative_slope: 0.1 }',
    "prelu": 'type: "PReLU" prelu_param { filler { type: "gaussian" std: 0.5 } }',
    "prelu_shared": 'type: "PReLU" prelu_param { channel_shared: true }',
    "elu": 'type: "ELU" elu_param { alpha: 0.5 }',
    "sigmoid": 'type: "Sigmoid"',
    "tanh": 'type: "TanH"',
    "absval": 'type: "AbsVal"',
    "bnll": 'type: "BNLL"',
    "power": 'type: "Power" power_param { power: 2 scale: 0.83 shift: -2.4 }',
    "power_frac": 'type: "Power" power_param { power: 0.37 scale: 0.83 shift: 2.4 }',
    "exp": 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
    "log": 'type: "Log" log_param { base: 2 scale: 0.83 shift: 2.4 }',
    "threshold": 'type: "Threshold" threshold_param { threshold: 0.2 }',
    "dropout": 'type: "Dropout" dropout_param { dropout_ratio: 0.3 }',
    "clip": 'type: "Clip" clip_param { min: -1 max: 0.5 }',
    "swish": 'type: "Swish" swish_param { beta: 1.5 }',
}
NO_BACKWARD = {"threshold"}
NO_IN_PLACE = {"absval"}
# Caffe's backward reads the bottom data, which in place is the output: a wrong gradient that
# is nonetheless what Caffe computes, so it is reproduced (and checked) rather than fixed.
IN_PLACE_READS_OUTPUT = {"bnll", "power", "power_frac", "log", "clip"}
# Power and Log in place also overwrite dy with their local derivative d before multiplying by
# it (the same array): Caffe's result is d * d (test_layers_neuron_edges.py has hand values).
IN_PLACE_LOSES_DY = {"power", "power_frac", "log"}


# --------------------------------------------------------------------------- generic behaviour
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_follows_the_data(name, dtype):
    x = gauss(dtype=dtype)
    dy = None if name in NO_BACKWARD else gauss(seed=1, dtype=dtype)
    layer, bottom, top, y, dx = run(SPECS[name], x, dy)
    assert top.data.dtype == dtype and top.shape == x.shape
    if dy is not None:
        assert bottom.diff.dtype == dtype


# proto parameters are float32: 0.83 is 0.8299999833106995 in the layer's float64 arithmetic
P01, P083, P037 = float(F32(0.1)), float(F32(0.83)), float(F32(0.37))


@pytest.mark.parametrize("spec,reference", [
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: np.where(x > 0, x, P01 * x)),
    ('type: "ELU"', lambda x: np.where(x > 0, x, np.expm1(x))),
    ('type: "Sigmoid"', lambda x: 1 / (1 + np.exp(-x))),
    ('type: "TanH"', np.tanh),
    ('type: "BNLL"', lambda x: np.logaddexp(0, x)),
    ('type: "Power" power_param { power: 0.37 scale: 0.83 shift: 4 }', lambda x: (4 + P083 * x) ** P037),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', lambda x: 2 ** (0.5 * x + 1)),
    ('type: "Log" log_param { base: 10 shift: 4 }', lambda x: np.log10(x + 4)),
    ('type: "Swish" swish_param { beta: 1.5 }', lambda x: x / (1 + np.exp(-1.5 * x))),
])
def test_float64_data_is_computed_in_float64(spec, reference):
    x = gauss(dtype=np.float64)
    np.testing.assert_allclose(run(spec, x)[3], reference(x), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", sorted(set(SPECS) - NO_IN_PLACE))
@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_in_place_forward_writes_into_the_bottom_array(name, phase):
    kw = {"phase": TRAIN} if phase == "TRAIN" else {}
    x = gauss()
    _, _, _, y_ref, _ = run(SPECS[name], x, **kw)
    layer, bottoms, tops = setup(SPECS[name], [x], in_place=True, **kw)
    arr = bottoms[0].data
    alias = arr.reshape(-1)  # another blob viewing the same memory (as Flatten would)
    layer.forward(bottoms, tops)
    assert tops[0].data is arr
    np.testing.assert_array_equal(arr, y_ref)
    np.testing.assert_array_equal(alias, y_ref.reshape(-1))


@pytest.mark.parametrize("name", sorted(set(SPECS) - NO_IN_PLACE - NO_BACKWARD))
@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_in_place_backward(name, phase):
    kw = {"phase": TRAIN} if phase == "TRAIN" else {}
    x, dy = gauss(), gauss(seed=1)
    layer, bottoms, tops = setup(SPECS[name], [x], in_place=True, **kw)
    layer.forward(bottoms, tops)
    y = bottoms[0].data.copy()
    diff = dy.copy()
    tops[0].diff = diff
    layer.backward(tops, [True], bottoms)
    assert bottoms[0].diff is diff  # the shared gradient array is overwritten, not replaced
    ref_layer, ref_bottoms, ref_tops = setup(SPECS[name], [x], **kw)
    ref_layer.forward(ref_bottoms, ref_tops)
    if name in IN_PLACE_READS_OUTPUT:
        ref_bottoms[0].data = y.copy()  # what Caffe's backward reads in place
    if name in IN_PLACE_LOSES_DY:
        ref_tops[0].diff = np.ones_like(dy)
        ref_layer.backward(ref_tops, [True], ref_bottoms)
        dy = ref_bottoms[0].diff.copy()  # d, which Caffe's in-place code multiplies by
    ref_tops[0].diff = dy.copy()
    ref_layer.backward(ref_tops, [True], ref_bottoms)
    np.testing.assert_array_equal(diff, ref_bottoms[0].diff)
    for blob, ref in zip(layer.blobs, ref_layer.blobs):
        np.testing.assert_array_equal(blob.diff, ref.diff)


@pytest.mark.parametrize("name", sorted(set(SPECS) - NO_BACKWARD))
def test_bottom_gradient_overwrites_and_param_gradient_accumulates(name):
    x, dy = gauss(), gauss(seed=1)
    layer, bottoms, tops = setup(SPECS[name], [x])
    layer.forward(bottoms, tops)
    tops[0].diff = dy.copy()
    layer.backward(tops, [True], bottoms)
    first = bottoms[0].diff.copy()
    params = [b.diff.copy() for b in layer.blobs]
    layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, first)
    for blob, p in zip(layer.blobs, params):
        np.testing.assert_allclose(blob.diff, 2 * p, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(set(SPECS) - NO_BACKWARD))
def test_no_bottom_gradient_without_propagate_down(name):
    layer, bottoms, tops = setup(SPECS[name], [gauss()])
    layer.forward(bottoms, tops)
    tops[0].diff = gauss(seed=1)
    marker = np.full(bottoms[0].shape, 7.0, F32)
    bottoms[0].diff = marker
    layer.backward(tops, [False], bottoms)
    assert bottoms[0].diff is marker and np.all(marker == 7)


# --------------------------------------------------------------------------- ReLU
def test_relu_forward():
    x = np.array([-2, -0.5, 0, 0.5, 3], F32)
    check_forward('type: "ReLU"', [x], [[0, 0, 0, 0.5, 3]], rtol=0, atol=0)
    check_forward('type: "ReLU" relu_param { negative_slope: 0.1 }', [x],
                  [[F32(0.1) * F32(-2), F32(0.1) * F32(-0.5), 0, 0.5, 3]], rtol=0, atol=0)
    x = gauss()
    check_forward('type: "ReLU" relu_param { negative_slope: 0.01 }', [x],
                  [np.maximum(x, 0) + F32(0.01) * np.minimum(x, 0)], rtol=0, atol=0)


def test_relu_non_finite_inputs_follow_caffe_formula():
    # max(x, 0) + ns * min(x, 0): with ns = 0, -inf gives 0 * -inf = NaN.
    x = np.array([-np.inf, np.inf, np.nan, -1, 1], F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, _, y, dx = run('type: "ReLU"', x, np.ones(5, F32))
    np.testing.assert_array_equal(y, [np.nan, np.inf, np.nan, 0, 1])
    np.testing.assert_array_equal(dx, [0, 1, 0, 0, 1])  # NaN input: (NaN > 0) + 0 = 0
    _, _, _, y, dx = run('type: "ReLU" relu_param { negative_slope: 0.5 }', x, np.ones(5, F32))
    np.testing.assert_array_equal(y, [-np.inf, np.inf, np.nan, -0.5, 1])
    np.testing.assert_array_equal(dx, [0.5, 1, 0, 0.5, 1])


def test_rectify_against_an_array_of_zeros_gives_the_scalar_maximum_s_bits():
    # The zeros come as an array (NumPy's SIMD loop); the bits are those of maximum(x, 0),
    # signed zeros and NaN payloads included.
    from ristretto_cli.layers.im2col import filled
    from ristretto_cli.layers.neuron import rectify
    special = np.array([-0.0, 0.0, np.nan, -np.nan, -1, 2, np.inf, F32(1e-45), -F32(1e-45)], F32)
    x = np.concatenate([special, gauss((5, 7)).ravel()]).reshape(4, -1)
    y = np.empty_like(x)
    rectify(x, y)
    np.testing.assert_array_equal(y.view(np.uint32), np.maximum(x, F32(0)).view(np.uint32))
    zeros = filled(0, (3, 2), F32)
    assert zeros.shape == (3, 2) and not zeros.any() and filled(0, (50,), F32).size == 50
    assert (filled(-2.5, (4,), np.float64) == -2.5).all()


@pytest.mark.parametrize("slope", [0.0, 0.01])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu_gradient(slope, in_place):
    check_gradient(f'type: "ReLU" relu_param {{ negative_slope: {slope} }}', [gauss()],
                   kink=0.0, kink_range=0.01, in_place=in_place)


@pytest.mark.parametrize("threads", [1, 2])
def test_relu_in_place_on_a_slot_of_a_larger_array(threads, monkeypatch):
    """A ReLU on a Concat's slot of its top (rows contiguous, the whole not): block by block
    of rows, on one or two threads, the values and gradient of the plain formula; the rest of
    the larger array untouched."""
    from ristretto_cli import parallel
    from ristretto_cli.layers import neuron
    monkeypatch.setattr(neuron, "BLOCK_ELEMENTS", 7)
    monkeypatch.setattr(neuron, "PARALLEL_MIN_ELEMENTS", 1)
    monkeypatch.setattr(parallel, "_threads", threads)
    rng = np.random.default_rng(4)
    whole = rng.standard_normal((5, 7, 3, 4)).astype(F32)
    before = whole.copy()
    layer, bottoms, tops = setup('type: "ReLU"', [whole[:, 2:5].copy()], in_place=True)
    bottoms[0].data = whole[:, 2:5]
    assert not bottoms[0].data.flags.c_contiguous
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(whole[:, 2:5], np.maximum(before[:, 2:5], 0))
    np.testing.assert_array_equal(np.delete(whole, range(2, 5), axis=1), np.delete(before, range(2, 5), axis=1))
    dy = rng.standard_normal((5, 3, 3, 4)).astype(F32)
    tops[0].diff = dy.copy()
    layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, dy * (before[:, 2:5] > 0))


# --------------------------------------------------------------------------- PReLU
def test_prelu_default_filler_and_shapes():
    layer, _, _, y, _ = run('type: "PReLU"', gauss())
    assert layer.blobs[0].shape == (3,)
    np.testing.assert_array_equal(layer.blobs[0].data, [0.25] * 3)
    layer, _, _, _, _ = run('type: "PReLU" prelu_param { channel_shared: true }', gauss())
    assert layer.blobs[0].shape == () and layer.blobs[0].data == F32(0.25)


def test_prelu_forward_per_channel_and_shared():
    x = gauss()
    layer, bottoms, tops = setup('type: "PReLU"', [x])
    slopes = np.array([0.1, -0.5, 2.0], F32)
    layer.blobs[0].data[...] = slopes
    layer.forward(bottoms, tops)
    a = slopes[None, :, None, None]
    np.testing.assert_array_equal(tops[0].data, np.maximum(x, 0) + a * np.minimum(x, 0))
    # two axes (N, C) and three axes (N, C, L) broadcast the slope over axis 1 as well
    for shape in [(4, 3), (2, 3, 6)]:
        x2 = gauss(shape)
        layer, bottoms, tops = setup('type: "PReLU"', [x2])
        layer.blobs[0].data[...] = slopes
        layer.forward(bottoms, tops)
        a2 = slopes.reshape((3,) + (1,) * (len(shape) - 2))
        np.testing.assert_array_equal(tops[0].data, np.where(x2 > 0, x2, a2 * x2))
    layer, bottoms, tops = setup('type: "PReLU" prelu_param { channel_shared: true }', [x])
    layer.blobs[0].data[...] = -0.3
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, np.where(x > 0, x, F32(-0.3) * x))


def test_prelu_slope_gradient_formula():
    x, dy = gauss(), gauss(seed=1)
    layer, _, _, _, dx = run('type: "PReLU"', x, dy)
    terms = [(dy * x)[:, c][x[:, c] <= 0].astype(np.float64) for c in range(3)]
    # float32 sums of 40 terms: error relative to the terms' magnitude, not the (cancelling) total
    for got, t in zip(layer.blobs[0].diff, terms):
        assert abs(got - t.sum()) <= 1e-6 * np.abs(t).sum()
    np.testing.assert_array_equal(dx, dy * np.where(x > 0, F32(1), F32(0.25)))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_prelu_gradient(shared, in_place):
    spec = (f'type: "PReLU" prelu_param {{ channel_shared: {str(shared).lower()} '
            f'filler {{ type: "gaussian" std: 0.5 }} }}')
    check_gradient(spec, [gauss()], kink=0.0, kink_range=0.01, in_place=in_place)


def test_prelu_errors():
    with pytest.raises(RistrettoError, match=">=2"):
        setup('type: "PReLU"', [gauss((5,))])
    with pytest.raises(RistrettoError, match="at most 4"):
        setup('type: "PReLU"', [gauss((1, 2, 1, 1, 1))])
    loaded = 'type: "PReLU" blobs { shape { dim: 4 } data: [1, 2, 3, 4] }'
    with pytest.raises(RistrettoError, match="inconsistent"):
        setup(loaded, [gauss()])  # 3 channels
    shared = 'type: "PReLU" prelu_param { channel_shared: true } blobs { shape { dim: 3 } data: [1, 2, 3] }'
    with pytest.raises(RistrettoError, match="inconsistent"):
        setup(shared, [gauss()])
    # Caffe compares counts only: a [1, 3, 1, 1] slope blob is accepted for 3 channels
    ok = 'type: "PReLU" blobs { shape { dim: 1 dim: 3 dim: 1 dim: 1 } data: [1, 2, 3] }'
    _, _, _, y, _ = run(ok, -np.ones((1, 3, 1, 1), F32))
    np.testing.assert_array_equal(y.ravel(), [-1, -2, -3])


# --------------------------------------------------------------------------- ELU
def test_elu_forward():
    x = np.array([-3, -1, -1e-3, 0, 0.5, 2], F32)
    alpha = F32(0.5)
    want = per_element(lambda v: max(v, 0.0) + float(alpha * (F32(math.exp(min(v, 0.0))) - F32(1))), x)
    assert_ulp(run('type: "ELU" elu_param { alpha: 0.5 }', x)[3], want)
    x = gauss()
    check_forward('type: "ELU"', [x], [np.where(x > 0, x, np.expm1(x.astype(np.float64)))],
                  rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
@pytest.mark.parametrize("in_place", [False, True])
def test_elu_gradient(alpha, in_place):
    check_gradient(f'type: "ELU" elu_param {{ alpha: {alpha} }}', [gauss()], kink=0.0,
                   kink_range=0.01, in_place=in_place)


# --------------------------------------------------------------------------- Sigmoid / TanH
def caffe_sigmoid(v: float) -> float:
    return 0.5 * math.tanh(0.5 * v) + 0.5


def test_sigmoid_forward_is_bit_exact():
    x = np.concatenate([np.array([-100, -40, -20, -1, -1e-3, -0.0, 0, 1e-3, 1, 20, 40, 100], F32),
                        gauss((2000,), seed=3) * F32(6)])
    y = run('type: "Sigmoid"', x)[3]
    np.testing.assert_array_equal(y, per_element(caffe_sigmoid, x))
    # the tanh form cancels to 0 below about -37 (Caffe's sigmoid(-40) is 0, not 4e-18)
    assert y[1] == 0
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6, atol=1e-16)


def test_sigmoid_backward_rounding():
    x, dy = gauss(seed=4), gauss(seed=5)
    _, _, _, y, dx = run('type: "Sigmoid"', x, dy)
    # dy * y in float, times (1. - y) in double, stored as float
    want = np.array([float(F32(d) * F32(s)) * (1.0 - float(s)) for d, s in zip(dy.ravel(), y.ravel())],
                    F32).reshape(x.shape)
    np.testing.assert_array_equal(dx, want)


@pytest.mark.parametrize("spec", ['type: "Sigmoid"', 'type: "TanH"'])
@pytest.mark.parametrize("in_place", [False, True])
def test_sigmoid_tanh_gradient(spec, in_place):
    check_gradient(spec, [gauss()], in_place=in_place)


def test_tanh_forward_and_backward():
    x = np.concatenate([np.array([-30, -1, -1e-4, 0, 1e-4, 0.7, 30], F32), gauss((500,), seed=6) * F32(3)])
    dy = gauss((x.size,), seed=7)
    _, _, _, y, dx = run('type: "TanH"', x, dy)
    assert_ulp(y, per_element(math.tanh, x))
    np.testing.assert_array_equal(dx, dy * (F32(1) - y * y))


# --------------------------------------------------------------------------- AbsVal
def test_absval():
    x = np.array([-2, -0.0, 0, 3, np.nan, -np.inf], F32)
    dy = np.full(6, 2, F32)
    _, _, _, y, dx = run('type: "AbsVal"', x, dy)
    np.testing.assert_array_equal(y, [2, 0, 0, 3, np.nan, np.inf])
    assert not np.signbit(y[1])
    np.testing.assert_array_equal(dx, [-2, 0, 0, 2, 0, -2])  # sign(0) = sign(NaN) = 0


def test_absval_gradient_and_in_place_is_an_error():
    check_gradient('type: "AbsVal"', [gauss()], kink=0.0, kink_range=0.01)
    with pytest.raises(RistrettoError, match="in-place") as err:
        setup('type: "AbsVal"', [gauss()], in_place=True)
    assert err.value.layer == "layer"


# --------------------------------------------------------------------------- BNLL
def caffe_bnll(v: float) -> float:
    # x > 0 ? x + log(1. + exp(-x)) : log(1. + exp(x)); exp of a float is a float
    if v > 0:
        return v + math.log(1.0 + float(F32(math.exp(-v))))
    return math.log(1.0 + float(F32(math.exp(v))))


def test_bnll_forward():
    x = np.concatenate([np.array([-100, -30, -1, 0, 1, 30, 100], F32), gauss((500,), seed=8) * F32(4)])
    y = run('type: "BNLL"', x)[3]
    assert_ulp(y, per_element(caffe_bnll, x))
    assert y[0] == 0  # 1. + 3.7e-44 is 1 in double, as in Caffe (log1p would give 3.7e-44)
    mid = np.abs(x) < 20
    np.testing.assert_allclose(y[mid], np.logaddexp(0, x[mid].astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(run('type: "BNLL"', np.array([np.nan, np.inf, -np.inf], F32))[3],
                                  [np.nan, np.inf, 0])


def test_bnll_backward_clamps_the_exponent():
    x = np.array([60, 1000, 3e38, np.inf, -1000, 0], F32)
    dy = np.array([1.5, -2, 3, 0.25, 7, 2], F32)
    dx = run('type: "BNLL"', x, dy)[4]
    # exp(min(x, 50)) keeps e / (e + 1) finite: 1 in float for large x (NaN without the clamp)
    np.testing.assert_array_equal(dx, [1.5, -2, 3, 0.25, 0, 1])


def test_bnll_gradient():
    check_gradient('type: "BNLL"', [gauss()])


# --------------------------------------------------------------------------- Power
def power_spec(power, scale, shift):
    return f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'


def test_power_forward_general():
    x = gauss() * F32(4)
    base = x * F32(0.83) + F32(-2.4)  # scale then shift, in float, as Caffe
    want = per_element(lambda b: c_pow(b, float(F32(0.37))), base)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = run(power_spec(0.37, 0.83, -2.4), x)[3]
    assert np.isnan(y).any() and not np.isnan(y).all()
    assert_ulp(y, want)


@pytest.mark.parametrize("power,scale,shift,value", [
    (0, 0.83, -2.4, 1.0),        # power 0: constant 1, even for non-finite inputs
    (0, 0, 3, 1.0),
    (2, 0, 3, 9.0),              # scale 0: constant shift^power
    (0.5, 0, -1, math.nan),      # pow(-1, 0.5)
])
def test_power_constant_when_power_times_scale_is_zero(power, scale, shift, value):
    x = np.array([-1, 0, 2, np.nan, np.inf, -np.inf], F32)
    dy = np.array([1, np.nan, np.inf, 2, 3, 4], F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, _, y, dx = run(power_spec(power, scale, shift), x, dy)
    np.testing.assert_array_equal(y, np.full(6, value, F32))
    np.testing.assert_array_equal(dx, np.zeros(6, F32))  # set to 0, not multiplied by dy


def test_power_one_and_two():
    x, dy = gauss(), gauss(seed=1)
    _, _, _, y, dx = run(power_spec(1, 0.83, -2.4), x, dy)
    np.testing.assert_array_equal(y, x * F32(0.83) + F32(-2.4))
    np.testing.assert_array_equal(dx, dy * F32(0.83))
    _, _, _, y, dx = run(power_spec(2, 0.83, -2.4), x, dy)
    b = x * F32(0.83) + F32(-2.4)
    np.testing.assert_array_equal(y, b * b)
    ds = F32(2) * F32(0.83)
    np.testing.assert_array_equal(dx, dy * (x * (ds * F32(0.83)) + ds * F32(-2.4)))


def test_power_half_follows_c_pow():
    # pow(x, 0.5) is sqrt(x) except pow(-0, 0.5) = +0 and pow(-inf, 0.5) = +inf
    x = np.array([-0.0, -np.inf, 4, 2, -1, np.inf, 0, 1e-40], F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = run(power_spec(0.5, 1, 0), x)[3]
    np.testing.assert_array_equal(y, [0, np.inf, 2, F32(math.sqrt(2)), np.nan, np.inf, 0,
                                      F32(math.sqrt(float(F32(1e-40))))])
    assert not np.signbit(y[0])
    y = run(power_spec(0.5, 0.5, 1), x)[3]
    np.testing.assert_array_equal(y, per_element(lambda v: c_pow(v * 0.5 + 1, 0.5), x))


def test_power_shift_zero_backward_is_discontinuous_at_zero():
    # dx = dy * power * y / x: at x = 0 this is 0/0 even though the derivative exists (power 3)
    x = np.array([0, 2, -1, 0.5], F32)
    dy = np.ones(4, F32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, _, _, y, dx = run(power_spec(3, 1, 0), x, dy)
    np.testing.assert_array_equal(y, [0, 8, -1, 0.125])
    assert np.isnan(dx[0])
    np.testing.assert_array_equal(dx[1:], [F32(8) / F32(2) * F32(3), 3, F32(0.125) / F32(0.5) * F32(3)])
    # the general branch divides by shift + scale * x the same way; only power 2 has its own formula
    assert np.isnan(run(power_spec(3, 1, 1), np.array([-1], F32), np.ones(1, F32))[4][0])
    assert run(power_spec(2, 1, 1), np.array([-1], F32), np.ones(1, F32))[4][0] == 0


@pytest.mark.parametrize("power,scale,shift,positive", [
    (0.37, 0.83, -2.4, True),    # general branch (base kept positive, as Caffe's test does)
    (0.37, 0.83, 0, True),       # shift == 0 branch
    (3, 0.83, 0, False),         # shift == 0 branch with negative inputs (integer power)
    (2, 0.83, -2.4, False),      # power == 2 branch
    (2, 0.5, 0, False),
    (1, 0.83, -2.4, False),
    (0, 0.83, -2.4, False),
    (0.5, 0, 2, False),
])
def test_power_gradient(power, scale, shift, positive):
    x = gauss()
    if positive:
        x = np.abs(x) + F32(0.5 - shift / scale)  # shift + scale * x >= 0.415
    check_gradient(power_spec(power, scale, shift), [x], kink=0.0, kink_range=0.01)


# --------------------------------------------------------------------------- Exp
def test_exp_forward():
    x = gauss() * F32(3)
    assert_ulp(run('type: "Exp"', x)[3], per_element(math.exp, x))
    # base -1: inner = scale, outer = exp(shift) (exp of a float, rounded to float)
    inner, outer = F32(0.5), F32(math.exp(2))
    want = per_element(lambda v: math.exp(v), x * inner) * outer
    assert_ulp(run('type: "Exp" exp_param { scale: 0.5 shift: 2 }', x)[3], want)
    check_forward('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', [x],
                  [per_element(lambda v: 2.0 ** (0.5 * v + 1), x)], rtol=2e-6)
    check_forward('type: "Exp" exp_param { base: 10 }', [x], [per_element(lambda v: 10.0 ** v, x)],
                  rtol=2e-6)
    # an explicit base e is computed through log(base) but agrees with base -1
    check_forward('type: "Exp" exp_param { base: 2.718281828 scale: 1.3 }', [x],
                  [run('type: "Exp" exp_param { scale: 1.3 }', x)[3]], rtol=1e-6)


def test_exp_base_one_is_constant():
    _, _, _, y, dx = run('type: "Exp" exp_param { base: 1 shift: 3 scale: 2 }', gauss(), gauss(seed=1))
    np.testing.assert_array_equal(y, np.ones_like(y))
    np.testing.assert_array_equal(dx, np.zeros_like(dx))


@pytest.mark.parametrize("base", ["0", "-2", "-0.5", "inf", "nan"])
@pytest.mark.parametrize("layer_type", ["Exp", "Log"])
def test_exp_log_invalid_base(layer_type, base):
    spec = f'name: "e" type: "{layer_type}" {layer_type.lower()}_param {{ base: {base} }}'
    with pytest.raises(RistrettoError) as err:
        setup(spec, [gauss()])
    assert err.value.layer == "e"


def test_log_base_one_is_an_error():
    with pytest.raises(RistrettoError, match="1/log"):
        setup('type: "Log" log_param { base: 1 }', [gauss()])


@pytest.mark.parametrize("params", ["", "base: 2 scale: 0.5 shift: 1", "scale: 2", "base: 10 shift: -1"])
@pytest.mark.parametrize("in_place", [False, True])
def test_exp_gradient(params, in_place):
    check_gradient(f'type: "Exp" exp_param {{ {params} }}', [gauss()], in_place=in_place)


# --------------------------------------------------------------------------- Log
def test_log_forward():
    x = np.exp(gauss() * F32(2))
    assert_ulp(run('type: "Log"', x)[3], per_element(math.log, x))
    check_forward('type: "Log" log_param { base: 2 scale: 0.5 shift: 1 }', [x],
                  [per_element(lambda v: math.log2(0.5 * v + 1), x)], rtol=2e-6, atol=1e-7)
    check_forward('type: "Log" log_param { base: 10 }', [x], [per_element(math.log10, x)],
                  rtol=2e-6, atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = run('type: "Log"', np.array([0, -1, np.inf], F32))[3]
    np.testing.assert_array_equal(y, [-np.inf, np.nan, np.inf])


@pytest.mark.parametrize("params,shift,scale", [("", 0, 1), ("base: 2 scale: 0.83 shift: 2.4", 2.4, 0.83),
                                                ("base: 10 scale: -2", 0, -2)])
def test_log_gradient(params, shift, scale):
    x = gauss()
    x = np.abs(x) * np.sign(scale) + F32((0.5 - shift) / scale)  # shift + scale * x >= 0.5
    check_gradient(f'type: "Log" log_param {{ {params} }}', [x])


# --------------------------------------------------------------------------- Threshold
def test_threshold_forward():
    x = np.array([-1, 0.2, F32(0.2) + F32(1e-7), 0.5, np.nan, np.inf], F32)
    check_forward('type: "Threshold" threshold_param { threshold: 0.2 }', [x],
                  [[0, 0, 1, 1, 0, 1]], rtol=0, atol=0)
    check_forward('type: "Threshold"', [x], [[0, 1, 1, 1, 0, 1]], rtol=0, atol=0)


def test_threshold_has_no_backward():
    layer, bottoms, tops = setup('name: "thr" type: "Threshold"', [gauss()])
    layer.forward(bottoms, tops)
    tops[0].diff = gauss(seed=1)
    with pytest.raises(RistrettoError, match="backward") as err:
        layer.backward(tops, [True], bottoms)
    assert err.value.layer == "thr" and "layer 'thr'" in str(err.value)


# --------------------------------------------------------------------------- Dropout
def test_dropout_test_phase_is_identity():
    x, dy = gauss(), gauss(seed=1)
    _, _, _, y, dx = run('type: "Dropout"', x, dy)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(dx, dy)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.9])
def test_dropout_train_mask_statistics_and_scale(ratio):
    n = 1_000_000
    x = gauss((1000, 1000), seed=2)
    spec = f'type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}'
    _, _, _, y, dx = run(spec, x, np.ones_like(x), phase=TRAIN)
    kept = y != 0
    keep = 1.0 - float(F32(ratio))
    # Binomial(n, keep): 6 standard deviations (false alarm < 1e-8)
    assert abs(kept.mean() - keep) <= 6 * math.sqrt(keep * (1 - keep) / n)
    scale = F32(1.0 / (1.0 - float(F32(ratio))))  # computed in double from the float ratio
    np.testing.assert_array_equal(y[kept], x[kept] * scale)
    np.testing.assert_array_equal(dx, np.where(kept, scale, F32(0)))


def test_dropout_mask_is_fresh_each_forward_and_repeatable_by_seed():
    x = np.ones((64, 64), F32)
    layer, bottoms, tops = setup('type: "Dropout"', [x], phase=TRAIN, seed=7)
    layer.forward(bottoms, tops)
    first = tops[0].data.copy()
    layer.forward(bottoms, tops)
    assert not np.array_equal(first, tops[0].data)
    again = run('type: "Dropout"', x, phase=TRAIN, seed=7)[3]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, run('type: "Dropout"', x, phase=TRAIN, seed=8)[3])


def test_dropout_layer_phase_overrides():
    y = run('type: "Dropout" phase: TEST', np.ones((32, 32), F32), phase=TRAIN)[3]
    assert np.all(y == 1)


def test_dropout_invalid_ratio():
    with pytest.raises(RistrettoError, match="dropout_ratio"):
        run('type: "Dropout" dropout_param { dropout_ratio: 1.5 }', gauss(), phase=TRAIN)


@pytest.mark.parametrize("in_place", [False, True])
def test_dropout_gradient(in_place):
    check_gradient('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', [gauss()], phase=TRAIN,
                   in_place=in_place)


# --------------------------------------------------------------------------- Clip
def test_clip():
    x = np.array([-5, -1, 0, 1.5, 2, 7, np.nan, -np.inf, np.inf], F32)
    dy = np.arange(1, 10, dtype=F32)
    _, _, _, y, dx = run('type: "Clip" clip_param { min: -1 max: 2 }', x, dy)
    np.testing.assert_array_equal(y, [-1, -1, 0, 1.5, 2, 2, -1, -1, 2])  # std::max(min, NaN) = min
    np.testing.assert_array_equal(dx, [0, 2, 3, 4, 5, 0, 0, 0, 0])  # bounds included


def test_clip_gradient_and_required_params():
    check_gradient('type: "Clip" clip_param { min: -1 max: 1 }', [gauss()], kink=1.0, kink_range=0.02)
    with pytest.raises(RistrettoError, match="max"):
        setup('type: "Clip" clip_param { min: -1 }', [gauss()])


# --------------------------------------------------------------------------- Swish
def test_swish_forward_bit_exact():
    x = np.concatenate([np.array([-50, -3, -1e-3, 0, 1e-3, 2, 50], F32), gauss((500,), seed=9) * F32(4)])
    beta = F32(1.5)
    want = per_element(lambda v: float(F32(v) * F32(caffe_sigmoid(float(F32(beta * F32(v)))))), x)
    y = run('type: "Swish" swish_param { beta: 1.5 }', x)[3]
    np.testing.assert_array_equal(y, want)
    xd = x.astype(np.float64)
    np.testing.assert_allclose(y, xd / (1 + np.exp(-1.5 * xd)), rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize("beta", [1.0, 1.5])
@pytest.mark.parametrize("in_place", [False, True])
def test_swish_gradient(beta, in_place):
    check_gradient(f'type: "Swish" swish_param {{ beta: {beta} }}', [gauss()], in_place=in_place)
