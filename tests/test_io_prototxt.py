"""read_net_param / read_solver_param: text first, binary when the bytes are not text,
file errors, and text output of any message."""

from __future__ import annotations

import pytest
from conftest import test_data

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import (
    format_message,
    read_net_param,
    read_solver_param,
    read_weights,
    write_text_message,
)
from ristretto_cli.proto import caffe_pb2


def test_binary_net_is_read_when_the_bytes_are_not_text():
    path = test_data("models/lenet_v1/lenet_iter_10000.caffemodel")
    net = read_net_param(path)
    assert net == read_weights(path)
    assert [l.type for l in net.layer][:2] == ["Data", "Convolution"]


def test_hdf5_weights_are_read_too():
    net = read_net_param(test_data("models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"))
    assert len(net.layer) == 13


def test_latin1_bytes_in_a_comment_do_not_make_a_prototxt_binary(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_bytes(b'# Gr\xf6\xdfe: 28 x 28\nname: "n"\nlayer { name: "r" type: "ReLU" }\n')
    assert read_net_param(path).name == "n"


def test_unreadable_inputs(tmp_path):
    with pytest.raises(RistrettoError) as info:
        read_net_param(tmp_path / "none.prototxt")
    assert str(info.value) == f"{tmp_path / 'none.prototxt'}: cannot read: No such file or directory"
    with pytest.raises(RistrettoError, match="cannot read: is a directory, not a file"):
        read_net_param(tmp_path)
    (tmp_path / "blank.prototxt").write_text("  \n\n")
    with pytest.raises(RistrettoError, match="the file is empty"):
        read_net_param(tmp_path / "blank.prototxt")


def test_solver_must_be_text(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_bytes(caffe_pb2.SolverParameter(net="net.prototxt", base_lr=0.1).SerializeToString())
    with pytest.raises(RistrettoError, match="not a text file"):
        read_solver_param(path)


def test_solver_parse_error_is_located(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.01\nlr_policy: "step"\nmomentum: 0.9 momentum: 0.95\n')
    with pytest.raises(RistrettoError) as info:
        read_solver_param(path)
    assert (info.value.line, info.value.column) == (3, 25)
    assert 'field "momentum" of SolverParameter given more than once' in str(info.value)


def test_real_solver_reads_with_its_values():
    solver = read_solver_param(test_data("models/lenet/lenet_solver.prototxt"))
    assert (solver.net, solver.lr_policy, solver.gamma, solver.power, solver.max_iter,
            solver.solver_mode, solver.snapshot_prefix) == (
        "examples/mnist/lenet_train_test.prototxt", "inv", pytest.approx(1e-4), 0.75, 10000,
        caffe_pb2.SolverParameter.GPU, "examples/mnist/lenet")


def test_any_message_can_be_written_as_text(tmp_path):
    solver = read_solver_param(test_data("models/lenet/lenet_solver.prototxt"))
    out = tmp_path / "solver.prototxt"
    write_text_message(out, solver)
    assert out.read_text() == format_message(solver)
    # field-number order: test_iter (3) first, net (24) last
    assert out.read_text() == (
        'test_iter: 100\ntest_interval: 500\nbase_lr: 0.01\ndisplay: 100\nmax_iter: 10000\n'
        'lr_policy: "inv"\ngamma: 0.0001\npower: 0.75\nmomentum: 0.9\nweight_decay: 0.0005\n'
        'snapshot: 5000\nsnapshot_prefix: "examples/mnist/lenet"\nsolver_mode: GPU\n'
        'net: "examples/mnist/lenet_train_test.prototxt"\n')
