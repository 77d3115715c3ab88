"""Weights files: V1 caffemodels against their new-format twins, bit-exact round trips,
HDF5 weights (Caffe's layout), content-based format detection."""

from __future__ import annotations

import shutil
import sys

import h5py
import numpy as np
import pytest
from conftest import test_data
from io_support import bits

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import (
    blob_shape,
    blob_to_array,
    read_weights,
    shape_equals,
    write_caffemodel,
    write_caffemodel_h5,
)
from ristretto_cli.io.blobproto import has_legacy_shape
from ristretto_cli.proto import caffe_pb2

# (V1 caffemodel, new-format caffemodel of the same net trained by someone else)
TWINS = [("models/lenet_v1/lenet_iter_10000.caffemodel", "models/lenet/lenet_iter_10000.caffemodel"),
         ("models/cifar10_quick_v1/cifar10_quick_iter_5000.caffemodel",
          "models/cifar10_quick/cifar10_quick_iter_4000.caffemodel")]
CAFFEMODELS = [path for pair in TWINS for path in pair]


@pytest.mark.parametrize("v1, twin", TWINS)
def test_upgraded_v1_caffemodel_matches_its_twin(v1, twin):
    """Same layer names and types; blob shapes compared the way Caffe loads weights.

    V1 caffemodels store 4-D legacy shapes (an InnerProduct weight is 1 x 1 x 500 x 800,
    a bias 1 x 1 x 1 x 500) while the twin stores the blob shape the layer really has
    (500 x 800, 500). Caffe accepts a legacy blob for a layer blob when the layer's shape,
    right-aligned and padded with 1s to 4 axes, equals it (ShapeEquals), so each V1 blob
    must pass ``shape_equals`` against the twin's shape -- and must not pass against a
    different shape.
    """
    old, new = read_weights(test_data(v1)), read_weights(test_data(twin))
    assert len(old.layers) == 0
    assert [(l.name, l.type) for l in old.layer] == [(l.name, l.type) for l in new.layer]
    compared = 0
    for a, b in zip(old.layer, new.layer):
        assert len(a.blobs) == len(b.blobs), a.name
        for pa, pb in zip(a.blobs, b.blobs):
            assert has_legacy_shape(pa) and not has_legacy_shape(pb)
            target = blob_shape(pb)
            assert shape_equals(pa, target), (a.name, blob_shape(pa), target)
            assert not shape_equals(pa, target[::-1] if len(target) > 1 else (target[0] + 1,))
            assert blob_to_array(pa).size == blob_to_array(pb).size
            compared += 1
    assert compared == 8 if "lenet" in v1 else compared == 10


@pytest.mark.parametrize("rel", CAFFEMODELS)
def test_caffemodel_round_trip_keeps_every_field_and_bit(rel, tmp_path):
    net = read_weights(test_data(rel))
    out = tmp_path / "copy.caffemodel"
    write_caffemodel(out, net)
    again = read_weights(out)
    assert again == net  # every field (incl. legacy blob fields of upgraded V1 files)
    for a, b in zip(net.layer, again.layer):
        for pa, pb in zip(a.blobs, b.blobs):
            assert np.array_equal(bits(blob_to_array(pa)), bits(blob_to_array(pb)))


@pytest.mark.parametrize("rel", [p for _, p in TWINS])
def test_current_format_caffemodel_is_rewritten_byte_for_byte(rel, tmp_path):
    out = tmp_path / "copy.caffemodel"
    write_caffemodel(out, read_weights(test_data(rel)))
    assert out.read_bytes() == test_data(rel).read_bytes()


def test_hdf5_weights_from_caffe_load_as_a_net():
    net = read_weights(test_data("models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"))
    binary = read_weights(test_data("models/cifar10_quick/cifar10_quick_iter_4000.caffemodel"))
    # Caffe stores one group per layer (empty ones too); HDF5 lists them by name.
    assert [l.name for l in net.layer] == sorted(l.name for l in binary.layer)
    shapes = {l.name: [blob_shape(b) for b in l.blobs] for l in net.layer}
    assert shapes == {l.name: [blob_shape(b) for b in l.blobs] for l in binary.layer}
    with h5py.File(test_data("models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"), "r") as f:
        for layer in net.layer:
            for i, bp in enumerate(layer.blobs):
                assert np.array_equal(bits(blob_to_array(bp)), bits(f[f"data/{layer.name}/{i}"][()]))


def test_hdf5_round_trip_and_caffe_layout(tmp_path):
    rng = np.random.default_rng(3)
    layers = [("data", [], None),
              ("conv1", [rng.standard_normal((4, 3, 2, 2)).astype(np.float32),
                         rng.standard_normal(4).astype(np.float32)],
               [np.full((4, 3, 2, 2), 0.5, np.float32), None]),
              ("relu1", [], None),
              ("ip1", [rng.standard_normal((10, 16)).astype(np.float32), np.zeros(10, np.float32)], None)]
    path = tmp_path / "w.caffemodel.h5"
    write_caffemodel_h5(path, layers)
    with h5py.File(path, "r") as f:
        assert set(f) == {"data", "diff"}
        assert list(f["data"]) == ["data", "conv1", "relu1", "ip1"]  # net order is kept
        assert list(f["data/data"]) == [] and list(f["data/conv1"]) == ["0", "1"]
        assert f["data/conv1/0"].dtype == np.float32 and f["data/conv1/0"].shape == (4, 3, 2, 2)
        assert list(f["diff/conv1"]) == ["0"] and list(f["diff/ip1"]) == []
    net = read_weights(path)
    assert [l.name for l in net.layer] == ["data", "conv1", "relu1", "ip1"]
    for layer, (_, arrays, diffs) in zip(net.layer, layers):
        assert len(layer.blobs) == len(arrays)
        for i, (bp, a) in enumerate(zip(layer.blobs, arrays)):
            assert blob_shape(bp) == a.shape and np.array_equal(bits(blob_to_array(bp)), bits(a))
            if diffs is not None and diffs[i] is not None:
                assert np.array_equal(np.array(bp.diff, np.float32).reshape(a.shape), diffs[i])
            else:
                assert len(bp.diff) == 0


def test_hdf5_writer_skips_shared_params_and_reader_keeps_their_place(tmp_path):
    path = tmp_path / "shared.h5"
    write_caffemodel_h5(path, [("conv_b", [None, np.ones(3, np.float32)], None)])
    net = read_weights(path)
    first, second = net.layer[0].blobs
    assert first == caffe_pb2.BlobProto() and blob_to_array(second).tolist() == [1, 1, 1]


def test_hdf5_writer_refuses_names_hdf5_cannot_hold(tmp_path):
    with pytest.raises(RistrettoError, match="cannot be an HDF5 group name"):
        write_caffemodel_h5(tmp_path / "x.h5", [("inception/3x3", [np.ones(1)], None)])
    assert list(tmp_path.iterdir()) == []


def test_format_is_detected_by_content_not_by_name(tmp_path):
    h5_named_bin = tmp_path / "weights.bin"
    shutil.copy(test_data("models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"), h5_named_bin)
    assert len(read_weights(h5_named_bin).layer) == 13
    binary_named_h5 = tmp_path / "weights.caffemodel.h5"
    shutil.copy(test_data("models/lenet/lenet_iter_10000.caffemodel"), binary_named_h5)
    assert read_weights(binary_named_h5).layer[1].name == "conv1"


def test_hdf5_signature_after_a_user_block_is_recognised(tmp_path):
    path = tmp_path / "ub.h5"
    with h5py.File(path, "w", userblock_size=512) as f:
        f.create_group("data").create_group("l").create_dataset("0", data=np.arange(3, dtype=np.float32))
    assert path.read_bytes()[:8] != b"\x89HDF\r\n\x1a\n"
    assert blob_to_array(read_weights(path).layer[0].blobs[0]).tolist() == [0, 1, 2]


def test_missing_h5py_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(RistrettoError) as info:
        read_weights(test_data("models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5"))
    assert "optional h5py package" in str(info.value)
    assert "cifar10_quick_iter_5000.caffemodel.h5" in str(info.value)
    # binary caffemodels do not need it
    assert read_weights(test_data("models/lenet/lenet_iter_10000.caffemodel")).name == "LeNet"


def test_truncation_at_a_layer_boundary_cannot_be_detected_but_inside_a_layer_is(tmp_path):
    data = test_data("models/lenet/lenet_iter_10000.caffemodel").read_bytes()
    net = caffe_pb2.NetParameter.FromString(data)
    # Keep name + first two layers exactly: still a valid (smaller) NetParameter, as in Caffe.
    head = caffe_pb2.NetParameter(name=net.name)
    head.layer.extend(net.layer[:2])
    cut = head.SerializeToString()
    assert data.startswith(cut)
    (tmp_path / "cut.caffemodel").write_bytes(cut)
    assert [l.name for l in read_weights(tmp_path / "cut.caffemodel").layer] == ["mnist", "conv1"]
    (tmp_path / "cut2.caffemodel").write_bytes(data[:len(cut) + 100])
    with pytest.raises(RistrettoError, match="not a valid caffemodel: truncated or corrupt"):
        read_weights(tmp_path / "cut2.caffemodel")
