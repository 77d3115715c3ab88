"""Edge cases of Ristretto's number formats and layers, checked against Ristretto's own formulas
(base_ristretto_layer.cpp / .cu, base_ristretto_layer.cuh) evaluated by hand."""

from __future__ import annotations

import numpy as np
import pytest
from data_support import net_param
from layer_check import setup

from ristretto_cli.net import Net
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.quantization import trim_dfp, trim_minifloat, trim_pow2

SEMANTICS = ("ristretto", "caffe-cpu")
F = np.float32


def bits(a):
    return np.asarray(a, F).view(np.uint32)


# ------------------------------------------------------------------------------ layers
ALIASED = """name: "aliased"
layer {{ name: "in" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 2 dim: 2 }} }} }}
layer {{ name: "q" type: "{kind}" bottom: "data" bottom: "data" top: "a" top: "b"
  convolution_param {{ num_output: 1 kernel_size: 1 bias_term: false }}
  quantization_param {{ precision: MINIFLOAT mant_bits: 3 exp_bits: 4 }} }}
"""


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("kind", ["ConvolutionRistretto", "DeconvolutionRistretto"])
def test_all_bottoms_are_trimmed_before_any_top_is_computed(kind, semantics):
    # Forward_cpu/_gpu trim every bottom first, then compute top i from bottom i. The two
    # bottoms are Split tops sharing one array, so it is trimmed twice before either top:
    # MF(3, 4) NEAREST takes 500 to 512 (mantissa carry past the maximum 480), and 512 to 480.
    net = Net(net_param(ALIASED.format(kind=kind)), caffe_pb2.TEST, semantics=semantics)
    net.layer_by_name("q").blobs[0].data[...] = 0.5
    net.blobs["data"].data[...] = 500.0
    net.forward()
    # top = q(480 * 0.5) = 240 for both tops (not 512 * 0.5 = 256 for the first)
    assert net.blobs["a"].data.ravel().tolist() == [240.0] * 4
    assert net.blobs["b"].data.ravel().tolist() == [240.0] * 4


# ------------------------------------------------------------------------------ formats
# Hand-computed values of Ristretto's formulas: (x, caffe-cpu, ristretto).
DFP_CASES = {
    # DFP(1, fl): values {-2^-fl, 0}; hi = (2^0 - 1) * 2^-fl = +0
    (1, 0): [(0.3, 0.0, 0.0), (-0.3, -0.0, -0.0), (-0.5, -1.0, -0.0), (-0.7, -1.0, -1.0),
             (5.0, 0.0, 0.0), (-5.0, -1.0, -1.0), (-0.0, -0.0, -0.0), (np.inf, 0.0, 0.0),
             (-np.inf, -1.0, -1.0), (np.nan, np.nan, 0.0)],
    # DFP(2, 3): {-0.25, -0.125, 0, 0.125}
    (2, 3): [(1.0, 0.125, 0.125), (-1.0, -0.25, -0.25), (0.0625, 0.125, 0.0),
             (-0.0625, -0.125, -0.0), (0.1875, 0.125, 0.125), (-0.1875, -0.25, -0.25)],
    # fl < 0: step 4, DFP(3, -2) range [-16, 12]
    (3, -2): [(6.0, 8.0, 8.0), (10.0, 12.0, 8.0), (-6.0, -8.0, -8.0), (100.0, 12.0, 12.0),
              (-100.0, -16.0, -16.0), (1.9, 0.0, 0.0), (2.0, 4.0, 0.0)],
    # fl > bw: DFP(4, 10) range [-8/1024, 7/1024]
    (4, 10): [(1.0, 7 / 1024, 7 / 1024), (-1.0, -8 / 1024, -8 / 1024),
              (2.5 / 1024, 3 / 1024, 2 / 1024), (-0.5 / 1024, -1 / 1024, -0.0)],
}


@pytest.mark.parametrize("bw_fl", list(DFP_CASES))
def test_dfp_tiny_widths_and_odd_fractional_lengths(bw_fl):
    bw, fl = bw_fl
    x = np.array([c[0] for c in DFP_CASES[bw_fl]], F)
    for col, semantics in ((1, "caffe-cpu"), (2, "ristretto")):
        want = np.array([c[col] for c in DFP_CASES[bw_fl]], F)
        got = trim_dfp(x, bw, fl, semantics=semantics)
        nan = np.isnan(want)
        assert np.isnan(got[nan]).all()
        assert (bits(got[~nan]) == bits(want[~nan])).all(), (semantics, got, want)


def test_minifloat_small_exponent_widths():
    # MF(2, 2): bias 1, exponents 0..3, values (1 + k/4) * 2^(j-1): 0.5 .. 7
    x = np.array([0.49, 0.5, -0.5, 0.5625, 0.6875, 6.9, 7.0, 7.4, 7.6, 8.0, 1e9, -np.inf,
                  np.inf, -0.0, 1e-40], F)
    cpu = [0, 0.5, -0.5, 0.625, 0.75, 7.0, 7.0, 7.0, 8.0, 7.0, 7.0, -7.0, 7.0, 0, 0]
    gpu = [0, 0.5, -0.5, 0.5, 0.75, 7.0, 7.0, 7.0, 8.0, 7.0, 7.0, -7.0, 7.0, 0, 0]
    for semantics, want in (("caffe-cpu", cpu), ("ristretto", gpu)):
        got = trim_minifloat(x, 2, 2, semantics=semantics)
        assert (bits(got) == bits(np.array(want, F))).all(), (semantics, got)
    # MF(0, 1): bias 0, values 1 and 2; 1.5 and 3 are mantissa ties (3 carries to 4 on the CPU)
    x = np.array([0.9, 1.5, -1.5, 3.0, 2.9, 5.0], F)
    assert trim_minifloat(x, 0, 1, semantics="caffe-cpu").tolist() == [0, 2, -2, 4, 2, 2]
    assert trim_minifloat(x, 0, 1, semantics="ristretto").tolist() == [0, 1, -1, 2, 2, 2]


def test_pow2_zero_sign_and_log_domain_rounding():
    x = np.array([0.0, -0.0, 2**-2.5, -(2**-2.5), 2**-1.5, 3.0, -3.0, 2**-9, -np.inf, np.nan], F)
    cpu = trim_pow2(x, -8, -1, semantics="caffe-cpu")
    gpu = trim_pow2(x, -8, -1, semantics="ristretto")
    assert cpu[:9].tolist() == [2**-8, 2**-8, 0.125, -0.125, 0.25, 0.5, -0.5, 2**-8, -0.5]
    assert gpu[:9].tolist() == [2**-8, 2**-8, 0.25, -0.25, 0.25, 0.5, -0.5, 2**-8, -0.5]
    assert np.isnan(cpu[9]) and gpu[9] == -0.5   # sign -1 for NaN; fminf/fmaxf drop it on the GPU


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("kind,block", [
    ("FcRistretto", "inner_product_param { num_output: 3 bias_term: false }"),
    ("ConvolutionRistretto", "convolution_param { num_output: 3 kernel_size: 1 bias_term: false }"),
    ("DeconvolutionRistretto", "convolution_param { num_output: 3 kernel_size: 1 bias_term: false }"),
])
def test_layers_without_bias(kind, block, semantics):
    # fl_layer_out < 0 and fl_layer_in = 0: coarse grids with ties in both semantics
    rng = np.random.default_rng(4)
    x = (rng.integers(-16, 16, (2, 4, 1, 1)) / 2).astype(F)
    layer, bb, tb = setup(f'type: "{kind}" {block} quantization_param {{ bw_params: 3 '
                          'fl_params: 1 bw_layer_in: 4 fl_layer_in: 0 bw_layer_out: 5 '
                          'fl_layer_out: -1 }', [x], semantics=semantics)
    assert len(layer.blobs) == 1
    w = (rng.standard_normal(layer.blobs[0].shape) * 2).astype(F)
    layer.blobs[0].data[...] = w
    layer.forward(bb, tb)
    xq = trim_dfp(x, 4, 0, semantics=semantics).reshape(2, 4)
    wq = trim_dfp(w, 3, 1, semantics=semantics)
    wmat = wq.reshape(4, 3) if kind.startswith("Deconv") else wq.reshape(3, 4).T
    want = trim_dfp((xq @ wmat).astype(F), 5, -1, semantics=semantics)
    assert np.array_equal(bb[0].data.reshape(2, 4), xq)        # bottom trimmed in place
    assert np.array_equal(tb[0].data.reshape(2, 3), want)
    assert len(layer.quantized_weights) == 1
