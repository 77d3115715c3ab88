"""Edge cases of the data layers and the transformer, checked against Caffe 1.0's CPU code
(data_transformer.cpp, data_layer.cpp, image_data_layer.cpp, hdf5.cpp, memory_data_layer.cpp,
hdf5_output_layer.cpp); expected values are hand-computed."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_support import data_net

from ristretto_cli.data.datum import chw_to_datum
from ristretto_cli.data.db import DBWriter
from ristretto_cli.data.sources import read_image_list
from ristretto_cli.data.transformer import DataTransformer
from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2


def test_an_empty_datum_is_an_error_not_an_empty_batch(tmp_path):
    # Caffe: load_batch CHECKs that the batch (and the transformed item) hold data.
    with DBWriter(tmp_path / "db", "lmdb") as w:
        w.put("0", caffe_pb2.Datum(channels=1, height=0, width=3).SerializeToString())
    with pytest.raises(RistrettoError) as e:
        data_net(f'type: "Data" top: "data" data_param {{ source: "{tmp_path / "db"}" batch_size: 2 '
                 f'backend: LMDB }}')
    assert "layer 'd'" in str(e.value) and "1 x 0 x 3" in str(e.value)


def test_a_mean_blob_with_several_items_uses_the_first(tmp_path):
    # Caffe checks only the mean's channels/height/width and reads its first C*H*W values.
    path = tmp_path / "mean.binaryproto"
    bp = caffe_pb2.BlobProto(num=2, channels=1, height=2, width=2)
    bp.data.extend([1.5, 2, 3, 4, 90, 90, 90, 90])
    path.write_bytes(bp.SerializeToString())
    t = DataTransformer(caffe_pb2.TransformationParameter(mean_file=str(path), scale=2))
    out = t.transform(np.full((1, 1, 2, 2), 10, np.uint8))
    np.testing.assert_array_equal(out[0, 0], np.float32([[17, 16], [14, 12]]))
    bp = caffe_pb2.BlobProto(num=0, channels=1, height=2, width=2)
    path.write_bytes(bp.SerializeToString())
    with pytest.raises(RistrettoError, match="mean"):
        DataTransformer(caffe_pb2.TransformationParameter(mean_file=str(path)))


@pytest.mark.parametrize("kind", ["bool", "enum"])
def test_hdf5_enum_datasets_are_rejected(tmp_path, kind):
    # Caffe's hdf5_load_nd_dataset accepts only the INTEGER and FLOAT classes (H5T_ENUM: FATAL);
    # h5py stores bool arrays as an enum.
    with h5py.File(tmp_path / "a.h5", "w") as f:
        if kind == "bool":
            f["data"] = np.array([True, False, True])
        else:
            f.create_dataset("data", data=np.array([0, 1, 1], np.int8),
                             dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="i1"))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n")
    with pytest.raises(RistrettoError) as e:
        data_net(f'type: "HDF5Data" top: "data" hdf5_data_param {{ source: "{tmp_path / "list.txt"}" '
                 f'batch_size: 2 }}')
    assert "a.h5" in str(e.value) and "layer 'd'" in str(e.value) and "'data'" in str(e.value)


def test_image_list_line_without_a_space_takes_atoi_of_the_whole_line(tmp_path):
    # image_data_layer.cpp / convert_imageset.cpp: no space -> path = line, label = atoi(line).
    lst = tmp_path / "list.txt"
    lst.write_text("123.jpg\n-7x.png\nabc\n+5\n\t42.png\n99999999999.png\n-99999999999999999999.png\n"
                   "dir/a b.jpg 3\n")
    assert read_image_list(str(lst)) == [
        ("123.jpg", 123), ("-7x.png", -7), ("abc", 0), ("+5", 5), ("\t42.png", 42),
        # glibc atoi = (int) strtol: the long value wrapped to 32 bits; strtol saturates first
        ("99999999999.png", 99999999999 - 23 * 2**32), ("-99999999999999999999.png", 0),
        ("dir/a b.jpg", 3)]


def test_memory_data_batch_size_changed_to_a_non_divisor_is_an_error():
    net = data_net('type: "MemoryData" top: "data" top: "label" '
                   'memory_data_param { batch_size: 2 channels: 1 height: 1 width: 1 }')
    layer = net.layers[0]
    layer.reset(np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1), [0, 1, 2, 3])
    layer.set_batch_size(3)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data.ravel(), [0, 1, 2])
    with pytest.raises(RistrettoError) as e:
        net.forward()  # rows 3..5 of 4: Caffe reads past its buffer
    assert "layer 'd'" in str(e.value) and "multiple of the batch size" in str(e.value)


def test_hdf5_output_of_scalar_blobs_writes_legacy_1x1x1x1(tmp_path):
    # A 0-axis blob's legacy num/channels/height/width are all 1 (Blob::LegacyShape).
    out = tmp_path / "out.h5"
    net = data_net(f'type: "DummyData" top: "x" top: "y" dummy_data_param {{ shape {{ }} '
                   f'data_filler {{ type: "constant" value: 2.5 }} }} }} '
                   f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "x" '
                   f'hdf5_output_param {{ file_name: "{out}" }}')
    net.forward()
    with h5py.File(out, "r") as f:
        assert f["data"].shape == f["label"].shape == (1, 1, 1, 1)
        assert f["data"][()].ravel().tolist() == [2.5]


def test_hdf5_output_batch_mismatch_is_an_error(tmp_path):
    net = data_net(f'type: "DummyData" top: "x" top: "y" dummy_data_param {{ shape {{ dim: 2 dim: 3 }} '
                   f'shape {{ dim: 3 }} }} }} '
                   f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" '
                   f'hdf5_output_param {{ file_name: "{tmp_path / "o.h5"}" }}')
    with pytest.raises(RistrettoError, match="layer 'o': data blob and label blob must have the same batch"):
        net.forward()


def test_raw_datum_with_both_data_and_float_data_uses_the_bytes(tmp_path):
    # data_transformer.cpp: has_uint8 = data.size() > 0 decides.
    d = chw_to_datum(np.array([[[1, 2]]], np.uint8), label=4)
    d.float_data.extend([100.0, 200.0])
    with DBWriter(tmp_path / "db", "lmdb") as w:
        w.put("0", d.SerializeToString())
    net = data_net(f'type: "Data" top: "data" top: "label" data_param {{ source: "{tmp_path / "db"}" '
                   f'batch_size: 1 backend: LMDB }}')
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data.ravel(), [1, 2])
    np.testing.assert_array_equal(net.blobs["label"].data, [4])
