"""Mean/infogain ``.binaryproto`` files and solver states (binary and HDF5)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import test_data
from io_support import bits

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import (
    array_to_blob,
    blob_to_array,
    read_blob_file,
    read_solverstate,
    write_mean_file,
    write_solverstate,
    write_solverstate_h5,
)
from ristretto_cli.proto import caffe_pb2


def test_mean_file_is_written_exactly_like_compute_image_mean(tmp_path):
    mean = (np.arange(12, dtype=np.float32) / 3).reshape(3, 2, 2)
    path = tmp_path / "mean.binaryproto"
    write_mean_file(path, mean)
    # num=1 channels=3 height=2 width=2 (varints), then packed data (field 5): 12 floats
    expected = b"\x08\x01\x10\x03\x18\x02\x20\x02" + b"\x2a\x30" + mean.astype("<f4").tobytes()
    assert path.read_bytes() == expected
    back = read_blob_file(path)
    assert back.shape == (1, 3, 2, 2) and np.array_equal(bits(back[0]), bits(mean))


def test_mean_must_be_chw(tmp_path):
    with pytest.raises(RistrettoError, match="C x H x W"):
        write_mean_file(tmp_path / "m.binaryproto", np.zeros((2, 2)))
    assert list(tmp_path.iterdir()) == []


def test_blob_file_with_nd_shape_reads_with_that_shape(tmp_path):
    h = np.eye(4, dtype=np.float32) * 2  # an InfogainLoss matrix
    path = tmp_path / "H.binaryproto"
    path.write_bytes(array_to_blob(h).SerializeToString())
    assert np.array_equal(read_blob_file(path), h)


def test_blob_file_errors(tmp_path):
    with pytest.raises(RistrettoError, match="No such file"):
        read_blob_file(tmp_path / "none.binaryproto")
    (tmp_path / "empty.binaryproto").write_bytes(b"")
    with pytest.raises(RistrettoError, match="the file is empty"):
        read_blob_file(tmp_path / "empty.binaryproto")
    bad = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=2)
    bad.data.extend([1, 2, 3])
    (tmp_path / "short.binaryproto").write_bytes(bad.SerializeToString())
    with pytest.raises(RistrettoError, match="3 values in data, but its shape 1 x 1 x 2 x 2 needs 4"):
        read_blob_file(tmp_path / "short.binaryproto")


def _state(with_net: bool = True):
    rng = np.random.default_rng(5)
    state = caffe_pb2.SolverState(iter=1200, current_step=2)
    if with_net:
        state.learned_net = "snapshots/lenet_iter_1200.caffemodel"
    for shape in [(20, 1, 5, 5), (20,), (500, 800)]:
        state.history.append(array_to_blob(rng.standard_normal(shape).astype(np.float32)))
    return state


def test_binary_solverstate_round_trip(tmp_path):
    state = _state()
    path = tmp_path / "s_iter_1200.solverstate"
    write_solverstate(path, state)
    assert read_solverstate(path) == state


@pytest.mark.parametrize("with_net", [True, False])
def test_hdf5_solverstate_round_trip_and_caffe_layout(tmp_path, with_net):
    state = _state(with_net)
    path = tmp_path / "s_iter_1200.solverstate.h5"
    write_solverstate_h5(path, state)
    with h5py.File(path, "r") as f:
        assert f["iter"].dtype == np.int32 and f["iter"].shape == (1,) and f["iter"][0] == 1200
        assert f["current_step"][0] == 2
        assert list(f["history"]) == ["0", "1", "2"]
        assert f["history/2"].shape == (500, 800) and f["history/2"].dtype == np.float32
        if with_net:
            ds = f["learned_net"]
            assert ds.shape == () and ds.id.get_type().get_strpad() == h5py.h5t.STR_NULLTERM
            assert ds[()] == b"snapshots/lenet_iter_1200.caffemodel"
        else:
            assert "learned_net" not in f
    back = read_solverstate(path)
    assert back.HasField("learned_net") is with_net
    assert (back.iter, back.current_step, back.learned_net) == (
        state.iter, state.current_step, state.learned_net)
    for a, b in zip(back.history, state.history):
        assert np.array_equal(bits(blob_to_array(a)), bits(blob_to_array(b)))


def test_solverstate_errors(tmp_path):
    with pytest.raises(RistrettoError) as info:
        read_solverstate(test_data("bad/truncated.solverstate"))
    assert str(info.value).endswith("truncated.solverstate: not a valid solver state: truncated or "
                                    "corrupt protobuf data")
    path = tmp_path / "x.solverstate.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("iter", data=np.array([3], np.int32))
    with pytest.raises(RistrettoError, match="no integer dataset 'current_step'"):
        read_solverstate(path)
    with h5py.File(path, "a") as f:
        f.create_dataset("current_step", data=np.array([0], np.int32))
        f.create_group("history").create_dataset("1", data=np.zeros(2, np.float32))
    with pytest.raises(RistrettoError, match="history datasets must be named 0..0"):
        read_solverstate(path)
