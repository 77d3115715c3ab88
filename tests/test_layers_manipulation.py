"""Blob-manipulation layers (Split, Flatten, Reshape, Silence, Concat, Slice, Tile, Crop) and the
element-wise / reduction / lookup layers (Eltwise, Reduction, Embed): forward against hand
computations, backward against finite differences, shape rules, aliasing."""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import check_forward, check_gradient, forward, make_layer, setup

from ristretto_cli.blob import Blob
from ristretto_cli.errors import RistrettoError

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape)


def distinct(*shape, gap=0.1):
    """Values at least ``gap`` apart (no max/abs kinks within a finite-difference step)."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) - n / 2 + 0.5).reshape(shape) * gap


def raises_for_layer(spec, bottoms, match, num_tops=None, name="layer"):
    with pytest.raises(RistrettoError, match=match) as info:
        layer, b, t = setup(spec, bottoms, num_tops=num_tops)
        layer.forward(b, t)
    assert info.value.layer == name
    assert f"layer '{name}'" in str(info.value)


# ----------------------------------------------------------------------------- Split
def test_split_tops_alias_bottom_and_backward_sums():
    x = rand(2, 3)
    layer, b, t = setup('type: "Split"', [x], num_tops=3)
    layer.forward(b, t)
    assert all(top.data is b[0].data for top in t)
    for k, top in enumerate(t):
        top.diff = np.full(x.shape, k + 1.0)
    layer.backward(t, [True], b)
    np.testing.assert_array_equal(b[0].diff, np.full(x.shape, 6.0))


def test_split_in_place_is_an_error():
    layer = make_layer('type: "Split"')
    blob = Blob(data=np.zeros((2, 2), np.float32))
    with pytest.raises(RistrettoError, match="in-place"):
        layer.setup([blob], [Blob(), blob])


# ----------------------------------------------------------------------------- Flatten
def test_flatten_views_and_gradient():
    x = rand(2, 3, 2, 2)
    layer, b, t = setup('type: "Flatten" flatten_param { axis: 1 end_axis: 2 }', [x])
    layer.forward(b, t)
    assert t[0].shape == (2, 6, 2)
    assert np.shares_memory(t[0].data, b[0].data)
    check_gradient('type: "Flatten"', [x])


def test_flatten_end_before_start_is_an_error():
    # end_axis == axis - 1 inserts a unit axis in Caffe; one further back fails count()'s CHECK
    raises_for_layer('type: "Flatten" flatten_param { axis: 2 end_axis: 0 }', [rand(2, 3, 4)],
                     "before axis")


# ----------------------------------------------------------------------------- Reshape
@pytest.mark.parametrize("shape_param, want", [
    ("shape { dim: 0 dim: -1 }", (2, 12)),
    ("shape { dim: 4 dim: 0 dim: 2 } axis: 0", (4, 3, 2)),
    ("shape { dim: 2 dim: 2 } axis: 2 num_axes: 1", (2, 3, 2, 2)),
    ("shape { dim: -1 } axis: -2", (2, 3, 4)),
    ("shape { dim: 1 } axis: 1 num_axes: 0", (2, 1, 3, 4)),
])
def test_reshape_shapes(shape_param, want):
    x = rand(2, 3, 4)
    layer, b, t = setup(f'type: "Reshape" reshape_param {{ {shape_param} }}', [x])
    layer.forward(b, t)
    assert t[0].shape == want
    assert np.shares_memory(t[0].data, b[0].data)
    np.testing.assert_array_equal(t[0].data.ravel(), x.ravel())


def test_reshape_gradient():
    check_gradient('type: "Reshape" reshape_param { shape { dim: -1 dim: 2 } }', [rand(2, 3, 2)])


@pytest.mark.parametrize("shape_param, match", [
    ("shape { dim: -1 dim: -1 }", "at most one -1"),
    ("shape { dim: 5 dim: -1 }", "cannot infer"),
    ("shape { dim: 7 dim: 2 }", "element count"),
    ("shape { dim: 0 dim: 0 dim: 0 dim: 0 }", "does not exist"),
])
def test_reshape_errors_name_the_layer(shape_param, match):
    raises_for_layer(f'name: "rs" type: "Reshape" reshape_param {{ {shape_param} }}',
                     [rand(2, 3, 4)], match, name="rs")


# ----------------------------------------------------------------------------- Silence
def test_silence_zeroes_gradients():
    layer, b, t = setup('type: "Silence"', [rand(2, 2), rand(3)], num_tops=0)
    layer.forward(b, t)
    b[0].diff = np.ones((2, 2))
    layer.backward(t, [True, False], b)
    np.testing.assert_array_equal(b[0].diff, 0)


# ----------------------------------------------------------------------------- Concat
@pytest.mark.parametrize("param, axis", [
    ("", 1), ("axis: 0", 0), ("axis: -1", 2), ("axis: 2", 2), ("concat_dim: 0", 0), ("concat_dim: 2", 2),
])
def test_concat_forward_and_gradient(param, axis):
    shapes = [[2, 3, 4], [2, 3, 4]]
    for s, n in zip(shapes, (1, 2)):
        s[axis] = n
    a, b = rand(*shapes[0]), rand(*shapes[1])
    spec = f'type: "Concat" concat_param {{ {param} }}'
    check_forward(spec, [a, b], [np.concatenate([a, b], axis=axis)])
    check_gradient(spec, [a, b])


def test_concat_three_bottoms_backward_pieces():
    a, b, c = rand(2, 1, 2), rand(2, 2, 2), rand(2, 3, 2)
    layer, bb, t = setup('type: "Concat"', [a, b, c])
    layer.forward(bb, t)
    t[0].diff = np.arange(t[0].data.size, dtype=np.float64).reshape(t[0].shape)
    layer.backward(t, [True, False, True], bb)
    np.testing.assert_array_equal(bb[0].diff, t[0].diff[:, :1])
    np.testing.assert_array_equal(bb[2].diff, t[0].diff[:, 3:])
    assert not np.shares_memory(bb[2].diff, t[0].diff)


def test_concat_backward_reuses_the_gradient_arrays_it_made():
    """Fresh memory costs page faults on every pass: the bottoms' gradient arrays are the ones
    made on the first backward, rewritten; one that the bottom no longer holds is replaced."""
    a, b = rand(2, 2, 3), rand(2, 3, 3)
    layer, bb, t = setup('type: "Concat"', [a, b])
    layer.forward(bb, t)
    arrays = []
    for step in range(3):
        t[0].diff = rand(*t[0].shape) + step
        if step == 2:
            bb[1].diff = np.zeros(bb[1].shape)      # someone else's array now: not reused
        layer.backward(t, [True, True], bb)
        np.testing.assert_array_equal(bb[0].diff, t[0].diff[:, :2])
        np.testing.assert_array_equal(bb[1].diff, t[0].diff[:, 2:])
        arrays.append((bb[0].diff, bb[1].diff))
    assert arrays[1][0] is arrays[0][0] and arrays[1][1] is arrays[0][1]
    assert arrays[2][0] is arrays[0][0] and arrays[2][1] is not arrays[0][1]


def test_concat_single_bottom_shares_data_and_diff():
    x = rand(2, 3)
    layer, b, t = setup('type: "Concat"', [x])
    layer.forward(b, t)
    assert t[0].data is b[0].data
    t[0].diff = np.ones((2, 3))
    layer.backward(t, [True], b)
    assert b[0].diff is t[0].diff


@pytest.mark.parametrize("spec, bottoms, match", [
    ('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', [rand(2, 2), rand(2, 2)], "not both"),
    ('type: "Concat"', [rand(2, 2, 2), rand(3, 2, 2)], "same shape except"),
    ('type: "Concat"', [rand(2, 2, 2), rand(2, 2)], "same number of axes"),
    ('type: "Concat" concat_param { axis: 3 }', [rand(2, 2), rand(2, 2)], "out of range"),
    ('type: "Concat" concat_param { concat_dim: 2 }', [rand(2, 2), rand(2, 2)], "concat_dim 2 out of range"),
])
def test_concat_errors(spec, bottoms, match):
    raises_for_layer(spec, bottoms, match)


# ----------------------------------------------------------------------------- Slice
@pytest.mark.parametrize("param, axis, sizes", [
    ("axis: 1 slice_point: 1 slice_point: 4", 1, [1, 3, 2]),
    ("", 1, [2, 2, 2]),
    ("axis: 0 slice_point: 1 slice_point: 2", 0, [1, 1, 2]),
    ("axis: -1", 2, [2, 2, 2]),
    ("slice_dim: 2 slice_point: 5 slice_point: 6", 2, [5, 1, 0]),
])
def test_slice_forward_and_gradient(param, axis, sizes):
    shape = [4, 6, 6]
    shape[axis] = sum(sizes)
    x = rand(*shape)
    spec = f'type: "Slice" slice_param {{ {param} }}'
    expected = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    tops = check_forward(spec, [x], expected, num_tops=3)
    assert [t.shape[axis] for t in tops] == sizes
    check_gradient(spec, [x], num_tops=3)


def test_slice_tops_are_copies():
    x = rand(2, 4)
    layer, b, t = setup('type: "Slice" slice_param { axis: 1 }', [x], num_tops=2)
    layer.forward(b, t)
    assert not any(np.shares_memory(top.data, b[0].data) for top in t)


def test_slice_single_top_shares():
    x = rand(2, 4)
    layer, b, t = setup('type: "Slice"', [x], num_tops=1)
    layer.forward(b, t)
    assert t[0].data is b[0].data
    t[0].diff = np.ones((2, 4))
    layer.backward(t, [True], b)
    assert b[0].diff is t[0].diff


@pytest.mark.parametrize("param, num_tops, match", [
    ("slice_point: 3 slice_point: 2", 3, "strictly increasing"),
    ("slice_point: 0 slice_point: 2", 3, "strictly increasing"),
    ("slice_point: 2", 3, "once less than"),
    ("slice_point: 2 slice_point: 7", 3, "beyond"),
    ("", 4, "evenly divide"),
    ("axis: 1 slice_dim: 1", 2, "not both"),
])
def test_slice_bad_points_name_the_layer(param, num_tops, match):
    raises_for_layer(f'name: "sl" type: "Slice" slice_param {{ {param} }}', [rand(2, 6)], match,
                     num_tops=num_tops, name="sl")


# ----------------------------------------------------------------------------- Tile
@pytest.mark.parametrize("axis, tiles", [(1, 3), (0, 2), (-1, 2), (2, 1)])
def test_tile_forward_and_gradient(axis, tiles):
    x = rand(2, 3, 2)
    # the block from ``axis`` on, repeated whole: copies joined along ``axis``
    want = np.concatenate([x] * tiles, axis=axis % 3)
    spec = f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}'
    check_forward(spec, [x], [want])
    check_gradient(spec, [x])


def test_tile_example_order():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    check_forward('type: "Tile" tile_param { axis: 1 tiles: 2 }', [x], [[[1, 2, 1, 2], [3, 4, 3, 4]]])
    check_forward('type: "Tile" tile_param { axis: 0 tiles: 2 }', [x], [[[1, 2], [3, 4], [1, 2], [3, 4]]])


@pytest.mark.parametrize("param, match", [("axis: 1", "must be specified"),
                                          ("tiles: 0", "must be positive")])
def test_tile_errors(param, match):
    raises_for_layer(f'type: "Tile" tile_param {{ {param} }}', [rand(2, 2)], match)


# ----------------------------------------------------------------------------- Crop
@pytest.mark.parametrize("param, slices", [
    ("", (slice(None), slice(None), slice(0, 3), slice(0, 2))),
    ("offset: 1", (slice(None), slice(None), slice(1, 4), slice(1, 3))),
    ("offset: 1 offset: 2", (slice(None), slice(None), slice(1, 4), slice(2, 4))),
    ("axis: 1 offset: 1 offset: 0 offset: 2", (slice(None), slice(1, 3), slice(0, 3), slice(2, 4))),
    ("axis: -1 offset: 3", (slice(None), slice(None), slice(None), slice(3, 5))),
])
def test_crop_forward_and_gradient(param, slices):
    x = rand(2, 3, 5, 5)
    ref = np.zeros((2, 2, 3, 2))
    want = x[slices]
    spec = f'type: "Crop" crop_param {{ {param} }}'
    check_forward(spec, [x, ref], [want])
    check_gradient(spec, [x, ref], check_bottoms=[0])


def test_crop_backward_zero_outside():
    x = rand(1, 1, 4, 4)
    layer, b, t = setup('type: "Crop" crop_param { offset: 1 }', [x, np.zeros((1, 1, 2, 2))])
    layer.forward(b, t)
    t[0].diff = np.ones((1, 1, 2, 2))
    layer.backward(t, [True, False], b)
    want = np.zeros((1, 1, 4, 4))
    want[..., 1:3, 1:3] = 1
    np.testing.assert_array_equal(b[0].diff, want)


@pytest.mark.parametrize("param, ref_shape, match", [
    ("offset: 2", (2, 3, 4, 4), "out of bounds"),
    ("", (2, 3, 6, 4), "out of bounds"),
    ("offset: 1 offset: 1 offset: 1", (2, 3, 2, 2), "one value or one per axis"),
    ("axis: 0", (2, 3, 5), "fewer axes"),
])
def test_crop_too_large_names_the_layer(param, ref_shape, match):
    raises_for_layer(f'name: "crop" type: "Crop" crop_param {{ {param} }}',
                     [rand(2, 3, 5, 5), np.zeros(ref_shape)], match, name="crop")


# ----------------------------------------------------------------------------- Eltwise
def test_eltwise_sum_with_coeffs():
    a, b, c = rand(2, 3, 2), rand(2, 3, 2), rand(2, 3, 2)
    spec = 'type: "Eltwise" eltwise_param { operation: SUM coeff: 1.5 coeff: -0.5 coeff: 2 }'
    check_forward(spec, [a, b, c], [1.5 * a - 0.5 * b + 2 * c])
    check_gradient(spec, [a, b, c])


def test_eltwise_sum_default():
    a, b = rand(2, 3), rand(2, 3)
    check_forward('type: "Eltwise"', [a, b], [a + b])
    check_gradient('type: "Eltwise"', [a, b])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "strided rows", "strided"])
def test_eltwise_plain_sum_in_blocks_keeps_the_bits(threads, layout, monkeypatch):
    """Unit coefficients: x0 + x1 + x2 block by block, shared among the threads (rows of a
    Concat's slot, or one NumPy expression where neither layout allows blocks); the bits of
    the sum over the whole arrays."""
    from ristretto_cli import parallel
    monkeypatch.setattr(parallel, "_threads", threads)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((6, 40, 64, 64)).astype(np.float32) for _ in range(3)]
    if layout != "contiguous":   # a channel slice (Concat's slot), or a transposed view
        xs = [x[:, 5:37] if layout == "strided rows" else x.transpose(0, 1, 3, 2) for x in xs]
    layer, bottoms, tops = setup('type: "Eltwise"', xs)
    if layout != "contiguous":
        for blob, x in zip(bottoms, xs):
            blob.data = x
    layer.forward(bottoms, tops)
    expected = xs[0] + xs[1] + xs[2]
    np.testing.assert_array_equal(tops[0].data.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("stable", ["true", "false"])
def test_eltwise_prod(stable):
    a, b, c = rand(2, 3, 2), rand(2, 3, 2), rand(2, 3, 2)
    spec = f'type: "Eltwise" eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}'
    check_forward(spec, [a, b, c], [a * b * c])
    check_gradient(spec, [a, b, c])


def test_eltwise_prod_stable_gradient_with_zero_input():
    a, b = np.array([0.0, 2.0]), np.array([3.0, 5.0])
    for stable, want in (("true", [3.0, 5.0]), ("false", [np.nan, 5.0])):
        spec = f'type: "Eltwise" eltwise_param {{ operation: PROD stable_prod_grad: {stable} }}'
        layer, bb, t = setup(spec, [a, b])
        layer.forward(bb, t)
        t[0].diff = np.ones(2)
        layer.backward(t, [True, True], bb)
        np.testing.assert_array_equal(bb[0].diff, want)
        np.testing.assert_array_equal(bb[1].diff, [0.0, 2.0])


def test_eltwise_max_forward_and_gradient():
    a, b, c = distinct(3, 2, 3, 2)  # no ties anywhere
    spec = 'type: "Eltwise" eltwise_param { operation: MAX }'
    check_forward(spec, [a, b, c], [np.maximum(np.maximum(a, b), c)])
    check_gradient(spec, [a, b, c])


def test_eltwise_max_tie_rules():
    a = np.array([1.0, 1.0, 2.0, 0.0])
    b = np.array([1.0, 1.0, 0.0, 3.0])
    c = np.array([1.0, 0.0, 2.0, 3.0])
    layer, bb, t = setup('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    layer.forward(bb, t)
    np.testing.assert_array_equal(t[0].data, [1, 1, 2, 3])
    t[0].diff = np.array([10.0, 20.0, 30.0, 40.0])
    layer.backward(t, [True, True, True], bb)
    # a tie between bottoms 0 and 1 goes to 1; a later equal bottom does not take over
    np.testing.assert_array_equal(bb[0].diff, [0, 0, 30, 0])
    np.testing.assert_array_equal(bb[1].diff, [10, 20, 0, 40])
    np.testing.assert_array_equal(bb[2].diff, [0, 0, 0, 0])


def test_eltwise_in_place_follows_caffe():
    # Caffe clears the top (0 for SUM, -FLT_MAX for MAX) before reading the bottoms, so in
    # place bottom 0 drops out; PROD is unaffected.
    a, b = np.array([5.0, -1.0]), np.array([2.0, -3.0])
    cases = [("SUM", [2.0, -3.0]), ("MAX", [2.0, -3.0]), ("PROD", [10.0, 3.0])]
    for op, want in cases:
        layer, bb, t = setup(f'type: "Eltwise" eltwise_param {{ operation: {op} }}', [a, b])
        keep = bb[0].data
        layer.setup(bb, [bb[0]])
        layer.forward(bb, [bb[0]])
        assert bb[0].data is keep
        np.testing.assert_array_equal(keep, want, err_msg=op)


@pytest.mark.parametrize("spec, bottoms, match", [
    ('type: "Eltwise" eltwise_param { coeff: 1 }', [rand(2), rand(2)], "one coefficient per bottom"),
    ('type: "Eltwise" eltwise_param { operation: PROD coeff: 1 coeff: 2 }', [rand(2), rand(2)],
     "only takes coefficients"),
    ('type: "Eltwise"', [rand(2, 3), rand(3, 2)], "same shape"),
])
def test_eltwise_errors(spec, bottoms, match):
    raises_for_layer(spec, bottoms, match)


# ----------------------------------------------------------------------------- Reduction
def _reduce(op, x, axis, coeff):
    lead = x.shape[:axis]
    x2 = x.reshape(lead + (-1,))
    f = {"SUM": lambda v: v.sum(-1), "ASUM": lambda v: np.abs(v).sum(-1),
         "SUMSQ": lambda v: (v * v).sum(-1), "MEAN": lambda v: v.mean(-1)}[op]
    return coeff * f(x2)


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis, coeff", [(0, 1.0), (1, 2.0), (-1, -0.5), (2, 1.0)])
def test_reduction(op, axis, coeff):
    x = distinct(2, 3, 4)
    spec = f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}'
    (top,) = check_forward(spec, [x], [_reduce(op, x, axis % 3, coeff)])
    assert top.shape == x.shape[:axis % 3]
    check_gradient(spec, [x])


def test_reduction_default_is_sum_to_scalar():
    x = rand(2, 3)
    (top,) = check_forward('type: "Reduction"', [x], [np.array(x.sum())])
    assert top.shape == ()


# ----------------------------------------------------------------------------- Embed
EMBED = ('type: "Embed" embed_param { num_output: 3 input_dim: 5 bias_term: %s '
         'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }')


@pytest.mark.parametrize("bias", ["true", "false"])
def test_embed_forward_and_param_gradient(bias):
    idx = np.array([[0.0, 4.0, 2.0], [2.0, 2.0, 1.7]])  # 1.7 truncates to 1, repeats accumulate
    layer, b, t = setup(EMBED % bias, [idx])
    layer.forward(b, t)
    w = layer.blobs[0].data
    want = w[np.array([[0, 4, 2], [2, 2, 1]])]
    if bias == "true":
        want = want + layer.blobs[1].data
    assert t[0].shape == (2, 3, 3)
    np.testing.assert_allclose(t[0].data, want, rtol=1e-6)
    check_gradient(EMBED % bias, [idx], check_bottoms=[])


def test_embed_default_fillers_and_errors():
    layer, b, t = setup('type: "Embed" embed_param { num_output: 2 input_dim: 3 }', [np.zeros(2)])
    assert [blob.shape for blob in layer.blobs] == [(3, 2), (2,)]
    assert not layer.blobs[0].data.any()
    raises_for_layer(EMBED % "true", [np.array([5.0])], "not an index")
    raises_for_layer(EMBED % "true", [np.array([-1.0])], "not an index")
    raises_for_layer('type: "Embed" embed_param { input_dim: 3 }', [np.zeros(2)], "num_output")
    layer, b, t = setup(EMBED % "true", [np.array([1.0])])
    layer.forward(b, t)
    with pytest.raises(RistrettoError, match="backpropagate"):
        layer.backward(t, [True], b)


# ----------------------------------------------------------------------------- dtype
@pytest.mark.parametrize("spec, shapes, tops", [
    ('type: "Concat"', [(2, 2), (2, 3)], 1),
    ('type: "Slice" slice_param { axis: 1 }', [(2, 4)], 2),
    ('type: "Tile" tile_param { tiles: 2 }', [(2, 2)], 1),
    ('type: "Crop" crop_param { axis: 1 }', [(2, 4), (2, 2)], 1),
    ('type: "Eltwise" eltwise_param { operation: SUM coeff: 0.5 coeff: 2 }', [(2, 2), (2, 2)], 1),
    ('type: "Eltwise" eltwise_param { operation: MAX }', [(2, 2), (2, 2)], 1),
    ('type: "Eltwise" eltwise_param { operation: PROD }', [(2, 2), (2, 2)], 1),
    ('type: "Reduction" reduction_param { operation: MEAN axis: 1 coeff: 3 }', [(2, 2)], 1),
])
def test_float32_stays_float32(spec, shapes, tops):
    bottoms = [rand(*s).astype(np.float32) for s in shapes]
    layer, b, t = setup(spec, bottoms, num_tops=tops)
    layer.forward(b, t)
    assert all(top.data.dtype == np.float32 for top in t)
    for top in t:
        top.diff = np.ones(top.shape, np.float32)
    layer.backward(t, [True] + [False] * (len(b) - 1), b)
    assert b[0].diff.dtype == np.float32
    tops_again = forward(spec, bottoms, num_tops=tops)
    assert all(a.dtype == np.float32 for a in tops_again)
