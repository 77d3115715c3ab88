"""BatchReindex and Filter: items picked along the first axis. Forward against hand-written
selections, backward (scattered and summed gradients, none for the index or selector), shape
rules and Caffe's checks, and both layers inside a net, where Filter's top changes size with
the selector at every forward."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import check_forward, check_gradient, forward, make_layer, setup

from ristretto_cli.blob import Blob
from ristretto_cli.errors import RistrettoError
from ristretto_cli.net import TRAIN, Net
from ristretto_cli.proto import caffe_pb2

RNG = np.random.default_rng(7)


def rand(*shape):
    return RNG.standard_normal(shape)


def build(text: str, phase=TRAIN) -> Net:
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def raises(spec, bottoms, match, num_tops=None, propagate=None):
    with pytest.raises(RistrettoError, match=match) as err:
        layer, b, t = setup(spec, bottoms, num_tops=num_tops)
        layer.forward(b, t)
        if propagate is not None:
            layer.backward(t, propagate, b)
    assert err.value.layer == "layer"


# ----------------------------------------------------------------------------- BatchReindex
REINDEX = 'type: "BatchReindex"'


def test_reindex_gathers_items_in_index_order_with_repeats():
    x = np.arange(12.0).reshape(3, 2, 2)
    check_forward(REINDEX, [x, [2, 0, 2, 1]], [np.stack([x[2], x[0], x[2], x[1]])])


def test_reindex_indices_are_truncated_floats():
    x = np.arange(6.0).reshape(3, 2)
    check_forward(REINDEX, [x, [1.9, 0.2, 2.5]], [np.array([[2, 3], [0, 1], [4, 5]])])


def test_reindex_empty_index_gives_an_empty_top():
    (top,) = forward(REINDEX, [rand(3, 4), np.zeros(0)])
    assert top.shape == (0, 4)


def test_reindex_backward_sums_repeated_items_and_zeroes_unused_ones():
    x = rand(4, 3)
    layer, b, t = setup(REINDEX, [x, [3, 1, 3, 3]])
    layer.forward(b, t)
    dy = np.arange(12.0).reshape(4, 3)
    t[0].diff = dy
    layer.backward(t, [True, False], b)
    want = np.zeros((4, 3))
    want[1] = dy[1]
    want[3] = dy[0] + dy[2] + dy[3]
    np.testing.assert_array_equal(b[0].diff, want)


def test_reindex_gradient():
    check_gradient(REINDEX, [rand(3, 2, 2), [2, 0, 2, 1, 1]], check_bottoms=[0])


@pytest.mark.parametrize("index, match", [
    ([0, -1], "negative"),
    ([0, -0.5], "negative"),            # compared as a float before truncation
    ([0, np.nan], "negative"),
    ([3, 0], "greater than batch size"),
    (np.zeros((2, 1)), "must have 1 axis"),
])
def test_reindex_index_checks(index, match):
    raises(REINDEX, [rand(3, 2), index], match)


def test_reindex_in_place_is_an_error():
    layer = make_layer(REINDEX)
    data = Blob(data=np.zeros((2, 2), np.float32))
    with pytest.raises(RistrettoError, match="in-place"):
        layer.setup([data, Blob(data=np.zeros(2, np.float32))], [data])


def test_reindex_no_gradient_to_the_index():
    raises(REINDEX, [rand(3, 2), [0, 1]], "cannot backpropagate to the index", propagate=[True, True])


# ----------------------------------------------------------------------------- Filter
FILTER = 'type: "Filter"'


def test_filter_keeps_selected_items_of_every_bottom():
    # Caffe's own test case: 4 items, selector 0 1 1 0
    data, labels = rand(4, 3, 6, 4), np.array([3.0, 1, 4, 0]).reshape(4, 1, 1, 1)
    selector = np.array([0.0, 1, 1, 0]).reshape(4, 1, 1, 1)
    check_forward(FILTER, [data, labels, selector], [data[1:3], labels[1:3]], num_tops=2)


def test_filter_setup_shape_is_the_full_item_count():
    layer, b, t = setup(FILTER, [rand(4, 3), np.array([0.0, 1, 0, 0])], num_tops=1)
    assert t[0].shape == (4, 3)
    layer.forward(b, t)
    assert t[0].shape == (1, 3)
    b[1].data[...] = [1, 1, 0, 1]
    layer.forward(b, t)
    assert t[0].shape == (3, 3)
    np.testing.assert_array_equal(t[0].data, b[0].data[[0, 1, 3]])


def test_filter_nonzero_means_selected_nan_included():
    x = rand(4, 2)
    check_forward(FILTER, [x, [-0.5, 0, np.nan, 2]], [x[[0, 2, 3]]], num_tops=1)


def test_filter_nothing_selected():
    layer, b, t = setup(FILTER, [rand(3, 2), np.zeros(3)], num_tops=1)
    layer.forward(b, t)
    assert t[0].shape == (0, 2)
    t[0].diff = np.zeros((0, 2))
    layer.backward(t, [True, False], b)
    np.testing.assert_array_equal(b[0].diff, np.zeros((3, 2)))


def test_filter_backward_scatters_into_kept_items():
    layer, b, t = setup(FILTER, [rand(4, 2), rand(4, 3), [1, 0, 0, 1]], num_tops=2)
    layer.forward(b, t)
    t[0].diff = np.array([[1.0, 2], [3, 4]])
    t[1].diff = np.full((2, 3), 7.0)
    layer.backward(t, [True, False, False], b)
    np.testing.assert_array_equal(b[0].diff, [[1, 2], [0, 0], [0, 0], [3, 4]])
    layer.backward(t, [False, True, False], b)
    np.testing.assert_array_equal(b[1].diff, [[7, 7, 7], [0, 0, 0], [0, 0, 0], [7, 7, 7]])


def test_filter_gradient():
    check_gradient(FILTER, [rand(5, 2, 3), rand(5, 4), [1, 0, 1, 1, 0]], num_tops=2, check_bottoms=[0, 1])


def test_filter_in_place_forward_and_no_backward():
    layer, b, _ = setup(FILTER, [np.arange(8.0).reshape(4, 2), [0, 1, 0, 1]], num_tops=1)
    layer.forward(b, [b[0]])
    np.testing.assert_array_equal(b[0].data, [[2, 3], [6, 7]])
    with pytest.raises(RistrettoError, match="in place has no backward"):
        layer.backward([b[0]], [True, False], b)


@pytest.mark.parametrize("bottoms, num_tops, match", [
    ([rand(4, 2), np.ones((4, 2))], 1, "singletons"),
    ([rand(4, 2), np.ones((3, 1))], 1, "same 0th dimension"),
    ([rand(4, 2), rand(3, 2), np.ones(4)], 2, "same 0th dimension"),
    ([rand(4, 2), np.ones(4)], 2, "one top per filtered bottom"),
])
def test_filter_checks(bottoms, num_tops, match):
    raises(FILTER, bottoms, match, num_tops=num_tops)


def test_filter_no_gradient_to_the_selector():
    raises(FILTER, [rand(4, 2), np.ones(4)], "cannot backpropagate to the selector", num_tops=1,
           propagate=[True, True])


# ----------------------------------------------------------------------------- in a net
FILTER_NET = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 4 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 bias_term: false weight_filler { type: "gaussian" } } }
layer { name: "f" type: "Filter" bottom: "y" bottom: "t" bottom: "s" top: "yf" top: "tf" }
layer { name: "sq" type: "Power" bottom: "yf" top: "z" power_param { scale: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "tf" top: "loss" }
"""


def test_filter_in_a_net_changes_the_next_layers_shape_and_gradient():
    net = build(FILTER_NET)
    assert net.blobs["yf"].shape == (4, 2)          # set-up: every item
    x, t = rand(4, 3).astype(np.float32), rand(4, 2).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.blobs["t"].data[...] = t
    w = net.layers[3].blobs[0].data
    for selector in ([1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]):
        kept = np.flatnonzero(selector)
        net.blobs["s"].data[...] = selector
        net.clear_param_diffs()
        loss = net.forward_backward()
        assert net.blobs["yf"].shape == net.blobs["z"].shape == (len(kept), 2)
        r = 2 * (x[kept] @ w.T) - t[kept]
        assert loss == pytest.approx(np.sum(r * r) / (2 * len(kept)), rel=1e-5)
        # dL/dW = sum over kept items of 2 r x^T / K: the other items get no gradient
        np.testing.assert_allclose(net.layers[3].blobs[0].diff, 2 * r.T @ x[kept] / len(kept),
                                   rtol=1e-5, atol=1e-6)


def test_force_backward_reaches_the_selector_and_fails_as_in_caffe():
    net = build("force_backward: true\n" + FILTER_NET)
    net.blobs["s"].data[...] = [1, 0, 0, 1]
    net.forward()
    with pytest.raises(RistrettoError, match="selector") as err:
        net.backward()
    assert err.value.layer == "f"


def test_batch_reindex_in_a_net_gathers_a_learned_table():
    net = build("""
    layer { name: "table" type: "Parameter" top: "table" parameter_param { shape { dim: 3 dim: 2 } } }
    layer { name: "i" type: "Input" top: "i" input_param { shape { dim: 4 } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 2 } } }
    layer { name: "pick" type: "BatchReindex" bottom: "table" bottom: "i" top: "rows" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "rows" bottom: "t" top: "loss" }
    """)
    table = np.array([[1, 2], [3, 4], [5, 6]], np.float32)
    t = rand(4, 2).astype(np.float32)
    net.layers[0].blobs[0].data[...] = table
    net.blobs["i"].data[...] = [2, 0, 2, 1]
    net.blobs["t"].data[...] = t
    net.clear_param_diffs()
    net.forward_backward()
    np.testing.assert_array_equal(net.blobs["rows"].data, table[[2, 0, 2, 1]])
    r = (table[[2, 0, 2, 1]] - t) / 4
    want = np.stack([r[1], r[3], r[0] + r[2]])
    np.testing.assert_allclose(net.layers[0].blobs[0].diff, want, rtol=1e-6)

