"""Edge cases of the neuron layers against Caffe 1.0's CPU code, with hand-computed values.

In place (top == bottom) Caffe's Power and Log backward passes write their local derivative
f'(y) into the shared gradient array before multiplying by the top gradient, which is that same
array: the result is f'(y)^2 whatever the top gradient was (power 1: diff_scale^2). Other layers
read the top gradient element by element before writing, so they only see y for x.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from layer_check import setup

F32, F64 = np.float32, np.float64


def backward_in_place(spec, x, dy, dtype):
    layer, bottoms, tops = setup(spec, [x], in_place=True, dtype=dtype)
    layer.forward(bottoms, tops)
    y = bottoms[0].data.copy()
    tops[0].diff = np.array(dy, dtype)
    layer.backward(tops, [True], bottoms)
    return y, bottoms[0].diff.copy()


def power_spec(power, scale, shift):
    return f'type: "Power" power_param {{ power: {power} scale: {scale} shift: {shift} }}'


# --------------------------------------------------------------------------- Power in place
def test_power_two_in_place_squares_the_local_derivative():
    # y = (1 + 0.5 x)^2; Caffe reads y for x: d = 2 * 0.5 * (0.5 * y + 1), then d * d
    x = np.array([1, 2, -1, -2], F32)
    y, dx = backward_in_place(power_spec(2, 0.5, 1), x, [10, 20, 30, 40], F32)
    np.testing.assert_array_equal(y, [2.25, 4, 0.25, 0])
    np.testing.assert_array_equal(dx, [2.125 ** 2, 9, 1.125 ** 2, 1])


def test_power_one_in_place_gives_diff_scale_squared():
    # caffe_set(bottom_diff, diff_scale) overwrites the top gradient, then the product squares it
    y, dx = backward_in_place(power_spec(1, 3, 1), np.array([1, -2, 0.5], F32), [5, -7, 11], F32)
    np.testing.assert_array_equal(y, [4, -5, 2.5])
    np.testing.assert_array_equal(dx, [9, 9, 9])


def test_power_general_branch_in_place():
    # y = sqrt(1 + 2 x) = 1, 2, 3; local d = 1 * y / (2 y + 1) read from y, then d * d
    y, dx = backward_in_place(power_spec(0.5, 2, 1), np.array([0, 1.5, 4], F64), [3, 4, 5], F64)
    np.testing.assert_allclose(y, [1, 2, 3], rtol=1e-15)
    np.testing.assert_allclose(dx, [1 / 9, 4 / 25, 9 / 49], rtol=1e-15)


def test_power_shift_zero_branch_in_place():
    # d = power * y / x with x = y: power (NaN where y = 0), then squared
    with np.errstate(invalid="ignore"):
        y, dx = backward_in_place(power_spec(3, 1, 0), np.array([1, 2, 0], F32), [2, 3, 4], F32)
    np.testing.assert_array_equal(y, [1, 8, 0])
    np.testing.assert_array_equal(dx, [9, 9, np.nan])


def test_power_constant_in_place_gradient_is_zero():
    _, dx = backward_in_place(power_spec(0, 2, 1), np.array([1, 2], F32), [np.nan, 3], F32)
    np.testing.assert_array_equal(dx, [0, 0])


# --------------------------------------------------------------------------- Log in place
def test_log_in_place_squares_the_local_derivative():
    x = np.array([1, math.e, math.e ** 2], F64)
    with np.errstate(divide="ignore"):
        y, dx = backward_in_place('type: "Log"', x, [7, 8, 9], F64)
    np.testing.assert_allclose(y, [0, 1, 2], atol=1e-15)
    np.testing.assert_allclose(dx, [np.inf, 1, 0.25], rtol=1e-15)


def test_log_in_place_with_base_scale_shift():
    # y = log2(1 + 0.5 x) = 1, 2; d = (0.5 / ln 2) / (0.5 y + 1) read from y, then d * d
    y, dx = backward_in_place('type: "Log" log_param { base: 2 scale: 0.5 shift: 1 }',
                              np.array([2, 6], F64), [-3, 5], F64)
    np.testing.assert_allclose(y, [1, 2], rtol=1e-15)
    d = np.array([1 / 1.5, 1 / 2]) * (0.5 / math.log(2))
    np.testing.assert_allclose(dx, d * d, rtol=1e-15)


# --------------------------------------------------------------------------- already matching
@pytest.mark.parametrize("spec", ['type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }',
                                  'type: "Sigmoid"', 'type: "TanH"', 'type: "ELU" elu_param { alpha: 0.5 }'])
def test_in_place_backward_still_multiplies_by_the_top_gradient(spec):
    # these read dy before writing dx (Caffe's per-element loops / caffe_mul of y and dy)
    x = np.array([-1.5, -0.2, 0.3, 2.0], F64)
    dy = np.array([1.0, -2.0, 3.0, 0.5], F64)
    y, dx = backward_in_place(spec, x, dy, F64)
    _, d1 = backward_in_place(spec, x, np.ones(4), F64)
    np.testing.assert_allclose(dx, d1 * dy, rtol=1e-15)


def test_elu_negative_alpha_in_place_reads_the_output():
    # alpha < 0 makes y > 0 for x < 0: in place Caffe's (bottom > 0) test then passes dy through
    x = np.array([-1.0, 2.0], F64)
    y, dx = backward_in_place('type: "ELU" elu_param { alpha: -0.5 }', x, [3.0, 4.0], F64)
    np.testing.assert_allclose(y, [-0.5 * (math.exp(-1) - 1), 2.0], rtol=1e-15)
    np.testing.assert_array_equal(dx, [3.0, 4.0])
