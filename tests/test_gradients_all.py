"""Every registered layer type that has a backward passes a finite-difference check.

The family test files check each layer in depth (every option); this file guarantees that
no registered type is left out: it enumerates the registry and fails for a type that has
a backward but no entry below. Ristretto layers are checked with a minifloat format that
leaves float32 values unchanged (23 mantissa and 8 exponent bits), where trimming is the
identity and the gradient formulas can be compared with finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import TRAIN, check_gradient

from ristretto_cli.layers import LAYER_TYPES

RNG = np.random.default_rng(20261125)


def normal(*shape):
    return RNG.standard_normal(shape)


def away_from(values, points=(0.0,), gap=0.05):
    """Shift values that sit within ``gap`` of a kink so central differences stay on one side."""
    v = np.array(values, dtype=np.float64)
    for p in points:
        close = np.abs(v - p) < gap
        v[close] = p + np.where(v[close] >= p, gap, -gap) * 2
    return v


def distinct(*shape):
    """Values with no ties (max pooling, Eltwise MAX)."""
    return RNG.permutation(np.arange(int(np.prod(shape)), dtype=np.float64)).reshape(shape) * 0.1


def labels(n, classes, *rest):
    return RNG.integers(0, classes, size=(n, *rest)).astype(np.float64)


MF_EXACT = "quantization_param { precision: MINIFLOAT mant_bits: 23 exp_bits: 8 }"

# type -> (prototxt snippet, bottoms, extra keyword arguments for check_gradient)
CASES = {
    "AbsVal": ('type: "AbsVal"', lambda: [away_from(normal(2, 3, 4))], {}),
    "BNLL": ('type: "BNLL"', lambda: [normal(2, 3, 4)], {}),
    "BatchReindex": ('type: "BatchReindex"', lambda: [normal(3, 2, 2), np.array([2.0, 0, 2, 1, 1])],
                     {"check_bottoms": [0]}),
    "BatchNorm": ('type: "BatchNorm" batch_norm_param { use_global_stats: false }',
                  lambda: [normal(3, 2, 2, 2)], {}),
    "Bias": ('type: "Bias" bias_param { filler { type: "gaussian" } }', lambda: [normal(2, 3, 2)], {}),
    "Clip": ('type: "Clip" clip_param { min: -0.5 max: 0.6 }',
             lambda: [away_from(normal(2, 3, 4), (-0.5, 0.6))], {}),
    "Concat": ('type: "Concat"', lambda: [normal(2, 2, 3), normal(2, 1, 3)], {}),
    "ContrastiveLoss": ('type: "ContrastiveLoss" contrastive_loss_param { margin: 2 }',
                        lambda: [normal(4, 3, 1, 1), normal(4, 3, 1, 1), labels(4, 2, 1, 1, 1)],
                        {"check_bottoms": [0, 1]}),
    "Convolution": ('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 pad: 1 stride: 2 '
                    'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                    lambda: [normal(2, 2, 5, 5)], {}),
    "ConvolutionRistretto": ('type: "ConvolutionRistretto" convolution_param { num_output: 3 kernel_size: 3 '
                             'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } ' + MF_EXACT,
                             lambda: [normal(2, 2, 4, 4)], {}),
    "Crop": ('type: "Crop" crop_param { axis: 2 offset: 1 }', lambda: [normal(2, 2, 5, 5), normal(2, 2, 3, 3)],
             {"check_bottoms": [0]}),
    "Deconvolution": ('type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride: 2 '
                      'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                      lambda: [normal(2, 3, 3, 3)], {}),
    "DeconvolutionRistretto": ('type: "DeconvolutionRistretto" convolution_param { num_output: 2 kernel_size: 3 '
                               'stride: 2 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } '
                               + MF_EXACT, lambda: [normal(2, 3, 3, 3)], {}),
    "Dropout": ('type: "Dropout" dropout_param { dropout_ratio: 0.3 }', lambda: [normal(3, 4, 5)],
                {"phase": TRAIN}),
    "ELU": ('type: "ELU" elu_param { alpha: 0.7 }', lambda: [away_from(normal(2, 3, 4))], {}),
    # Both bottoms from one draw: no ties across them either
    "Eltwise": ('type: "Eltwise" eltwise_param { operation: MAX }', lambda: list(distinct(2, 2, 3)), {}),
    "Embed": ('type: "Embed" embed_param { num_output: 3 input_dim: 5 weight_filler { type: "gaussian" } '
              'bias_filler { type: "gaussian" } }', lambda: [labels(4, 5)], {"check_bottoms": []}),
    "EuclideanLoss": ('type: "EuclideanLoss"', lambda: [normal(3, 4), normal(3, 4)], {}),
    "Exp": ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }', lambda: [normal(2, 3)], {}),
    "FcRistretto": ('type: "FcRistretto" inner_product_param { num_output: 3 weight_filler { type: "gaussian" } '
                    'bias_filler { type: "gaussian" } } ' + MF_EXACT, lambda: [normal(2, 5)], {}),
    "Filter": ('type: "Filter"', lambda: [normal(4, 2, 3), normal(4, 3), np.array([1.0, 0, 1, 1])],
               {"num_tops": 2, "check_bottoms": [0, 1]}),
    "Flatten": ('type: "Flatten"', lambda: [normal(2, 3, 2, 2)], {}),
    "HingeLoss": ('type: "HingeLoss" hinge_loss_param { norm: L2 }', lambda: [normal(4, 5), labels(4, 5)],
                  {"check_bottoms": [0]}),
    "Im2col": ('type: "Im2col" convolution_param { kernel_size: 3 pad: 1 stride: 2 dilation: 1 }',
               lambda: [normal(2, 2, 5, 4)], {}),
    "InfogainLoss": ('type: "InfogainLoss"', lambda: [normal(4, 3), labels(4, 3), np.abs(normal(3, 3))],
                     {"check_bottoms": [0]}),
    "InnerProduct": ('type: "InnerProduct" inner_product_param { num_output: 3 weight_filler { type: "gaussian" } '
                     'bias_filler { type: "gaussian" } }', lambda: [normal(2, 5)], {}),
    "LRN": ('type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }', lambda: [normal(2, 5, 3, 3)], {}),
    "LRNRistretto": ('type: "LRNRistretto" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 } ' + MF_EXACT,
                     lambda: [normal(2, 5, 3, 3)], {}),
    # Recurrent layers (x, cont, x_static): cont 0 at every stream's first step, so that the state
    # a forward carries into the next has no effect on the repeated forwards of the check.
    "LSTM": ('type: "LSTM" recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
             'bias_filler { type: "gaussian" std: 0.5 } }',
             lambda: [normal(3, 2, 2), np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), normal(2, 3)],
             {"check_bottoms": [0, 2]}),
    "LSTMUnit": ('type: "LSTMUnit"', lambda: [normal(1, 3, 2), normal(1, 3, 8), np.array([[1.0, 0.0, 1.0]])],
                 {"check_bottoms": [0, 1], "num_tops": 2}),
    "Log": ('type: "Log" log_param { base: 3 scale: 0.5 shift: 4 }', lambda: [normal(2, 3)], {}),
    "MVN": ('type: "MVN"', lambda: [normal(2, 3, 4, 4)], {}),
    "MultinomialLogisticLoss": ('type: "MultinomialLogisticLoss"',
                                lambda: [0.2 + 0.6 * RNG.random((4, 5)), labels(4, 5)], {"check_bottoms": [0]}),
    "Parameter": ('type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }', lambda: [], {}),
    "PReLU": ('type: "PReLU"', lambda: [away_from(normal(2, 3, 4))], {}),
    "Pooling": ('type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }',
                lambda: [distinct(2, 2, 5, 5)], {}),
    "Power": ('type: "Power" power_param { power: 3 scale: 0.7 shift: 0.2 }', lambda: [normal(2, 3)], {}),
    "Python": ('type: "Python" python_param { module: "pylayers" layer: "ScaleShift" param_str: "{\\"scale\\": 1.5}" }',
               lambda: [normal(2, 3, 4)], {}),       # tests/pylayers.py: y = w x + b
    "RNN": ('type: "RNN" recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
            'bias_filler { type: "gaussian" std: 0.5 } }',
            lambda: [normal(3, 2, 2), np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]), normal(2, 3)],
            {"check_bottoms": [0, 2]}),
    "ReLU": ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda: [away_from(normal(2, 3, 4))], {}),
    "Reduction": ('type: "Reduction" reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }',
                  lambda: [normal(2, 3, 4)], {}),
    "Reshape": ('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', lambda: [normal(2, 3, 4)], {}),
    "Scale": ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
              lambda: [normal(2, 3, 2, 2)], {}),
    "SPP": ('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }',
            lambda: [distinct(2, 2, 6, 7)], {}),
    "Sigmoid": ('type: "Sigmoid"', lambda: [normal(2, 3, 4)], {}),
    "SigmoidCrossEntropyLoss": ('type: "SigmoidCrossEntropyLoss"', lambda: [normal(3, 4), RNG.random((3, 4))],
                                {"check_bottoms": [0]}),
    "Silence": ('type: "Silence"', lambda: [normal(2, 3)], {"num_tops": 0}),
    "Slice": ('type: "Slice" slice_param { axis: 1 slice_point: 1 }', lambda: [normal(2, 3, 2)], {"num_tops": 2}),
    "Softmax": ('type: "Softmax"', lambda: [normal(2, 4, 3)], {}),
    "SoftmaxWithLoss": ('type: "SoftmaxWithLoss"', lambda: [normal(4, 5), labels(4, 5)], {"check_bottoms": [0]}),
    "Split": ('type: "Split"', lambda: [normal(2, 3)], {"num_tops": 3}),
    "Swish": ('type: "Swish" swish_param { beta: 1.5 }', lambda: [normal(2, 3, 4)], {}),
    "TanH": ('type: "TanH"', lambda: [normal(2, 3, 4)], {}),
    "Tile": ('type: "Tile" tile_param { axis: 1 tiles: 3 }', lambda: [normal(2, 2, 3)], {}),
}

# Types with a backward that has nothing to check: sources (no bottoms), sinks (no tops).
NO_INPUTS = {"Data", "DummyData", "HDF5Data", "ImageData", "Input", "MemoryData"}
NO_OUTPUTS = {"HDF5Output"}


def test_every_layer_type_with_a_backward_is_covered():
    with_backward = {name for name, cls in LAYER_TYPES.items() if cls.has_backward}
    missing = sorted(with_backward - NO_INPUTS - NO_OUTPUTS - set(CASES))
    assert not missing, f"no finite-difference check for: {missing}"


@pytest.mark.parametrize("type_name", sorted(CASES))
def test_finite_differences(type_name):
    if type_name not in LAYER_TYPES:
        pytest.fail(f"layer type {type_name} is not registered")
    spec, bottoms, kwargs = CASES[type_name]
    check_gradient(spec, bottoms(), **kwargs)
