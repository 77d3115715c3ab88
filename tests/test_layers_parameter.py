"""Parameter: a learnable blob as a top. Shapes and errors; the top aliases the parameter's
values; in a net, the gradient that reaches the top ends up in the parameter's diff, where the
solver finds it (also with iter_size and with a parameter shared by name)."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import check_gradient, forward, setup
from solver_support import solver_param

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import array_to_blob
from ristretto_cli.net import TRAIN, Net
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import Solver

SPEC = 'type: "Parameter" parameter_param { shape { dim: 2 dim: 3 } }'


def build(text: str, phase=TRAIN) -> Net:
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase)


def test_one_zero_blob_of_the_given_shape_and_no_bottoms():
    layer, bottoms, tops = setup(SPEC, [])
    assert len(layer.blobs) == 1 and layer.blobs[0].shape == (2, 3)
    assert not layer.blobs[0].data.any()        # no filler: zeros until weights are loaded
    assert tops[0].shape == (2, 3)
    (top,) = forward('type: "Parameter" parameter_param { shape { dim: 4 } }', [])
    np.testing.assert_array_equal(top, np.zeros(4))


def test_no_shape_gives_a_scalar():
    layer, _, tops = setup('type: "Parameter"', [])
    assert layer.blobs[0].shape == () and tops[0].shape == ()


def test_top_aliases_the_parameter_values():
    layer, bottoms, tops = setup(SPEC, [])
    layer.blobs[0].data[...] = np.arange(6).reshape(2, 3)
    layer.forward(bottoms, tops)
    assert tops[0].data is layer.blobs[0].data
    layer.blobs[0].data += 1            # the solver updates in place: the top sees it
    np.testing.assert_array_equal(tops[0].data, np.arange(1, 7).reshape(2, 3))
    tops[0].data[0, 0] = -5             # and an in-place layer on the top writes the parameter
    assert layer.blobs[0].data[0, 0] == -5


def test_backward_adds_the_top_gradient_into_the_parameter_gradient():
    layer, bottoms, tops = setup(SPEC, [])
    layer.forward(bottoms, tops)
    tops[0].diff = np.full((2, 3), 0.5, np.float32)
    layer.backward(tops, [], bottoms)
    layer.backward(tops, [], bottoms)
    np.testing.assert_array_equal(layer.blobs[0].diff, np.ones((2, 3)))


def test_gradient():
    check_gradient(SPEC, [])


def test_given_blob_of_the_same_count_is_viewed_in_the_given_shape():
    param = text_format.Parse(SPEC, caffe_pb2.LayerParameter(name="p"))
    param.blobs.add().CopyFrom(array_to_blob(np.arange(6, dtype=np.float32)))
    layer, bottoms, tops = setup(param, [])
    layer.forward(bottoms, tops)
    assert layer.blobs[0].shape == (6,)
    np.testing.assert_array_equal(tops[0].data, np.arange(6).reshape(2, 3))
    assert np.shares_memory(tops[0].data, layer.blobs[0].data)


def test_given_blob_of_another_count_is_an_error():
    param = text_format.Parse(SPEC, caffe_pb2.LayerParameter(name="p"))
    param.blobs.add().CopyFrom(array_to_blob(np.zeros(5, np.float32)))
    with pytest.raises(RistrettoError, match="has 5 values.*needs 6") as err:
        setup(param, [])
    assert err.value.layer == "p"


@pytest.mark.parametrize("spec, match", [
    ('type: "Parameter" parameter_param { shape { dim: 2 dim: -1 } }', "negative dimension"),
    ('type: "Parameter" bottom: "x"', "takes 0 bottom"),
])
def test_errors(spec, match):
    bottoms = [np.zeros(2)] if "bottom" in spec else []
    with pytest.raises(RistrettoError, match=match):
        setup(spec, bottoms)


NET = """
layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 2 dim: 3 } } }
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "x" top: "loss" }
"""
X = np.arange(6, dtype=np.float32).reshape(2, 3)
P0 = np.array([[1, -1, 2], [0.5, 3, -2]], np.float32)


def test_in_a_net_the_loss_gradient_reaches_the_parameter_diff():
    net = build(NET)
    assert net.layer_need_backward[0]
    assert [p.display_name for p in net.learnable_params] == ["p[0]"]
    net.blobs["x"].data[...] = X
    net.layers[0].blobs[0].data[...] = P0
    net.clear_param_diffs()
    loss = net.forward_backward()
    assert loss == pytest.approx(np.sum((P0 - X) ** 2) / 4)
    np.testing.assert_allclose(net.learnable_params[0].blob.diff, (P0 - X) / 2, rtol=1e-6)


def test_lr_mult_zero_leaves_the_parameter_diff_alone():
    net = build(NET.replace('top: "p" ', 'top: "p" param { lr_mult: 0 } '))
    assert not net.layer_need_backward[0]
    net.blobs["x"].data[...] = X
    net.clear_param_diffs()
    net.forward_backward()
    assert not net.layers[0].blobs[0].diff.any()


@pytest.mark.parametrize("iter_size", [1, 2])
def test_a_solver_step_updates_the_parameter(iter_size):
    param = solver_param(f"base_lr: 0.5 lr_policy: \"fixed\" max_iter: 1 iter_size: {iter_size} "
                         "snapshot_after_train: false random_seed: 1", net=NET)
    solver = Solver(param, show_progress=False)
    solver.net.blobs["x"].data[...] = X
    solver.net.layers[0].blobs[0].data[...] = P0
    solver.solve()
    # iter_size passes of the same gradient, averaged: one plain SGD step
    want = P0 - np.float32(0.5) * (P0 - X) / 2
    np.testing.assert_allclose(solver.net.layers[0].blobs[0].data, want, rtol=1e-6)


def test_two_layers_sharing_a_named_parameter_add_their_gradients():
    net = build("""
    layer { name: "a" type: "Parameter" top: "a" param { name: "w" } parameter_param { shape { dim: 3 } } }
    layer { name: "b" type: "Parameter" top: "b" param { name: "w" } parameter_param { shape { dim: 3 } } }
    layer { name: "ab" type: "Eltwise" bottom: "a" bottom: "b" top: "ab"
            eltwise_param { operation: SUM coeff: 2 coeff: 3 } }
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "ab" bottom: "x" top: "loss" }
    """)
    assert net.layers[0].blobs[0] is net.layers[1].blobs[0]
    assert len(net.learnable_params) == 1
    w = np.array([1, 2, 3], np.float32)
    x = np.array([0, 1, -1], np.float32)
    net.layers[0].blobs[0].data[...] = w
    net.blobs["x"].data[...] = x
    net.clear_param_diffs()
    net.forward_backward()
    # y = 5w; dL/dy = (y - x) / N with N = 3 items; dL/dw = (2 + 3) dL/dy
    np.testing.assert_allclose(net.learnable_params[0].blob.diff, 5 * (5 * w - x) / 3, rtol=1e-6)
