"""Edges of the binary formats against Caffe 1.0: the 2 GB protobuf limit (io.cpp), a
caffemodel written by Net::ToProto byte for byte, HDF5 snapshots (Solver::SnapshotToHDF5,
SGDSolver::SnapshotSolverStateToHDF5) with their names, log lines and layout."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from conftest import shared_data
from solver_support import DROPOUT_NET, capture_log

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import (
    array_to_blob,
    files,
    read_blob_file,
    read_net_param,
    read_solverstate,
    read_weights,
    write_caffemodel,
    write_mean_file,
    write_solverstate,
)
from ristretto_cli.net import TRAIN, Net
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import train


def test_limit_is_caffes_total_bytes_limit():
    assert files.PROTO_BYTES_LIMIT == 2**31 - 1  # kProtoReadBytesLimit = INT_MAX


def _small_net():
    net = caffe_pb2.NetParameter(name="n")
    layer = net.layer.add(name="ip", type="InnerProduct")
    layer.blobs.append(array_to_blob(np.ones((4, 8), np.float32)))
    return net


def test_binary_writers_refuse_files_caffe_cannot_read(tmp_path, monkeypatch):
    # protobuf's serializer would write > 2 GB; Caffe (and we) could not read it back.
    monkeypatch.setattr(files, "PROTO_BYTES_LIMIT", 64)
    state = caffe_pb2.SolverState(iter=1, learned_net="x.caffemodel")
    state.history.append(array_to_blob(np.ones(32, np.float32)))
    writes = [(write_caffemodel, "m.caffemodel", _small_net()),
              (write_solverstate, "s.solverstate", state),
              (write_mean_file, "mean.binaryproto", np.ones((1, 4, 8), np.float32))]
    for write, name, obj in writes:
        with pytest.raises(RistrettoError, match="2 GB") as info:
            write(tmp_path / name, obj)
        assert name in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_binary_readers_name_the_2gb_limit(tmp_path, monkeypatch):
    path = tmp_path / "m.caffemodel"
    write_caffemodel(path, _small_net())
    mean = tmp_path / "mean.binaryproto"
    write_mean_file(mean, np.ones((1, 4, 8), np.float32))
    monkeypatch.setattr(files, "PROTO_BYTES_LIMIT", 64)
    for read, p in [(read_weights, path), (read_blob_file, mean)]:
        with pytest.raises(RistrettoError, match="2 GB"):
            read(p)


def test_trained_lenet_is_written_byte_for_byte_as_caffe_wrote_it(tmp_path, monkeypatch):
    # Caffe's own snapshot of LeNet's TRAIN net (phase, params, shape + packed data).
    ref = shared_data("reference/solver_sgd_inv/sgd_inv_iter_30.caffemodel")
    os.makedirs(tmp_path / "examples/mnist")
    for name in ("mnist_train_lmdb", "mnist_test_lmdb"):
        os.symlink(shared_data("reference/mnist_test_lmdb"), tmp_path / "examples/mnist" / name)
    monkeypatch.chdir(tmp_path)
    net = Net(read_net_param(shared_data("models/lenet/lenet_train_test.prototxt")), TRAIN)
    net.copy_trained_layers_from(read_weights(ref), path=str(ref))
    write_caffemodel("ours.caffemodel", net.to_proto())
    assert (tmp_path / "ours.caffemodel").read_bytes() == ref.read_bytes()
    with_diff = net.to_proto(write_diff=True)
    conv1 = next(layer for layer in with_diff.layer if layer.name == "conv1")
    assert [len(b.diff) for b in conv1.blobs] == [500, 20]


def test_hdf5_snapshot_names_log_lines_and_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("solver.prototxt", "w") as f:
        f.write(f"net_param {{ {DROPOUT_NET} }}\nbase_lr: 0.01 momentum: 0.9 max_iter: 3 "
                'lr_policy: "step" gamma: 0.5 stepsize: 1 random_seed: 3 snapshot: 2 '
                'snapshot_prefix: "snap/h" snapshot_format: HDF5 snapshot_diff: true\n')
    os.mkdir("snap")
    with capture_log() as lines:
        train("solver.prototxt", show_progress=False)
    for it in (2, 3):
        assert f"Snapshotting to HDF5 file snap/h_iter_{it}.caffemodel.h5" in lines
        assert f"Snapshotting solver state to HDF5 file snap/h_iter_{it}.solverstate.h5" in lines
    with h5py.File("snap/h_iter_3.caffemodel.h5", "r") as f:
        assert sorted(f["data"]) == sorted(f["diff"]) == ["data", "drop", "ip", "loss"]
        assert sorted(f["data/ip"]) == sorted(f["diff/ip"]) == ["0", "1"]
        assert f["data/ip/0"].shape == (2, 5) and f["data/ip/0"].dtype == np.dtype("<f4")
        assert f["data/ip/1"].shape == (2,)
    with h5py.File("snap/h_iter_3.solverstate.h5", "r") as f:
        assert f["iter"].shape == (1,) and f["iter"][0] == 3
        assert f["current_step"][0] == 2  # iter / stepsize at the last update (iter 2)
        ln = f["learned_net"]
        assert ln.shape == () and ln.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
        assert ln[()] == b"snap/h_iter_3.caffemodel.h5"  # relative, as formed from the prefix
        assert sorted(f["history"]) == ["0", "1"] and f["history/0"].shape == (2, 5)
    state = read_solverstate("snap/h_iter_3.solverstate.h5")
    assert (state.iter, state.current_step, state.learned_net) == (3, 2, "snap/h_iter_3.caffemodel.h5")
