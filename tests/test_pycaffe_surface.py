"""What Caffe 1.0's pycaffe exposes beyond the common script (python/caffe/__init__.py,
_caffe.cpp, pycaffe.py, io.py, net_spec.py): module names, the Net constructor's positional
keywords, its error types, Python layers as net layers, Layer.setup/reshape, solver
callbacks. Each expectation is pycaffe's documented (or source-read) behaviour."""

from __future__ import annotations

import logging
import time

import numpy as np
import pylayers
import pytest
from conftest import test_data
from solver_support import B0, W0, T, X, solver_param, tiny_loss_and_grads

from ristretto_cli import log as ristretto_log
from ristretto_cli import pycaffe as caffe
from ristretto_cli.io import format_message

DEPLOY = str(test_data("models/lenet/lenet.prototxt"))
WEIGHTS = str(test_data("models/lenet/lenet_iter_10000.caffemodel"))


# ----------------------------------------------------------------------------- module names
def test_caffe_1_0_module_names():
    assert caffe.__version__ == "1.0.0"                 # CAFFE_VERSION of the 1.0 Makefile
    assert caffe.has_nccl() is False                    # a build without NCCL
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0
    try:
        caffe.set_solver_count(4)
        caffe.set_solver_rank(2)
        caffe.set_multiprocess(True)
        assert caffe.solver_count() == 4 and caffe.solver_rank() == 2
    finally:
        caffe.set_solver_count(1)
        caffe.set_solver_rank(0)
        caffe.set_multiprocess(False)


def test_timer_measures_milliseconds():
    timer = caffe.Timer()
    timer.start()
    time.sleep(0.03)
    timer.stop()
    first = timer.ms
    assert 30 <= first < 3000
    assert timer.ms == first                            # stopped: the reading stays


def test_init_log_and_log(capsys):
    logger = logging.getLogger("ristretto")
    saved = (logger.level, logger.handlers[:], logger.propagate, ristretto_log._configured)
    try:
        caffe.init_log()                                # the three overloads of 1.0
        caffe.init_log(0)
        caffe.init_log(0, True)
        caffe.log("hello from the script")
        assert "] hello from the script" in capsys.readouterr().err
        caffe.init_log(1)                               # minloglevel 1: warnings and up
        caffe.log("not shown")
        assert "not shown" not in capsys.readouterr().err
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
        ristretto_log._configured = saved[3]            # a later configure() installs its handler again


# ----------------------------------------------------------------------------- Net constructor
LEVELS = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "double" type: "Power" bottom: "x" top: "double" power_param { scale: 2 }
        include { min_level: 1 } }
layer { name: "triple" type: "Power" bottom: "x" top: "triple" power_param { scale: 3 }
        include { stage: "deploy" } }
"""


def test_net_level_stages_and_weights_positionally(tmp_path):
    """``Net(network_file, phase, level=0, stages=None, weights=None)``: boost.python takes
    these keywords positionally too."""
    path = tmp_path / "levels.prototxt"
    path.write_text(LEVELS)
    assert caffe.Net(str(path), caffe.TEST)._layer_names == ["x"]
    assert caffe.Net(str(path), caffe.TEST, 1)._layer_names == ["x", "double"]
    assert caffe.Net(str(path), caffe.TEST, 0, ["deploy"])._layer_names == ["x", "triple"]
    net = caffe.Net(DEPLOY, caffe.TEST, 0, None, WEIGHTS)
    want = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    np.testing.assert_array_equal(net.params["conv1"][0].data, want.params["conv1"][0].data)


def test_net_missing_files_are_runtime_errors():
    """pycaffe checks both files first: ``RuntimeError('Could not open file ...')``."""
    with pytest.raises(RuntimeError, match="Could not open file nope.prototxt"):
        caffe.Net("nope.prototxt", caffe.TEST)
    with pytest.raises(RuntimeError, match="Could not open file nope.caffemodel"):
        caffe.Net(DEPLOY, "nope.caffemodel", caffe.TEST)
    with pytest.raises(RuntimeError, match="Could not open file nope.caffemodel"):
        caffe.Net(DEPLOY, caffe.TEST, weights="nope.caffemodel")


# ----------------------------------------------------------------------------- forward / backward
def test_forward_checks_the_batch_and_broadcasts_the_rest():
    """pycaffe checks only ``shape[0]`` and assigns with ``data[...] = value``."""
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    net.blobs["data"].reshape(2, 1, 28, 28)
    net.reshape()
    column = np.array([0.2, 0.7], np.float32).reshape(2, 1, 1, 1)
    out = net.forward(data=column)["prob"].copy()
    np.testing.assert_array_equal(net.blobs["data"].data, np.broadcast_to(column, (2, 1, 28, 28)))
    full = net.forward(data=np.broadcast_to(column, (2, 1, 28, 28)).copy())["prob"]
    np.testing.assert_array_equal(out, full)
    with pytest.raises(Exception, match="Input is not batch sized"):
        net.forward(data=np.zeros((3, 1, 28, 28), np.float32))
    with pytest.raises(ValueError):                     # numpy's broadcasting error
        net.forward(data=np.zeros((2, 1, 28, 27), np.float32))


def test_unknown_start_or_end_is_a_value_error():
    """pycaffe looks the names up with ``list.index``."""
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    with pytest.raises(ValueError):
        net.forward(end="nope")
    with pytest.raises(ValueError):
        net.forward(start="nope")
    with pytest.raises(ValueError):
        net.backward(start="nope")


LINEAR = """
force_backward: true
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_forward_backward_all_pads_and_discards_by_hand(tmp_path):
    """7 items in batches of 5 (the last padded with zeros): ``ip = x W^T + b`` and
    ``d x = d ip W`` for every item, the padding gone from both."""
    path = tmp_path / "linear.prototxt"
    path.write_text(LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    rng = np.random.default_rng(8)
    w, b = rng.standard_normal((2, 3)), rng.standard_normal(2)
    net.params["ip"][0].data[...] = w
    net.params["ip"][1].data[...] = b
    w, b = net.params["ip"][0].data.astype(float), net.params["ip"][1].data.astype(float)
    x, g = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    outs, diffs = net.forward_backward_all(x=x, ip=g)
    assert outs["ip"].shape == (7, 2) and diffs["x"].shape == (7, 3)
    np.testing.assert_allclose(outs["ip"], x @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(diffs["x"], g @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.forward_all(x=x)["ip"], x @ w.T + b, rtol=1e-5, atol=1e-6)


def test_set_input_arrays_errors_are_runtime_errors(tmp_path):
    """pycaffe's ``_set_input_arrays`` throws std::runtime_error for a net without a first
    MemoryData layer and for a count not a multiple of the batch size."""
    model = tmp_path / "memory.prototxt"
    model.write_text('layer { name: "d" type: "MemoryData" top: "data" top: "label" '
                     'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 } }')
    net = caffe.Net(str(model), caffe.TEST)
    with pytest.raises(RuntimeError, match="multiple of the batch size"):
        net.set_input_arrays(np.zeros((3, 1, 1, 1), np.float32), np.zeros(3, np.float32))
    with pytest.raises(RuntimeError, match="MemoryData"):
        caffe.Net(DEPLOY, caffe.TEST).set_input_arrays(np.zeros((2, 1, 28, 28), np.float32),
                                                       np.zeros(2, np.float32))


# ----------------------------------------------------------------------------- layers
PY_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "scale" type: "Python" bottom: "data" top: "scaled"
        python_param { module: "pylayers" layer: "ScaleShift" param_str: "{\\"scale\\": 2.0}" } }
"""


def test_a_python_layer_is_its_object_in_net_layers(tmp_path):
    """A Python layer's entry in ``net.layers`` is the object the net built (scripts call
    its methods, e.g. py-faster-rcnn's ``net.layers[0].set_roidb``); its ``type`` is
    ``'Python'`` as for every ``caffe.Layer``."""
    path = tmp_path / "py.prototxt"
    path.write_text(PY_NET)
    net = caffe.Net(str(path), caffe.TEST)
    layer = net.layers[1]
    assert isinstance(layer, pylayers.ScaleShift)
    assert layer is net.layers[1] is net.layer_dict["scale"]
    assert layer.type == "Python" and net.layers[0].type == "Input"
    assert layer.param_str == '{"scale": 2.0}' and layer.phase == caffe.TEST
    assert len(layer.blobs) == 2 and layer.blobs[0].data[0] == 2.0
    layer.blobs[1].data[0] = 1.0                        # its blobs are the net's parameters
    net.blobs["data"].data[...] = 3.0
    np.testing.assert_array_equal(net.forward()["scaled"], np.full((2, 3), 7.0, np.float32))
    assert net.params["scale"][1].data[0] == 1.0


def test_layer_setup_and_reshape_of_a_net_layer():
    """pycaffe's ``Layer.setup`` (LayerSetUp) and ``Layer.reshape`` with the net's blobs:
    reshape gives the top the shape of the new bottom; setup keeps existing weights."""
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    i = net._layer_names.index("conv1")
    conv, bottom, top = net.layers[i], [net.blobs["data"]], [net.blobs["conv1"]]
    weights = net.params["conv1"][0].data.copy()
    net.blobs["data"].reshape(2, 1, 12, 12)
    conv.reshape(bottom, top)
    assert net.blobs["conv1"].data.shape == (2, 20, 8, 8)   # 12 - 5 + 1
    conv.setup(bottom, top)
    np.testing.assert_array_equal(net.params["conv1"][0].data, weights)


# ----------------------------------------------------------------------------- net callbacks
def test_net_callbacks_run_around_every_layer_and_change_no_value(tmp_path):
    """Caffe's Net::ForwardFromTo and BackwardFromTo: ``run(i)`` before and after layer i's
    forward, and before and after its backward for every layer of the range (whether it
    needs a backward or not), in order. Each layer's pass is seen alone: after ``ip1``'s
    forward its in-place ReLU has not run yet. The outputs and gradients are the same bits
    as without callbacks."""
    model = tmp_path / "lenet.prototxt"
    model.write_text("force_backward: true\n" + open(DEPLOY).read())
    x = np.random.default_rng(0).random((64, 1, 28, 28), dtype=np.float32)
    grad = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float32)
    plain = caffe.Net(str(model), WEIGHTS, caffe.TEST)
    want_prob = plain.forward(data=x)["prob"].copy()
    want_dx = plain.backward(prob=grad)["data"].copy()

    net = caffe.Net(str(model), WEIGHTS, caffe.TEST)
    events, ip1_after = [], []
    ip1 = list(net._layer_names).index("ip1")
    net.before_forward(lambda i: events.append(("before_forward", i)))
    net.after_forward(lambda i: events.append(("after_forward", i)))
    net.after_forward(lambda i: ip1_after.append(net.blobs["ip1"].data.copy()) if i == ip1 else None)
    net.before_backward(lambda i: events.append(("before_backward", i)))
    net.after_backward(lambda i: events.append(("after_backward", i)))
    prob = net.forward(data=x)["prob"]
    dx = net.backward(prob=grad)["data"]
    n = len(net.layers)
    assert events == ([(k, i) for i in range(n) for k in ("before_forward", "after_forward")]
                      + [(k, i) for i in reversed(range(n)) for k in ("before_backward", "after_backward")])
    assert (ip1_after[0] < 0).any() and (net.blobs["ip1"].data >= 0).all()
    np.testing.assert_array_equal(prob, want_prob)
    np.testing.assert_array_equal(dx, want_dx)


def test_net_callbacks_run_in_the_solvers_passes(tmp_path):
    solver = _tiny_solver(tmp_path)
    layers = []
    solver.net.before_forward(layers.append)
    solver.step(2)
    n = len(solver.net.layers)
    assert layers == list(range(n)) * 2


# ----------------------------------------------------------------------------- solver callbacks
def _solver_file(tmp_path, text: str) -> str:
    """A solver file over the tiny net of solver_support, snapshots into ``tmp_path``."""
    param = solver_param(f'{text} snapshot_after_train: false snapshot_prefix: "{tmp_path}/snap"')
    path = tmp_path / "solver.prototxt"
    path.write_text(format_message(param))
    return str(path)


def _tiny_solver(tmp_path, iter_size=1):
    solver = caffe.SGDSolver(_solver_file(
        tmp_path, f'type: "SGD" base_lr: 0.1 lr_policy: "fixed" max_iter: 3 iter_size: {iter_size}'))
    solver.net.blobs["x"].data[...] = X
    solver.net.blobs["t"].data[...] = T
    solver.net.params["ip"][0].data[...] = W0
    solver.net.params["ip"][1].data[...] = B0
    return solver


@pytest.mark.parametrize("iter_size", [1, 2])
def test_add_callback_runs_around_each_iteration(tmp_path, iter_size):
    """Caffe 1.0's Solver::Step: ``on_start`` after the diffs are cleared, before the
    passes; ``on_gradients_ready`` after them, before the update (the diffs then hold the
    gradient summed over ``iter_size`` passes, the weights are the old ones)."""
    solver = _tiny_solver(tmp_path, iter_size)
    events = []

    def on_start():
        events.append("start")
        assert not solver.net.params["ip"][0].diff.any()

    def on_ready():
        events.append("ready")
        w, b = (p.data.astype(float) for p in solver.net.params["ip"])
        if solver.iter == 0:
            np.testing.assert_array_equal(w, W0)
        _, (dw, db) = tiny_loss_and_grads(w, b)
        np.testing.assert_allclose(solver.net.params["ip"][0].diff, iter_size * dw, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(solver.net.params["ip"][1].diff, iter_size * db, rtol=1e-5, atol=1e-6)

    solver.add_callback(on_start, on_ready)
    solver.step(2)
    assert events == ["start", "ready"] * 2
    solver.add_callback(caffe.NCCL(solver, ""))         # pycaffe's NCCL overload: nothing without NCCL
    solver.solve()
    assert events == ["start", "ready"] * 3 and solver.iter == 3


# ----------------------------------------------------------------------------- caffe.io
def test_deprocess_keeps_the_dtype_it_is_given():
    """pycaffe's deprocess works on ``data.copy()``: float64 in, float64 out."""
    t = caffe.io.Transformer({"data": (1, 3, 2, 2)})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    x = np.random.default_rng(0).random((3, 2, 2)) * 255
    out = t.deprocess("data", x)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, x.transpose(1, 2, 0) / 255)


def test_load_image_errors_are_os_errors(tmp_path):
    """pycaffe reads with scikit-image (PIL): a missing or undecodable file raises OSError
    (IOError), which scripts catch to skip a bad image."""
    with pytest.raises(OSError, match="missing.jpg"):
        caffe.io.load_image(tmp_path / "missing.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(IOError, match="bad.jpg"):
        caffe.io.load_image(bad)


# ----------------------------------------------------------------------------- net_spec
def test_net_spec_top_and_function_attributes():
    """pycaffe's ``Top.fn``/``Top.n`` and ``Function.params`` (the keywords less ntop and
    in_place): scripts edit ``top.fn.params`` before ``to_proto``."""
    data = caffe.layers.Input(input_param=dict(shape=dict(dim=[1, 3, 8, 8])))
    a, b = caffe.layers.Slice(data, ntop=2, in_place=False, slice_point=[1])
    assert (a.n, b.n) == (0, 1) and a.fn is b.fn
    assert a.fn.params == {"slice_point": [1]}
    conv = caffe.layers.Convolution(a, num_output=4, kernel_size=3)
    conv.fn.params["num_output"] = 8
    assert conv.to_proto().layer[-1].convolution_param.num_output == 8
    assert caffe.net_spec.Function is type(conv.fn)


# ----------------------------------------------------------------------------- submodules
def test_submodules_import_by_their_dotted_names():
    """pycaffe is a package (python/caffe/: proto/caffe_pb2.py, io.py, net_spec.py,
    coord_map.py): scripts write ``from caffe.proto import caffe_pb2``, which becomes
    ``from ristretto_cli.pycaffe.proto import caffe_pb2`` and gives the same modules as
    the attributes."""
    import ristretto_cli.pycaffe.proto.caffe_pb2 as dotted_pb2
    from ristretto_cli.pycaffe.coord_map import crop
    from ristretto_cli.pycaffe.io import Transformer
    from ristretto_cli.pycaffe.net_spec import NetSpec
    from ristretto_cli.pycaffe.proto import caffe_pb2

    assert caffe_pb2 is dotted_pb2 is caffe.proto.caffe_pb2
    assert Transformer is caffe.io.Transformer and NetSpec is caffe.NetSpec
    assert crop is caffe.coord_map.crop
    assert caffe_pb2.SolverParameter().type == "SGD"


# ----------------------------------------------------------------------------- solver rate
def test_solver_lr_is_the_policys_rate_and_follows_param_edits(tmp_path):
    """pycaffe's ``SGDSolver.lr`` is SGDSolver::GetLearningRate at the current iteration
    (sgd_solver.cpp), and ``solver.param`` is the solver's own parameter: setting
    ``base_lr`` there changes the next updates. The other update rules are subclasses of
    SGDSolver (_caffe.cpp)."""
    solver = caffe.SGDSolver(_solver_file(
        tmp_path, 'type: "SGD" base_lr: 0.05 lr_policy: "step" gamma: 0.5 stepsize: 2 max_iter: 10'))
    solver.net.blobs["x"].data[...] = X
    solver.net.blobs["t"].data[...] = T
    assert isinstance(solver.lr, float) and solver.lr == pytest.approx(0.05)
    solver.step(3)                                      # iteration 3: 0.05 * 0.5 ** (3 // 2)
    assert solver.lr == pytest.approx(0.025)
    solver.param.base_lr = 0.2
    assert solver.lr == pytest.approx(0.1)
    weights = solver.net.params["ip"][0].data.copy()
    solver.net.clear_param_diffs()
    solver.net.params["ip"][0].diff[...] = 1.0
    solver.apply_update()                               # plain SGD, no momentum or decay
    np.testing.assert_allclose(solver.net.params["ip"][0].data, weights - 0.1, rtol=1e-6)
    for kind in (caffe.NesterovSolver, caffe.AdaGradSolver, caffe.RMSPropSolver,
                 caffe.AdaDeltaSolver, caffe.AdamSolver):
        assert issubclass(kind, caffe.SGDSolver)


# ----------------------------------------------------------------------------- private names
def test_blob_ids_and_blobs_in_blob_name_order():
    """pycaffe's ``_blobs``, ``_top_ids(i)`` and ``_bottom_ids(i)``: blobs and per-layer
    indices into ``_blob_names`` (its net.cpp top_id_vecs_ / bottom_id_vecs_)."""
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    names = net._blob_names
    assert [b.data.shape for b in net._blobs] == [net.blobs[n].data.shape for n in names]
    for i, layer in enumerate(net._layer_names):
        assert [names[k] for k in net._top_ids(i)] == net.top_names[layer]
        assert [names[k] for k in net._bottom_ids(i)] == net.bottom_names[layer]
    relu = net._layer_names.index("relu1")          # in place: its top is its bottom
    assert net._top_ids(relu) == net._bottom_ids(relu) == [names.index("ip1")]


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_get_solver_returns_the_class_of_the_files_type(tmp_path, kind):
    solver = caffe.get_solver(_solver_file(tmp_path, f'type: "{kind}" base_lr: 0.1 lr_policy: "fixed" max_iter: 1'))
    assert type(solver) is getattr(caffe, f"{kind}Solver") and isinstance(solver, caffe.SGDSolver)
    assert solver.param.type == kind
