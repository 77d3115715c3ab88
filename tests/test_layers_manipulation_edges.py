"""Edge cases of the manipulation / element-wise layers checked against Caffe 1.0's CPU code:
axis rules, setup checks (one-line errors naming the layer) and backward corner cases."""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import check_forward, check_gradient, setup

from ristretto_cli.errors import RistrettoError

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape)


def raises_for_layer(spec, bottoms, match, num_tops=None, name="edge"):
    with pytest.raises(RistrettoError, match=match) as info:
        layer, b, t = setup(f'name: "{name}" {spec}', bottoms, num_tops=num_tops)
        layer.forward(b, t)
    assert info.value.layer == name


# ----------------------------------------------------------------------------- Flatten
@pytest.mark.parametrize("param, want", [
    # Caffe: count(axis, end_axis + 1) is 1 when end_axis + 1 == axis, so a unit axis is inserted
    ("axis: 2 end_axis: 1", (2, 3, 1, 4)),
    ("axis: 1 end_axis: 0", (2, 1, 3, 4)),
    ("axis: -1 end_axis: -2", (2, 3, 1, 4)),
    ("axis: 0 end_axis: -1", (24,)),
    ("axis: -2", (2, 12)),
    ("axis: 1 end_axis: 1", (2, 3, 4)),
])
def test_flatten_axis_rules(param, want):
    x = rand(2, 3, 4)
    spec = f'type: "Flatten" flatten_param {{ {param} }}'
    check_forward(spec, [x], [x.reshape(want)])
    check_gradient(spec, [x])


@pytest.mark.parametrize("param, match", [
    ("axis: 2 end_axis: 0", "before axis"),      # count(2, 1): CHECK_LE(start, end) fails
    ("axis: 3", "out of range"),
    ("axis: 0 end_axis: -4", "out of range"),
])
def test_flatten_bad_axes(param, match):
    raises_for_layer(f'type: "Flatten" flatten_param {{ {param} }}', [rand(2, 3, 4)], match)


# ----------------------------------------------------------------------------- Reshape
@pytest.mark.parametrize("param, want", [
    ("shape { dim: 0 dim: -1 } axis: -4", (2, 12)),           # -4 + 3 + 1 = axis 0
    ("shape { dim: 1 dim: 1 } axis: -1 num_axes: 0", (2, 3, 4, 1, 1)),  # appended at the end
    ("shape { dim: -1 } axis: 1 num_axes: -1", (2, 12)),
    ("shape { dim: 0 dim: 0 dim: -1 } axis: 1 num_axes: 2", (2, 3, 4, 1)),
    ("shape { } axis: 1 num_axes: 0", (2, 3, 4)),
])
def test_reshape_axis_rules(param, want):
    x = rand(2, 3, 4)
    spec = f'type: "Reshape" reshape_param {{ {param} }}'
    check_forward(spec, [x], [x.reshape(want)])


@pytest.mark.parametrize("param, match", [
    ("shape { dim: 0 dim: -1 } axis: -5", "out of range"),
    ("shape { dim: 2 } axis: 4", "out of range"),
    ("shape { dim: -1 } num_axes: -2", "num_axes"),
    ("shape { dim: 2 } axis: -1 num_axes: 1", "exceed"),
    ("shape { dim: 0 } axis: -1 num_axes: 0", "does not exist"),
    ("shape { dim: 0 dim: -1 dim: 5 }", "cannot infer"),
])
def test_reshape_bad_params(param, match):
    raises_for_layer(f'type: "Reshape" reshape_param {{ {param} }}', [rand(2, 3, 4)], match)


# ----------------------------------------------------------------------------- Slice / Concat
def test_slice_more_tops_than_the_axis_is_an_error():
    # Caffe: CHECK_LE(top.size(), bottom_slice_axis) even where the points would fit
    raises_for_layer('type: "Slice" slice_param { axis: 1 slice_point: 1 slice_point: 2 }',
                     [rand(2, 2)], "cannot slice", num_tops=3)


def test_slice_point_at_the_end_gives_an_empty_top():
    x = rand(2, 3)
    check_forward('type: "Slice" slice_param { axis: 1 slice_point: 3 }', [x],
                  [x, np.zeros((2, 0))], num_tops=2)


@pytest.mark.parametrize("layer_type", ["Concat", "Slice"])
def test_default_axis_checked_even_for_one_blob(layer_type):
    raises_for_layer(f'type: "{layer_type}"', [rand(3)], "out of range", num_tops=1)


# ----------------------------------------------------------------------------- Crop
def test_crop_offsets_rechecked_when_the_bottom_gains_axes():
    layer, b, t = setup('name: "crop" type: "Crop" crop_param { offset: 1 offset: 2 }',
                        [rand(2, 3, 5, 5), np.zeros((2, 3, 2, 2))])
    b[0].data, b[1].data = rand(2, 3, 5, 5, 5), np.zeros((2, 3, 2, 2, 2))
    with pytest.raises(RistrettoError, match="one value or one per axis") as info:
        layer.forward(b, t)
    assert info.value.layer == "crop"


def test_crop_reference_with_more_axes_is_fine():
    x = rand(2, 3, 5)
    check_forward('type: "Crop" crop_param { axis: 1 offset: 1 }', [x, np.zeros((2, 2, 3, 7))],
                  [x[:, 1:3, 1:4]])


# ----------------------------------------------------------------------------- Eltwise
def test_eltwise_max_takes_coefficients_and_ignores_them():
    a, b = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    check_forward('type: "Eltwise" eltwise_param { operation: MAX coeff: 2 coeff: 3 }', [a, b],
                  [[1.0, 3.0]])


def test_eltwise_in_place_backward_follows_caffe():
    # In place, bottom 0's diff is the top diff: Caffe overwrites it first, and the later
    # bottoms see the overwritten values (SUM: dx1 = c1 * c0 * dy).
    a, b = np.array([5.0, -1.0]), np.array([2.0, -3.0])
    layer, bb, t = setup('type: "Eltwise" eltwise_param { coeff: 2 coeff: 3 }', [a, b])
    layer.setup(bb, [bb[0]])
    layer.forward(bb, [bb[0]])
    bb[0].diff = np.array([1.0, 10.0])
    layer.backward([bb[0]], [True, True], bb)
    np.testing.assert_array_equal(bb[0].diff, [2.0, 20.0])
    np.testing.assert_array_equal(bb[1].diff, [6.0, 60.0])


def test_eltwise_prod_unstable_backward_divides_the_top():
    a, b, c = np.array([2.0, -4.0]), np.array([3.0, 0.5]), np.array([-1.0, 8.0])
    layer, bb, t = setup('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }',
                         [a, b, c])
    layer.forward(bb, t)
    dy = np.array([0.5, -2.0])
    t[0].diff = dy
    layer.backward(t, [True, True, True], bb)
    y = a * b * c
    for x, blob in zip((a, b, c), bb):
        np.testing.assert_allclose(blob.diff, y / x * dy, rtol=1e-15)


# ----------------------------------------------------------------------------- Reduction
@pytest.mark.parametrize("op, want", [
    # x = [[-2, 0, 1], [3, -1, 0]], coeff -2, dy = [1, 0.5]
    ("SUM", [[-2, -2, -2], [-1, -1, -1]]),
    ("MEAN", [[-2 / 3] * 3, [-1 / 3] * 3]),
    ("ASUM", [[2, 0, -2], [-1, 1, 0]]),               # sign(0) = 0
    ("SUMSQ", [[8, 0, -4], [-6, 2, 0]]),
])
def test_reduction_backward_by_hand(op, want):
    x = np.array([[-2.0, 0.0, 1.0], [3.0, -1.0, 0.0]])
    layer, b, t = setup(f'type: "Reduction" reduction_param {{ operation: {op} axis: -1 coeff: -2 }}',
                        [x])
    layer.forward(b, t)
    assert t[0].shape == (2,)
    t[0].diff = np.array([1.0, 0.5])
    layer.backward(t, [True], b)
    np.testing.assert_allclose(b[0].diff, want, rtol=1e-12)


# ----------------------------------------------------------------------------- Embed
def test_embed_truncates_toward_zero_and_adds_the_bias():
    p = ('type: "Embed" embed_param { num_output: 2 input_dim: 3 '
         'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } }')
    layer, b, t = setup(p, [np.array([-0.5, 2.9])])   # static_cast<int>: 0 and 2
    layer.forward(b, t)
    w = layer.blobs[0].data
    np.testing.assert_allclose(t[0].data, w[[0, 2]] + 0.5, rtol=1e-6)
    t[0].diff = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    layer.backward(t, [False], b)
    np.testing.assert_array_equal(layer.blobs[0].diff, [[1, 2], [0, 0], [3, 4]])
    np.testing.assert_array_equal(layer.blobs[1].diff, [4, 6])


@pytest.mark.parametrize("v", [3.0, -1.0, np.inf, np.nan])
def test_embed_out_of_range_inputs(v):
    raises_for_layer('type: "Embed" embed_param { num_output: 2 input_dim: 3 }',
                     [np.array([1.0, v])], "not an index")


# ----------------------------------------------------------------------------- Silence / Split
def test_silence_zeroes_every_propagated_bottom():
    layer, b, t = setup('type: "Silence"', [rand(2, 2), rand(3), rand(1)], num_tops=0)
    layer.forward(b, t)
    for blob in b:
        blob.diff = np.ones(blob.shape)
    layer.backward(t, [True, False, True], b)
    np.testing.assert_array_equal(b[0].diff, 0)
    np.testing.assert_array_equal(b[1].diff, 1)
    np.testing.assert_array_equal(b[2].diff, 0)


def test_split_one_top_copies_the_gradient():
    x = rand(2, 3)
    layer, b, t = setup('type: "Split"', [x], num_tops=1)
    layer.forward(b, t)
    t[0].diff = np.full((2, 3), 4.0)
    layer.backward(t, [True], b)
    np.testing.assert_array_equal(b[0].diff, 4.0)
    assert b[0].diff is not t[0].diff
