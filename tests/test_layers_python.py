"""Python layers (type "Python"): the layer's code called as Caffe calls it, its parameter
blobs saved, loaded and trained, its errors reported on one line."""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import check_gradient, forward

from ristretto_cli import pycaffe as caffe
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import parse_text
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import Solver

SCALE_SHIFT = 'type: "Python" python_param { module: "pylayers" layer: "ScaleShift" param_str: "{\\"scale\\": 2.5}" }'

NET = """
name: "py"
layer { name: "data" type: "Python" top: "data" top: "label"
        python_param { module: "pylayers" layer: "CountingData" param_str: "{\\"batch\\": 4, \\"width\\": 3}" } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
        python_param { module: "pylayers" layer: "ScaleShift" param_str: "{\\"scale\\": 2.0}" } }
layer { name: "ip" type: "InnerProduct" bottom: "scaled" top: "ip"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_forward_calls_the_layer_code():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = forward(SCALE_SHIFT, [x])
    np.testing.assert_array_equal(y, x * 2.5)


def test_backward_against_finite_differences():
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    check_gradient(SCALE_SHIFT, [x])          # the input's gradient and both parameters'


def _net(tmp_path, phase=caffe.TRAIN, weights=None):
    path = tmp_path / "py.prototxt"
    path.write_text(NET)
    return caffe.Net(str(path), phase, weights=weights, seed=0)


def test_data_layer_reads_param_str_and_phase(tmp_path):
    train = _net(tmp_path)
    train.forward()
    np.testing.assert_array_equal(train.blobs["data"].data, (np.arange(12).reshape(4, 3) / 1000.0).astype(np.float32))
    np.testing.assert_array_equal(train.blobs["label"].data, [0, 1, 0, 1])
    np.testing.assert_allclose(train.blobs["scaled"].data, 2 * train.blobs["data"].data, rtol=1e-7)
    train.forward()                            # the layer keeps its own state between passes
    assert train.blobs["data"].data[0, 0] == np.float32(0.012)
    test = _net(tmp_path, caffe.TEST)
    test.forward()
    assert test.blobs["data"].data[0, 0] == np.float32(1.0)
    # the net's gradient reaches the Python layer's parameters
    train.backward()
    assert train.params["scale"][0].diff[0] != 0 and train.params["scale"][1].diff[0] != 0


def test_parameters_are_saved_and_loaded(tmp_path):
    net = _net(tmp_path)
    assert [p.data.shape for p in net.params["scale"]] == [(1,), (1,)]
    net.params["scale"][0].data[...] = 3.25
    net.params["scale"][1].data[...] = -1.5
    net.save(str(tmp_path / "py.caffemodel"))
    again = _net(tmp_path, caffe.TEST, weights=str(tmp_path / "py.caffemodel"))
    assert again.params["scale"][0].data[0] == 3.25 and again.params["scale"][1].data[0] == -1.5
    again.forward()
    np.testing.assert_allclose(again.blobs["scaled"].data, again.blobs["data"].data * 3.25 - 1.5, rtol=1e-6)


def test_solver_trains_the_python_layers_parameters(tmp_path):
    """One SGD step on w and b of y = w x + b under a Euclidean loss, by hand."""
    net = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 1 } } }
    layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 1 } } }
    layer { name: "scale" type: "Python" bottom: "x" top: "y"
            python_param { module: "pylayers" layer: "ScaleShift" param_str: "{\\"scale\\": 0.5}" } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
    """
    param = parse_text(f'net_param {{ {net} }} base_lr: 0.1 lr_policy: "fixed" max_iter: 1 '
                       f'snapshot_after_train: false random_seed: 1', caffe_pb2.SolverParameter())
    solver = Solver(param, show_progress=False)
    x = np.array([[1.0], [2.0], [-1.0], [0.5]], np.float32)
    t = np.array([[2.0], [3.0], [-2.0], [1.0]], np.float32)
    solver.net.blobs["x"].data[...] = x
    solver.net.blobs["t"].data[...] = t
    solver.step(1)
    r = 0.5 * x - t                          # loss = sum(r^2) / (2 N)
    dw, db = float(np.sum(r * x) / 4), float(np.sum(r) / 4)
    w, b = (blob.data[0] for blob in solver.net.layers[2].blobs)
    np.testing.assert_allclose([w, b], [0.5 - 0.1 * dw, 0.0 - 0.1 * db], rtol=1e-6)


@pytest.mark.parametrize("python_param, message", [
    ('module: "no_such_module" layer: "X"', "cannot import the Python module 'no_such_module'"),
    ('module: "pylayers" layer: "NoSuchLayer"', "has no 'NoSuchLayer'"),
    ('layer: "ScaleShift"', "needs both module and layer"),
])
def test_setup_errors_name_the_layer(python_param, message):
    with pytest.raises(RistrettoError, match=message) as info:
        forward(f'name: "mine" type: "Python" python_param {{ {python_param} }}', [np.zeros((1, 2))])
    assert info.value.layer == "mine"


def test_an_error_in_the_layer_code_is_one_line_naming_the_layer():
    spec = 'name: "br" type: "Python" python_param { module: "pylayers" layer: "Broken" }'
    with pytest.raises(RistrettoError, match=r"Broken \(forward\): ValueError: bad value") as info:
        forward(spec, [np.zeros((1, 2))])
    assert info.value.layer == "br" and isinstance(info.value.__cause__, ValueError)


def test_pycaffe_lets_the_layer_codes_own_exception_through(tmp_path):
    """From pycaffe a Python layer's exception reaches the script unchanged, as in pycaffe
    (Caffe's own test expects the layer's RuntimeError from ``caffe.Net``)."""
    path = tmp_path / "broken.prototxt"
    path.write_text('name: "b" input: "x" input_shape { dim: 1 dim: 2 }\n'
                    'layer { name: "br" type: "Python" bottom: "x" top: "y" '
                    'python_param { module: "pylayers" layer: "Broken" } }\n')
    net = caffe.Net(str(path), caffe.TEST)
    with pytest.raises(ValueError, match="^bad value in the input$") as info:
        net.forward()
    assert not isinstance(info.value, RistrettoError)
    with pytest.raises(ValueError, match="^bad value in the input$"):
        net.forward_all(x=np.zeros((3, 2), np.float32))
