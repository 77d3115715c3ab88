"""Ristretto's quantized layers (ristretto.md §3, DECISIONS.md "Number formats").

Every forward is checked against an independent computation with the number-format kernels:
trim the inputs, run the plain base layer with the trimmed weights, trim the outputs.
"""

from __future__ import annotations

import itertools
import logging
import math
import zlib

import numpy as np
import pytest
from data_support import capture_log, net_param
from layer_check import TEST, TRAIN, check_gradient, layer_param, setup
from test_conv_random_geometries import draw_geometry

from ristretto_cli.errors import RistrettoError
from ristretto_cli.layers import ristretto as R
from ristretto_cli.net import Net
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.quantization import (
    DynamicFixedPoint,
    Minifloat,
    PowerOfTwo,
    trim_dfp,
    trim_minifloat,
    trim_pow2,
)

SEMANTICS = ("ristretto", "caffe-cpu")

# ------------------------------------------------------------------------------ layer specs
QP = {
    "dfp": "quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 6 fl_layer_out: 2 "
           "bw_params: 5 fl_params: 4 }",
    "minifloat": "quantization_param { precision: MINIFLOAT mant_bits: 3 exp_bits: 4 }",
    "pow2": "quantization_param { precision: INTEGER_POWER_OF_2_WEIGHTS exp_min: -6 exp_max: 0 "
            "bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 7 fl_layer_out: 3 }",
}

LAYERS = {
    # name: (Ristretto type, base type, parameter block, bottom shape, bottoms)
    "conv": ("ConvolutionRistretto", "Convolution",
             "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 }",
             (2, 4, 7, 6), 1),
    "conv_2_bottoms": ("ConvolutionRistretto", "Convolution",
                       "convolution_param { num_output: 3 kernel_size: 2 }", (2, 3, 5, 5), 2),
    "deconv": ("DeconvolutionRistretto", "Deconvolution",
               "convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 }",
               (2, 4, 3, 4), 1),
    "fc": ("FcRistretto", "InnerProduct", "inner_product_param { num_output: 5 }", (3, 2, 3, 4), 1),
    "fc_transpose": ("FcRistretto", "InnerProduct",
                     "inner_product_param { num_output: 5 transpose: true }", (3, 12), 1),
    "fc_axis2": ("FcRistretto", "InnerProduct", "inner_product_param { num_output: 3 axis: 2 }",
                 (2, 3, 4, 5), 1),
}


def spec(kind: str, precision: str | None, *, base: bool = False, extra: str = "") -> str:
    rtype, btype, block, _, _ = LAYERS[kind]
    text = f'type: "{btype if base else rtype}" {block}'
    if not base and precision is not None:
        text += " " + QP[precision]
    return text + " " + extra


def sample(shape, seed=0, step=2.0**-5) -> np.ndarray:
    """Gaussian data on a 2^-5 grid: plenty of exact ties for the 2^-4 and 2^-2 input and
    output grids, plus some values off the grid."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape) * 2 / step) * step
    x.reshape(-1)[::5] += rng.uniform(-1e-3, 1e-3, x.size)[::5]
    return x.astype(np.float32)


def random_params(layer, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for blob in layer.blobs:
        blob.data[...] = rng.standard_normal(blob.shape).astype(blob.data.dtype) * 0.4
        out.append(blob.data.copy())
    return out


def formats(precision: str, semantics: str):
    """Independent trimming functions (inputs, weights, bias, outputs) of the QP blocks above;
    None = not trimmed."""
    sem = dict(semantics=semantics)
    if precision == "dfp":
        return (lambda a: trim_dfp(a, 8, 4, **sem), lambda a: trim_dfp(a, 5, 4, **sem),
                lambda a: trim_dfp(a, 5, 4, **sem), lambda a: trim_dfp(a, 6, 2, **sem))
    if precision == "minifloat":
        def mf(a):
            return trim_minifloat(a, 3, 4, **sem)
        return mf, mf, mf, mf

    def weights(a):
        return trim_pow2(a, -6, 0, **sem)
    if semantics == "caffe-cpu":
        return None, weights, None, None
    return (lambda a: trim_dfp(a, 8, 4, **sem), weights, None, lambda a: trim_dfp(a, 7, 3, **sem))


def apply(fn, a):
    return a.copy() if fn is None else fn(a)


def reference_tops(kind, bottoms, params, fns):
    """Trim inputs -> plain base layer with trimmed weights -> trim outputs."""
    fin, fw, fb, fout = fns
    xs = [apply(fin, x) for x in bottoms]
    plain, bb, tb = setup(spec(kind, None, base=True), xs, num_tops=len(xs))
    plain.blobs[0].data[...] = apply(fw, params[0])
    if len(params) > 1:
        plain.blobs[1].data[...] = apply(fb, params[1])
    plain.forward(bb, tb)
    return [apply(fout, t.data) for t in tb], xs


def assert_bits_equal(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    assert got.dtype == want.dtype == np.float32, what
    diff = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    assert diff.size == 0, (f"{what}: {diff.size} of {got.size} differ, e.g. at {diff[:5]}: "
                            f"{got.reshape(-1)[diff[:5]]} vs {want.reshape(-1)[diff[:5]]}")


# ------------------------------------------------------------------------------ forward (TEST)
@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("precision", list(QP))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_forward_is_trim_inputs_base_with_trimmed_weights_trim_outputs(kind, precision, semantics):
    shape, n = LAYERS[kind][3], LAYERS[kind][4]
    bottoms = [sample(shape, seed=i) for i in range(n)]
    layer, bb, tb = setup(spec(kind, precision), bottoms, num_tops=n, semantics=semantics)
    params = random_params(layer)
    layer.forward(bb, tb)
    want, trimmed_inputs = reference_tops(kind, bottoms, params, formats(precision, semantics))
    for i in range(n):
        assert_bits_equal(tb[i].data, want[i], f"top {i}")
        assert_bits_equal(bb[i].data, trimmed_inputs[i], f"bottom {i} (trimmed in place)")
    for blob, p in zip(layer.blobs, params):          # the shadow weights stay full precision
        assert_bits_equal(blob.data, p, "shadow weights")
    # A second forward (trimmed weights served from the cache) gives the same bits.
    for b, x in zip(bb, bottoms):
        b.data[...] = x
    layer.forward(bb, tb)
    for i in range(n):
        assert_bits_equal(tb[i].data, want[i], f"top {i}, second forward")


def _geometry_block(g: dict) -> str:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["pad"], g["dilation"]
    return (f'convolution_param {{ num_output: {g["o"]} group: {g["group"]} kernel_h: {kh} '
            f'kernel_w: {kw} stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw} dilation: {dh} '
            f'dilation: {dw} bias_term: {"true" if g["bias"] else "false"} }}')


RANDOM_DRAWS = ([(s, "small") for s in range(700, 712)] + [(s, "large") for s in range(720, 726)]
                + [(s, "typical") for s in range(740, 752)])
RANDOM_CASES = [pytest.param(seed, kind, precision, id=f"{kind}-{seed}-{precision}")
                for (seed, kind), precision in zip(RANDOM_DRAWS, itertools.cycle(QP))]


@pytest.mark.parametrize("seed, kind, precision", RANDOM_CASES)
@pytest.mark.parametrize("base", ["Convolution", "Deconvolution"])
def test_random_geometries_trim_around_the_plain_layer_bit_for_bit(base, seed, kind, precision):
    """Quantized convolutions trim each batch chunk's input and output while it is in the
    cache, in chunks of their own size; over random geometries (see
    test_conv_random_geometries) the tops must still equal, bit for bit, the plain layer's on
    trimmed inputs and weights, then trimmed."""
    g = draw_geometry(seed, kind, deconvolution=base == "Deconvolution")
    rtype = base + "Ristretto"
    x = sample((g["n"], g["c"]) + g["size"], seed=seed)
    layer, bb, tb = setup(f'type: "{rtype}" {_geometry_block(g)} {QP[precision]}', [x])
    params = random_params(layer, seed=seed)
    layer.forward(bb, tb)
    fin, fw, fb, fout = formats(precision, "ristretto")
    plain, pb, pt = setup(f'type: "{base}" {_geometry_block(g)}', [apply(fin, x)])
    plain.blobs[0].data[...] = apply(fw, params[0])
    if len(params) > 1:
        plain.blobs[1].data[...] = apply(fb, params[1])
    plain.forward(pb, pt)
    assert_bits_equal(tb[0].data, apply(fout, pt[0].data), f"{base} {g}")


def test_stochastic_rounding_in_test_phase_draws_inputs_weights_bias_outputs_in_order():
    qp = ("quantization_param { rounding_scheme: STOCHASTIC bw_layer_in: 8 fl_layer_in: 3 "
          "bw_layer_out: 8 fl_layer_out: 2 bw_params: 6 fl_params: 4 }")
    x = sample((2, 4, 5, 5), seed=3)
    layer, bb, tb = setup(spec("conv", None, extra=qp), [x], seed=42)
    params = random_params(layer)
    layer.rng = np.random.default_rng(7)
    layer.forward(bb, tb)

    rng = np.random.default_rng(7)
    st = dict(rounding="stochastic", rng=rng)
    xq = trim_dfp(x, 8, 3, **st)
    wq = trim_dfp(params[0], 6, 4, **st)
    bq = trim_dfp(params[1], 6, 4, **st)
    plain, pb, pt = setup(spec("conv", None, base=True), [xq])
    plain.blobs[0].data[...] = wq
    plain.blobs[1].data[...] = bq
    plain.forward(pb, pt)
    assert_bits_equal(bb[0].data, xq)
    assert_bits_equal(tb[0].data, trim_dfp(pt[0].data, 8, 2, **st))
    # STOCHASTIC in TEST: nothing is cached, every forward draws afresh.
    bb[0].data[...] = x
    layer.forward(bb, tb)
    assert not np.array_equal(layer.quantized_weights[0], wq)


# ------------------------------------------------------------------------------ TRAIN phase
@pytest.mark.parametrize("kind", ["conv", "deconv", "fc"])
def test_train_phase_leaves_activations_alone_and_trims_weights_stochastically(kind):
    shape = LAYERS[kind][3]
    x = sample(shape, seed=4)
    # rounding_scheme NEAREST is ignored in TRAIN: the weights are always rounded stochastically.
    layer, bb, tb = setup(spec(kind, "dfp"), [x], phase=TRAIN)
    params = random_params(layer)

    def run(seed):
        layer.rng = np.random.default_rng(seed)
        bb[0].data[...] = x
        layer.forward(bb, tb)
        return tb[0].data.copy(), [q.copy() for q in layer.quantized_weights]

    y1, q1 = run(11)
    y2, q2 = run(11)
    y3, q3 = run(12)
    assert_bits_equal(bb[0].data, x, "TRAIN leaves the bottom untouched")
    assert_bits_equal(y1, y2, "same seed, same draws")
    assert not np.array_equal(q1[0], q3[0]), "another seed draws other roundings"
    rng = np.random.default_rng(11)
    wq = trim_dfp(params[0], 5, 4, "stochastic", rng=rng)
    bq = trim_dfp(params[1], 5, 4, "stochastic", rng=rng)
    assert_bits_equal(q1[0], wq, "weights: stochastic DFP(5,4), drawn from the layer's generator")
    assert_bits_equal(q1[1], bq, "bias after the weights")
    assert not np.array_equal(wq, trim_dfp(params[0], 5, 4)), "not the NEAREST rounding"
    plain, pb, pt = setup(spec(kind, None, base=True), [x])
    plain.blobs[0].data[...] = wq
    plain.blobs[1].data[...] = bq
    plain.forward(pb, pt)
    assert_bits_equal(y1, pt[0].data, "TRAIN tops are not trimmed")
    for blob, p in zip(layer.blobs, params):
        assert_bits_equal(blob.data, p)


# ------------------------------------------------------------------------------ backward
def _with_blobs(text: str, arrays) -> caffe_pb2.LayerParameter:
    """A plain layer whose parameter blobs are fixed to ``arrays``."""
    from ristretto_cli.io.blobproto import array_to_blob
    p = layer_param(text)
    for a in arrays:
        p.blobs.add().CopyFrom(array_to_blob(np.asarray(a, np.float32)))
    return p


@pytest.mark.parametrize("phase", [TEST, TRAIN], ids=["TEST", "TRAIN"])
@pytest.mark.parametrize("kind", ["conv", "deconv", "fc", "fc_transpose"])
def test_backward_uses_the_trimmed_weights_and_accumulates_into_the_shadow_blobs(kind, phase):
    shape = LAYERS[kind][3]
    x = sample(shape, seed=5).astype(np.float64)
    layer, bb, tb = setup(spec(kind, "dfp"), [x], phase=phase, dtype=np.float64, seed=3)
    params = random_params(layer)
    layer.forward(bb, tb)
    wq = [q.copy() for q in layer.quantized_weights]
    x_used = bb[0].data.copy()                      # trimmed in TEST, untouched in TRAIN
    dy = np.random.default_rng(9).standard_normal(tb[0].shape)
    tb[0].diff = dy.copy()
    for blob in layer.blobs:
        blob.diff = np.zeros_like(blob.data)
    layer.backward(tb, [True], bb)
    dx = bb[0].diff.copy()
    dparams = [blob.diff.copy() for blob in layer.blobs]

    # The same computation by the plain layer whose weights ARE the trimmed values ...
    plain_param = _with_blobs(spec(kind, None, base=True), wq)
    plain, pb, pt = setup(plain_param, [x_used], dtype=np.float64)
    plain.forward(pb, pt)
    pt[0].diff = dy.copy()
    for blob in plain.blobs:
        blob.diff = np.zeros_like(blob.data)
    plain.backward(pt, [True], pb)
    np.testing.assert_allclose(dx, pb[0].diff, rtol=1e-12, atol=1e-12)
    for got, want in zip(dparams, [blob.diff for blob in plain.blobs]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # ... whose input gradient is right by finite differences (it is linear in x).
    check_gradient(_with_blobs(spec(kind, None, base=True), wq), [x_used], check_params=False)
    # The gradient differs from what the full-precision weights would give (straight-through).
    full, fb, ft = setup(_with_blobs(spec(kind, None, base=True), params), [x_used], dtype=np.float64)
    full.forward(fb, ft)
    ft[0].diff = dy.copy()
    full.backward(ft, [True], fb)
    assert not np.allclose(fb[0].diff, dx)

    # Parameter gradients accumulate into the full-precision blobs; the weights are untouched.
    layer.backward(tb, [True], bb)
    for blob, once, p in zip(layer.blobs, dparams, params):
        np.testing.assert_allclose(blob.diff, 2 * once, rtol=1e-12)
        assert np.array_equal(blob.data, p)


def test_backward_uses_the_trimmed_weights_of_the_latest_forward():
    """Cached or re-made after a change: the backward multiplies with what the forward used."""
    x = sample((4, 12), seed=2)
    layer, bb, tb = setup(spec("fc_transpose", "dfp").replace("transpose: true", ""), [x])
    params = random_params(layer)
    for step in range(3):
        if step == 2:
            layer.blobs[0].data[0, 0] += 1.0           # a change: re-trimmed
        bb[0].data[...] = x
        layer.forward(bb, tb)
        wq = trim_dfp(layer.blobs[0].data, 5, 4)
        tb[0].diff = np.ones(tb[0].shape, np.float32)
        layer.backward(tb, [True], bb)
        np.testing.assert_allclose(bb[0].diff, np.ones((4, 5), np.float32) @ wq, rtol=1e-6)
    assert params[0][0, 0] + 1.0 == layer.blobs[0].data[0, 0]


# ------------------------------------------------------------------------------ POW2, semantics
def test_power_of_two_bias_is_not_trimmed_and_activations_follow_the_semantics():
    x = sample((2, 4, 7, 6), seed=6)
    outs = {}
    for semantics in SEMANTICS:
        layer, bb, tb = setup(spec("conv", "pow2"), [x], semantics=semantics)
        params = random_params(layer)
        params[1] = np.array([0.3, -0.7, 0.123, 5.5], np.float32)
        layer.blobs[1].data[...] = params[1]
        layer.forward(bb, tb)
        assert len(layer.quantized_weights) == 1           # no trimmed bias copy
        w = layer.quantized_weights[0]
        assert np.all(np.abs(np.log2(np.abs(w))) % 1 == 0)  # powers of two, never zero
        plain, pb, pt = setup(spec("conv", None, base=True),
                              [x if semantics == "caffe-cpu" else trim_dfp(x, 8, 4)])
        plain.blobs[0].data[...] = trim_pow2(params[0], -6, 0, semantics=semantics)
        plain.blobs[1].data[...] = params[1]                # float bias
        plain.forward(pb, pt)
        want = pt[0].data if semantics == "caffe-cpu" else trim_dfp(pt[0].data, 7, 3)
        assert_bits_equal(tb[0].data, want, semantics)
        outs[semantics] = (bb[0].data.copy(), tb[0].data.copy())
    # caffe-cpu (Ristretto's CPU path) leaves POW2 activations untouched ...
    assert_bits_equal(outs["caffe-cpu"][0], x)
    # ... the default (its GPU path) trims them as DFP(8, 4) in and DFP(7, 3) out.
    assert not np.array_equal(outs["ristretto"][0], x)
    assert np.all(outs["ristretto"][1] * 8 == np.round(outs["ristretto"][1] * 8))


def test_semantics_differ_on_ties():
    # DFP(8, 4) inputs: 0.03125 is half a step: half to even gives 0, C round() 0.0625.
    x = np.full((1, 12), 0.03125, np.float32)
    x[0, 1::2] = -0.15625                                    # -2.5 steps: -0.125 vs -0.1875
    qp = ('quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_params: 8 fl_params: 4 '
          'bw_layer_out: 16 fl_layer_out: 8 }')
    got = {}
    for semantics in SEMANTICS:
        layer, bb, tb = setup(spec("fc_transpose", None, extra=qp), [x], semantics=semantics)
        layer.blobs[0].data[...] = 1.0
        layer.forward(bb, tb)
        got[semantics] = bb[0].data[0, :2].tolist()
    assert got["ristretto"] == [0.0, -0.125]
    assert got["caffe-cpu"] == [0.0625, -0.1875]


# ------------------------------------------------------------------------------ in place / aliasing
FIRE = """
name: "fire"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "squeeze" type: "Convolution" bottom: "data" top: "squeeze"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "expand1x1" type: "ConvolutionRistretto" bottom: "squeeze" top: "e1"
        convolution_param { num_output: 3 kernel_size: 1 }
        quantization_param { bw_layer_in: 8 fl_layer_in: 2 bw_layer_out: 8 fl_layer_out: 4
                             bw_params: 8 fl_params: 6 } }
layer { name: "expand3x3" type: "ConvolutionRistretto" bottom: "squeeze" top: "e3"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 }
        quantization_param { bw_layer_in: 8 fl_layer_in: 5 bw_layer_out: 8 fl_layer_out: 4
                             bw_params: 8 fl_params: 6 } }
layer { name: "concat" type: "Concat" bottom: "e1" bottom: "e3" top: "out" }
"""


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_input_trimming_is_in_place_on_the_shared_blob(semantics):
    """SqueezeNet's fire module: both expand layers read the squeeze output through a Split;
    the first one's in-place trimming (fl 2) is what the second one trims again (fl 5), and
    the squeeze layer's own top shows it too."""
    net = Net(net_param(FIRE), TEST, semantics=semantics, seed=3)
    assert [lay.type for lay in net.layers].count("Split") == 1
    rng = np.random.default_rng(0)
    for layer in net.layers:
        for blob in layer.blobs:
            blob.data[...] = rng.standard_normal(blob.shape).astype(np.float32) * 0.5
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()

    sq = net.layer_by_name("squeeze")
    plain, pb, pt = setup('type: "Convolution" convolution_param { num_output: 4 kernel_size: 1 }', [x])
    for dst, src in zip(plain.blobs, sq.blobs):
        dst.data[...] = src.data
    plain.forward(pb, pt)
    squeeze_float = pt[0].data
    once = trim_dfp(squeeze_float, 8, 2, semantics=semantics)
    twice = trim_dfp(once, 8, 5, semantics=semantics)
    assert not np.array_equal(once, squeeze_float)
    assert_bits_equal(net.blobs["squeeze"].data, twice, "the producer's top is trimmed")
    assert not np.array_equal(twice, trim_dfp(squeeze_float, 8, 5, semantics=semantics))
    e3 = net.layer_by_name("expand3x3")
    plain3, pb3, pt3 = setup('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 }',
                             [twice])
    for dst, src in zip(plain3.blobs, e3.blobs):
        dst.data[...] = trim_dfp(src.data, 8, 6, semantics=semantics)
    plain3.forward(pb3, pt3)
    assert_bits_equal(net.blobs["e3"].data, trim_dfp(pt3[0].data, 8, 4, semantics=semantics),
                      "the second consumer sees the first consumer's trimming")


def test_input_trimming_reaches_through_a_flatten_view():
    text = """
name: "flat"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 3 dim: 2 } } }
layer { name: "flat" type: "Flatten" bottom: "data" top: "flat" }
layer { name: "fc" type: "FcRistretto" bottom: "flat" top: "fc"
        inner_product_param { num_output: 3 }
        quantization_param { bw_layer_in: 4 fl_layer_in: 1 } }
"""
    net = Net(net_param(text), TEST, seed=1)
    x = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 2, 3, 2)
    net.blobs["data"].data[...] = x
    net.forward()
    assert_bits_equal(net.blobs["data"].data, trim_dfp(x, 4, 1))


# ------------------------------------------------------------------------------ weights: cache, saving
def test_saved_weights_are_the_full_precision_shadow_weights(tmp_path):
    text = f"""
name: "save"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 4 dim: 7 dim: 6 }} }} }}
layer {{ name: "conv" bottom: "data" top: "c" {spec("conv", "minifloat")}
         }}
layer {{ name: "fc" bottom: "c" top: "f" {spec("fc", "dfp")} }}
"""
    net = Net(net_param(text), TEST, seed=2)
    rng = np.random.default_rng(3)
    for layer in net.layers:
        for b in layer.blobs:
            b.data[...] = rng.standard_normal(b.shape).astype(np.float32)
    before = [b.data.copy() for layer in net.layers for b in layer.blobs]
    net.blobs["data"].data[...] = sample((2, 4, 7, 6))
    net.forward()
    proto = net.to_proto()
    from ristretto_cli.io.blobproto import blob_to_array
    saved = [blob_to_array(bp) for lp in proto.layer for bp in lp.blobs]
    assert len(saved) == len(before) == 4
    for s, b in zip(saved, before):
        assert_bits_equal(s.reshape(b.shape), b)
        assert not np.array_equal(trim_dfp(b, 5, 4), b)       # trimming would have changed them
    assert all(lp.type.endswith("Ristretto") for lp in proto.layer[1:])
    assert proto.layer[1].quantization_param.mant_bits == 3
    # Loading them back into a fresh net gives the same forward.
    net2 = Net(net_param(text), TEST, seed=99)
    net2.copy_trained_layers_from(proto)
    net2.blobs["data"].data[...] = sample((2, 4, 7, 6))
    net2.forward()
    assert_bits_equal(net2.blobs["f"].data, net.blobs["f"].data)


@pytest.mark.parametrize("kind", ["conv", "fc"])
def test_cached_trimmed_weights_follow_every_change_of_the_shadow_weights(kind, monkeypatch):
    shape = LAYERS[kind][3]
    x = sample(shape, seed=8)
    layer, bb, tb = setup(spec(kind, "dfp"), [x])
    random_params(layer)
    calls = []
    real = R._trim
    monkeypatch.setattr(R, "_trim", lambda *a, **k: calls.append(1) or real(*a, **k))

    def forward_checked(what):
        calls.clear()
        bb[0].data[...] = x
        layer.forward(bb, tb)
        for q, blob in zip(layer.quantized_weights, layer.blobs):
            assert_bits_equal(q, trim_dfp(blob.data, 5, 4, semantics=layer.semantics), what)
        return len(calls)

    assert forward_checked("first") >= 1
    assert forward_checked("unchanged: served from the cache") == 0
    w = layer.blobs[0].data
    w.reshape(-1)[3] += 0.5                             # one element, in place
    forward_checked("one element changed")
    layer.blobs[1].data[...] *= -1                      # the bias
    forward_checked("bias changed")
    w.reshape(-1)[0] = 0.0
    forward_checked("zero")
    w.reshape(-1)[0] = -0.0                             # only the sign bit changes
    forward_checked("negative zero")
    assert np.signbit(layer.quantized_weights[0].reshape(-1)[0])
    layer.blobs[0].data = w * 0.5                       # the array replaced (weight sharing)
    forward_checked("array replaced")
    layer.semantics = "caffe-cpu"                       # another rounding rule
    forward_checked("semantics changed")
    assert forward_checked("unchanged again") == 0


# Input (2, 6) -> FcRistretto with 3 outputs, 8-bit formats.
FC_NET = """
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 6 } } }
layer { name: "fc" type: "FcRistretto" bottom: "data" top: "fc" inner_product_param { num_output: 3 }
        quantization_param { bw_params: 8 fl_params: 6 bw_layer_in: 8 fl_layer_in: 4
                             bw_layer_out: 8 fl_layer_out: 4 } }
"""


def test_frozen_weights_are_compared_once_per_stretch_and_changes_between_stretches_are_seen(monkeypatch):
    text = 'name: "frozen"' + FC_NET + """
layer { name: "bn" type: "BatchNorm" bottom: "fc" top: "bn" batch_norm_param { use_global_stats: false } }
"""
    net = Net(net_param(text), TEST, seed=1)
    fc, bn = net.layer_by_name("fc"), net.layer_by_name("bn")
    random_params(fc)
    compares = []
    real = R._same_bits
    monkeypatch.setattr(R, "_same_bits", lambda a, b: compares.append(1) or real(a, b))
    x = sample((2, 6))

    def forward_checked():
        net.blobs["data"].data[...] = x
        net.forward()
        w, b = (blob.data for blob in fc.blobs)
        want = trim_dfp(trim_dfp(x, 8, 4) @ trim_dfp(w, 8, 6).T + trim_dfp(b, 8, 6), 8, 4)
        np.testing.assert_array_equal(net.blobs["fc"].data, want)

    forward_checked()
    needed = [layer.backward_state_needed for layer in net.layers]
    with net.frozen_params():
        assert not any(layer.backward_state_needed for layer in net.layers)   # forwards only
        assert not fc.blobs[0].data.flags.writeable and not fc.blobs[1].data.flags.writeable
        assert bn.blobs[0].data.flags.writeable              # BatchNorm updates its blobs in forward
        with pytest.raises(ValueError):
            fc.blobs[0].data[0, 0] = 1.0                     # a write fails loudly
        compares.clear()
        for _ in range(4):
            forward_checked()
        assert len(compares) == 2                            # weight and bias, checked once
    assert fc.blobs[0].data.flags.writeable and fc.frozen_params is None
    assert [layer.backward_state_needed for layer in net.layers] == needed
    fc.blobs[0].data[1, 2] += 0.25                           # changed between stretches
    with net.frozen_params():
        forward_checked()
        fc.blobs[1].data = fc.blobs[1].data * 2              # an array replaced inside a stretch
        forward_checked()
    # An array someone else made read-only keeps the bit comparison on every pass.
    fc.blobs[0].data.flags.writeable = False
    with net.frozen_params():
        assert fc.frozen_params is None
        compares.clear()
        forward_checked()
        forward_checked()
        assert len(compares) == 4
    assert not fc.blobs[0].data.flags.writeable              # left as it was


def test_test_nets_sharing_the_train_nets_weights_see_the_updates():
    text = 'name: "shared"' + FC_NET
    train = Net(net_param(text), TRAIN, seed=1)
    test = Net(net_param(text), TEST, seed=2)
    test.share_trained_layers_with(train)
    x = sample((2, 6))
    for _ in range(3):
        test.blobs["data"].data[...] = x
        test.forward()
        w = train.layer_by_name("fc").blobs[0].data
        product = trim_dfp(x, 8, 4) @ trim_dfp(w, 8, 6).T       # the layer's GEMM call
        want = trim_dfp(product + trim_dfp(train.layer_by_name("fc").blobs[1].data, 8, 6), 8, 4)
        np.testing.assert_array_equal(test.blobs["fc"].data, want)
        w -= 0.05 * np.sign(w + 0.01)                   # what the solver's update does, in place


# ------------------------------------------------------------------------------ setup errors, warnings
def test_layer_formats_table():
    qp = caffe_pb2.QuantizationParameter(bw_layer_in=8, fl_layer_in=3, bw_layer_out=6, fl_layer_out=1,
                                         bw_params=4, fl_params=5, exp_min=-5, exp_max=-1)
    f = R.layer_formats(qp, "ristretto")
    assert (f.weights, f.bias, f.inputs, f.outputs) == (
        DynamicFixedPoint(4, 5), DynamicFixedPoint(4, 5), DynamicFixedPoint(8, 3), DynamicFixedPoint(6, 1))
    assert not f.stochastic
    qp.precision = qp.MINIFLOAT
    f = R.layer_formats(qp, "caffe-cpu")
    assert {f.weights, f.bias, f.inputs, f.outputs} == {Minifloat(23, 8)}   # the proto defaults
    qp.precision = qp.INTEGER_POWER_OF_2_WEIGHTS
    qp.rounding_scheme = qp.STOCHASTIC
    f = R.layer_formats(qp, "ristretto")
    assert (f.weights, f.bias, f.inputs, f.outputs, f.stochastic) == (
        PowerOfTwo(-5, -1), None, DynamicFixedPoint(8, 3), DynamicFixedPoint(6, 1), True)
    f = R.layer_formats(qp, "caffe-cpu")
    assert (f.bias, f.inputs, f.outputs) == (None, None, None)
    # Defaults: DFP(32, 16) everywhere (not lossless, ristretto.md §4.1).
    f = R.layer_formats(caffe_pb2.QuantizationParameter(), "ristretto")
    assert {f.weights, f.inputs, f.outputs} == {DynamicFixedPoint(32, 16)}


def test_unknown_precision_is_an_error():
    from types import SimpleNamespace
    qp = SimpleNamespace(precision=7, rounding_scheme=0)
    with pytest.raises(ValueError, match="Unknown precision mode: 7"):
        R.layer_formats(qp, "ristretto")
    # The proto itself refuses such a value in a prototxt.
    with pytest.raises(Exception, match="has no value with number 7"):
        layer_param('type: "FcRistretto" quantization_param { precision: 7 }')


def test_format_parameters_out_of_range_name_the_layer():
    with pytest.raises(RistrettoError, match=r"layer 'layer'.*bw = 0 is out of range"):
        setup(spec("fc", None, extra="quantization_param { bw_params: 0 }"), [np.ones((2, 3))])
    with pytest.raises(RistrettoError, match=r"exp_bits = 0 is out of range"):
        setup(spec("conv", None, extra="quantization_param { precision: MINIFLOAT exp_bits: 0 }"),
              [np.ones((1, 4, 5, 5))])


def test_fc_ristretto_takes_exactly_one_bottom_and_one_top():
    with pytest.raises(RistrettoError, match="FcRistretto layer takes 1 bottom blob"):
        setup(spec("fc", "dfp"), [np.ones((2, 3)), np.ones((2, 3))], num_tops=2)


def test_bias_bit_width_fields_are_ignored_with_one_warning_per_layer():
    qp = ("quantization_param { bw_params: 8 fl_params: 5 bw_bias_params: 32 fl_bias_params: 33 "
          "bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 8 fl_layer_out: 4 }")
    x = sample((2, 12))
    with capture_log() as log:
        layer, bb, tb = setup(spec("fc_transpose", None, extra=qp), [x])
        params = random_params(layer)
        layer.forward(bb, tb)
        layer.forward(bb, tb)
    warnings = log.levels(logging.WARNING)
    assert len(warnings) == 1
    assert "bw_bias_params, fl_bias_params" in warnings[0] and "ignored" in warnings[0]
    assert_bits_equal(layer.quantized_weights[1], trim_dfp(params[1], 8, 5))


# ------------------------------------------------------------------------------ activation kernels
FAST_FORMATS = [DynamicFixedPoint(8, 4), DynamicFixedPoint(2, 1), DynamicFixedPoint(16, -3),
                DynamicFixedPoint(32, 16), DynamicFixedPoint(8, 120), DynamicFixedPoint(24, -100),
                Minifloat(3, 4), Minifloat(1, 4), Minifloat(2, 4), Minifloat(10, 5), Minifloat(7, 8),
                Minifloat(21, 6), Minifloat(4, 10), Minifloat(0, 4), Minifloat(22, 8), Minifloat(5, 2)]


def _kernel_inputs(fmt, rng, n=150_000) -> np.ndarray:
    """Finite values spread over the format's range (and far below it), a third of them exact
    ties, plus zeros of both signs; no NaN, no saturation: the fast kernels' domain."""
    if isinstance(fmt, Minifloat):
        e = fmt.exp_bits
        bias = 2 ** min(e - 1, 12) - 1
        hi = min(2 ** (e - 1), 100) if e < 8 else 100     # below saturation
        lo = max(-140, -bias - 12)                        # a part underflows
    else:
        hi = min(fmt.bw - 1 - fmt.fl + 2, 100)            # a part is clipped
        lo = max(-140, hi - 60)
    logs = rng.uniform(lo, hi - 0.01, n)
    x = (np.where(rng.random(n) < 0.5, -1, 1) * np.exp2(logs)).astype(np.float32)
    if isinstance(fmt, Minifloat) and fmt.mant_bits < 23:
        k = 23 - fmt.mant_bits
        b = x.view(np.uint32).copy()
        b[::3] = (b[::3] >> k << k) | (1 << (k - 1))                 # mantissa ties
        x = b.view(np.float32)
    elif isinstance(fmt, DynamicFixedPoint):
        q = rng.integers(-(2 ** (fmt.bw - 1)), 2 ** (fmt.bw - 1), x[::3].size).astype(np.float64)
        x[::3] = ((q + 0.5) * 2.0**-fmt.fl).astype(np.float32)       # exact half steps
    x[::17] = 0.0
    x[::19] = -0.0
    return x


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("fmt", FAST_FORMATS, ids=str)
def test_activation_trimming_equals_the_format_kernels(fmt, semantics, monkeypatch):
    trimmer = R._ActivationTrimmer(fmt, False, semantics)
    rng = np.random.default_rng(zlib.crc32(f"{fmt} {semantics}".encode()))
    x = _kernel_inputs(fmt, rng)
    fallbacks = []
    real = trimmer._general
    monkeypatch.setattr(trimmer, "_general", lambda c: fallbacks.append(c.size) or real(c))
    if trimmer.kernel is not None:   # re-bind: the kernels captured the method at construction
        trimmer.kernel = trimmer._fast_kernel(fmt, semantics == "caffe-cpu")
    got = x.copy()
    trimmer(got, None)
    assert_bits_equal(got, fmt.trim(x, semantics=semantics), str(fmt))
    if trimmer.kernel is not None:
        assert not fallbacks, "finite data in range must not need the general kernel"
    # Special values: NaN, infinities, saturation and float32 denormals in some chunks.
    y = x.copy()
    y[5] = np.nan
    y[70_000] = np.inf
    y[140_000] = -np.float32(3e38)
    y[100_000] = np.float32(1e-42)
    got = y.copy()
    trimmer(got, None)
    assert_bits_equal(got, fmt.trim(y, semantics=semantics), f"{fmt} with special values")
    # Arbitrary bit patterns: signalling and quiet NaNs, infinities, denormals, everything.
    z = rng.integers(0, 2**32, 70_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = z.copy()
    trimmer(got, None)
    assert_bits_equal(got, fmt.trim(z, semantics=semantics), f"{fmt} on random bits")


def test_the_usual_formats_take_the_fast_kernels():
    for semantics in SEMANTICS:
        for fmt in (DynamicFixedPoint(8, 4), DynamicFixedPoint(16, 12), Minifloat(3, 4), Minifloat(10, 5)):
            assert R._ActivationTrimmer(fmt, False, semantics).kernel is not None, (fmt, semantics)
        assert R._ActivationTrimmer(Minifloat(3, 4), True, semantics).kernel is None  # stochastic


def test_activation_trimming_of_strided_float64_and_empty_arrays():
    fmt = Minifloat(3, 4)
    trimmer = R._ActivationTrimmer(fmt, False, "ristretto")
    base = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    view = base[:, ::2]
    want = fmt.trim(view)
    trimmer(view, None)
    assert_bits_equal(base[:, ::2], want)
    x64 = np.random.default_rng(2).standard_normal(50)
    want64 = fmt.trim(x64).astype(np.float64)
    trimmer(x64, None)
    np.testing.assert_array_equal(x64, want64)
    for f in (fmt, DynamicFixedPoint(8, 4)):
        for semantics in SEMANTICS:
            R._ActivationTrimmer(f, False, semantics)(np.zeros((0, 3), np.float32), None)


# ------------------------------------------------------------------------------ LRNRistretto
LRN_SPEC = ('type: "LRNRistretto" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }} '
            'quantization_param {{ precision: MINIFLOAT mant_bits: {m} exp_bits: {e} }}')


def _q(v, m, e) -> np.float32:
    """One value trimmed to minifloat, NEAREST, half to even (the GPU's rint)."""
    return trim_minifloat(np.array([v], np.float32), m, e)[0]


def scalar_lrn_ristretto(x, size, alpha, beta, k, m, e):
    """ristretto.md §3.5 element by element, in the GPU kernel's order of operations."""
    f32 = np.float32
    n_, c_, h_, w_ = x.shape
    pre = (size - 1) // 2
    post = size - pre - 1
    alpha_over_size = f32(alpha) / f32(size)
    scale = np.zeros(x.shape, f32)
    y = np.zeros(x.shape, f32)
    for n in range(n_):
        for hh in range(h_):
            for ww in range(w_):
                col = x[n, :, hh, ww]

                def sq(c, col=col):
                    xq = _q(col[c], m, e)
                    return _q(f32(xq * xq), m, e)
                accum = f32(0)
                head = 0
                while head < post and head < c_:
                    accum = _q(f32(accum + sq(head)), m, e)
                    head += 1
                while head < c_ + post:
                    if head < c_:
                        accum = _q(f32(accum + sq(head)), m, e)
                    if head - size >= 0:
                        accum = _q(f32(accum - sq(head - size)), m, e)
                    t = _q(f32(accum * alpha_over_size), m, e)
                    scale[n, head - post, hh, ww] = _q(f32(f32(k) + t), m, e)
                    head += 1
                for c in range(c_):
                    s = float(scale[n, c, hh, ww])
                    p = _q(f32(math.pow(s, -float(f32(beta)))), m, e)
                    y[n, c, hh, ww] = _q(f32(_q(x[n, c, hh, ww], m, e) * p), m, e)
    return y, scale


def scalar_lrn_backward(x, y, dy, scale, size, alpha, beta):
    """Caffe's LRN gradient element by element, in double:
    dx[c] = dy[c]·scale[c]^-beta − (2·alpha·beta/size)·x[c]·Σ_{|c'−c| ≤ pre} dy[c']·y[c']/scale[c']."""
    pre = (size - 1) // 2
    x, y, dy, scale = (a.astype(np.float64) for a in (x, y, dy, scale))
    dx = np.zeros_like(x)
    n_, c_, h_, w_ = x.shape
    for n in range(n_):
        for c in range(c_):
            for hh in range(h_):
                for ww in range(w_):
                    acc = sum(dy[n, j, hh, ww] * y[n, j, hh, ww] / scale[n, j, hh, ww]
                              for j in range(max(0, c - pre), min(c_, c + pre + 1)))
                    dx[n, c, hh, ww] = (dy[n, c, hh, ww] * scale[n, c, hh, ww] ** -beta
                                        - 2 * alpha * beta / size * x[n, c, hh, ww] * acc)
    return dx


@pytest.mark.parametrize("params", [
    dict(size=5, alpha=0.3, beta=0.75, k=2.0, m=3, e=4),
    dict(size=3, alpha=1.5, beta=0.5, k=1.0, m=10, e=5),
    dict(size=7, alpha=0.01, beta=0.9, k=0.5, m=4, e=3),      # more channels than the window
], ids=["mf3_4", "mf10_5", "mf4_3"])
@pytest.mark.parametrize("phase", [TEST, TRAIN], ids=["TEST", "TRAIN"])
def test_lrn_ristretto_matches_an_element_by_element_reference(params, phase):
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((2, 6, 3, 2)) * 2).astype(np.float32)
    x[0, 2, 1, 1] = 0.0
    x[1, 0, 0, 0] = 1e-4                                   # underflows in the narrow formats
    text = LRN_SPEC.format(**params)
    want_y, want_scale = scalar_lrn_ristretto(x, **params)
    for semantics in SEMANTICS:                            # identical in both semantics
        layer, bb, tb = setup(text, [x], phase=phase, semantics=semantics)
        layer.forward(bb, tb)
        assert_bits_equal(tb[0].data, want_y, f"y ({semantics})")
        assert_bits_equal(layer.scale, want_scale, "scale")
        assert_bits_equal(bb[0].data, x, "the bottom is not modified")
        dy = rng.standard_normal(x.shape).astype(np.float32)
        tb[0].diff = dy.copy()
        layer.backward(tb, [True], bb)
        want_dx = scalar_lrn_backward(x, want_y, dy, want_scale, params["size"], params["alpha"],
                                      params["beta"])
        np.testing.assert_allclose(bb[0].diff, want_dx, rtol=2e-5, atol=1e-6)


def test_lrn_ristretto_with_a_wide_format_is_close_to_lrn():
    x = (np.random.default_rng(5).standard_normal((2, 7, 4, 3)) * 3).astype(np.float32)
    plain = 'type: "LRN" lrn_param { local_size: 5 alpha: 0.2 beta: 0.75 k: 1.5 }'
    lrn, pb, pt = setup(plain, [x])
    lrn.forward(pb, pt)
    layer, bb, tb = setup(LRN_SPEC.format(size=5, alpha=0.2, beta=0.75, k=1.5, m=20, e=8), [x])
    layer.forward(bb, tb)
    np.testing.assert_allclose(tb[0].data, pt[0].data, rtol=2e-5)


def test_lrn_ristretto_setup_errors():
    base = 'type: "LRNRistretto" lrn_param { local_size: 3 } '
    x = np.ones((1, 3, 2, 2), np.float32)
    for qp in ("quantization_param { }", "quantization_param { precision: DYNAMIC_FIXED_POINT }",
               "quantization_param { precision: INTEGER_POWER_OF_2_WEIGHTS }"):
        with pytest.raises(RistrettoError, match="LRN layer only supports minifloat"):
            setup(base + qp, [x])
    with pytest.raises(RistrettoError, match="norm_region ACROSS_CHANNELS"):
        setup('type: "LRNRistretto" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL } '
              'quantization_param { precision: MINIFLOAT }', [x])
    with pytest.raises(RistrettoError, match="mant_bits = 40 is out of range"):
        setup(base + "quantization_param { precision: MINIFLOAT mant_bits: 40 }", [x])


def test_bitwise_comparison_of_weights():
    rng = np.random.default_rng(3)
    for n in (7, 1000, 2 * R._COMPARE_CHUNK + 3, 4 * R._COMPARE_CHUNK):   # odd sizes, several steps
        a = rng.standard_normal(n).astype(np.float32)
        assert R._same_bits(a, a.copy())
        for pos in (0, n // 2, n - 1):
            b = a.copy()
            b[pos] = np.nextafter(b[pos], np.float32(np.inf))
            assert not R._same_bits(a, b), (n, pos)
    z = np.zeros(6, np.float32)
    assert not R._same_bits(z, -z)                       # the sign of zero counts
    nan = np.full(4, np.nan, np.float32)
    assert R._same_bits(nan, nan.copy())                  # NaN equals itself bit for bit
    assert not R._same_bits(z, z.astype(np.float64))
    assert not R._same_bits(z, z.reshape(2, 3))
    m = rng.standard_normal((6, 8)).astype(np.float32)
    assert R._same_bits(m[:, ::2], m[:, ::2].copy())      # strided
