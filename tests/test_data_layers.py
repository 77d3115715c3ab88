"""Data, ImageData, HDF5Data, MemoryData and HDF5Output layers; resume, prefetch and cache."""

from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest
from conftest import shared_data, test_data
from data_support import capture_log, data_net, forward_batches  # noqa: F401

from ristretto_cli.data import cache as cache_mod
from ristretto_cli.data import prefetch
from ristretto_cli.data.datum import chw_to_datum
from ristretto_cli.data.db import DBWriter
from ristretto_cli.data.tools import load_mnist
from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def make_db(path, n=10, shape=(1, 3, 4), backend="lmdb", start=0) -> np.ndarray:
    """A DB of ``n`` raw Datums (pixel values distinct per record), keys 00000000...; returns the items."""
    items = (np.arange(n * int(np.prod(shape))).reshape(n, *shape) + start) % 251
    items = items.astype(np.uint8)
    with DBWriter(path, backend) as w:
        for i in range(n):
            w.put(f"{i:08d}", chw_to_datum(items[i], label=i).SerializeToString())
    return items


def db_layer(path, batch, backend="LMDB", transform="", extra=""):
    return (f'type: "Data" top: "data" top: "label" transform_param {{ {transform} }} '
            f'data_param {{ source: "{path}" batch_size: {batch} backend: {backend} {extra} }}')


# ---------------------------------------------------------------------- Data
@pytest.mark.slow
def test_data_layer_reads_caffes_mnist_lmdb_in_key_order_and_wraps():
    pixels, labels = load_mnist(shared_data("mnist/t10k-images-idx3-ubyte.gz"),
                                shared_data("mnist/t10k-labels-idx1-ubyte.gz"))
    lmdb_dir = shared_data("reference/mnist_test_lmdb")
    with capture_log() as log:
        net = data_net(db_layer(lmdb_dir, 3000, transform="scale: 0.00390625"))
        batches = forward_batches(net, 4)
    expect = np.concatenate([pixels, pixels])[:12000].astype(np.float32) * np.float32(0.00390625)
    exp_labels = np.concatenate([labels, labels])[:12000].astype(np.float32)
    for i, (data, lab) in enumerate(batches):
        assert data.shape == (3000, 1, 28, 28)
        np.testing.assert_array_equal(data[:, 0], expect[3000 * i:3000 * (i + 1)])
        np.testing.assert_array_equal(lab, exp_labels[3000 * i:3000 * (i + 1)])
    assert "output data size: 3000,1,28,28" in log.messages
    assert log.messages.count("Restarting data prefetching from start.") >= 1


@pytest.mark.parametrize("backend", ["LMDB", "LEVELDB"])
def test_batch_larger_than_the_db_wraps_inside_the_batch(tmp_path, backend):
    items = make_db(tmp_path / "db", n=5, backend=backend.lower())
    with capture_log() as log:
        net = data_net(db_layer(tmp_path / "db", 7, backend=backend))
        b = forward_batches(net, 2)
    order = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3]
    np.testing.assert_array_equal(b[0][1], order[:7])
    np.testing.assert_array_equal(b[1][1], order[7:])
    np.testing.assert_array_equal(b[1][0], items[order[7:]].astype(np.float32))
    if backend == "LMDB":  # LMDB knows its size: one warning at setup
        assert any("batch_size 7 is larger than the DB (5 records)" in m for m in log.levels(30))


def test_data_layer_default_backend_is_leveldb_and_says_so(tmp_path):
    make_db(tmp_path / "db", n=2)
    with pytest.raises(RistrettoError) as e:
        data_net(f'type: "Data" top: "data" data_param {{ source: "{tmp_path / "db"}" batch_size: 1 }}')
    assert "add 'backend: LMDB'" in str(e.value) and "layer 'd'" in str(e.value)


def test_data_layer_errors_name_the_record(tmp_path):
    with DBWriter(tmp_path / "db", "lmdb") as w:
        w.put("00000000", chw_to_datum(np.zeros((1, 2, 2), np.uint8)).SerializeToString())
        w.put("00000001", caffe_pb2.Datum(channels=1, height=2, width=2, data=b"abc").SerializeToString())
    net = data_net(db_layer(tmp_path / "db", 2))
    with pytest.raises(RistrettoError, match=r"record '00000001': the Datum holds 3 bytes but its shape "
                                             r"1 x 2 x 2 needs 4"):
        net.forward()


def test_one_label_top_is_optional_and_legacy_fields_warn(tmp_path):
    make_db(tmp_path / "db", n=3)
    with capture_log() as log:
        net = data_net(f'type: "Data" top: "data" data_param {{ source: "{tmp_path / "db"}" '
                       f'batch_size: 2 backend: LMDB scale: 0.5 }}')
    net.forward()
    assert net.output_names == ["data"]
    assert any("data_param.scale is ignored" in m for m in log.levels(30))
    np.testing.assert_array_equal(net.blobs["data"].data[1, 0, 0], [12, 13, 14, 15])  # not scaled


# ---------------------------------------------------------------------- ImageData
CIFAR = sorted(test_data("images/foolbox_cifar10").glob("*.png"))


def write_list(path, entries) -> None:
    path.write_text("".join(f"{name} {label}\n" for name, label in entries))


def test_image_data_bgr_planes_labels_and_root_folder(tmp_path):
    root = str(CIFAR[0].parent) + "/"
    write_list(tmp_path / "list.txt", [(p.name, int(p.stem.split("_")[-1])) for p in CIFAR[:3]])
    net = data_net(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                   f'"{tmp_path / "list.txt"}" root_folder: "{root}" batch_size: 2 }}')
    b = forward_batches(net, 2)
    names = [CIFAR[i] for i in (0, 1, 2, 0)]
    got = np.concatenate([b[0][0], b[1][0]])
    for k, p in enumerate(names):
        np.testing.assert_array_equal(got[k], cv2.imread(str(p)).transpose(2, 0, 1).astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b[0][1], b[1][1]]),
                                  [int(p.stem.split("_")[-1]) for p in names])


def test_image_data_resize_is_opencv_bilinear_and_gray(tmp_path):
    cat = shared_data("images/caffe/cat.jpg")
    write_list(tmp_path / "list.txt", [(str(cat), 1), (str(CIFAR[0]), 2)])
    net = data_net(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                   f'"{tmp_path / "list.txt"}" batch_size: 2 new_height: 20 new_width: 24 }}')
    net.forward()
    data = net.blobs["data"].data
    assert data.shape == (2, 3, 20, 24)
    for k, p in enumerate((cat, CIFAR[0])):
        want = cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (24, 20), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(data[k], want.transpose(2, 0, 1).astype(np.float32))
    gray = data_net(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
                    f'"{tmp_path / "list.txt"}" batch_size: 1 is_color: false }}')
    gray.forward()
    np.testing.assert_array_equal(gray.blobs["data"].data[0, 0], cv2.imread(str(cat), cv2.IMREAD_GRAYSCALE))


def test_image_data_shuffle_is_seeded_and_reshuffles_each_epoch(tmp_path):
    entries = [(str(p), i) for i, p in enumerate(CIFAR)]
    write_list(tmp_path / "list.txt", entries)
    n = len(entries)
    layer = (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
             f'"{tmp_path / "list.txt"}" batch_size: {n} shuffle: true }}')

    def epochs(seed):
        net = data_net(layer, seed=seed)
        return [lab.astype(int).tolist() for _, lab in forward_batches(net, 3)]

    a, b, c = epochs(1), epochs(1), epochs(2)
    assert a == b  # same seed, same order
    assert a != c
    for order in a:
        assert sorted(order) == list(range(n))  # each epoch is a permutation of the list
    assert a[0] != a[1] != a[2] and a[0] != list(range(n))


def test_image_list_errors(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"{CIFAR[0]} 1\n{CIFAR[1]} one\n")

    def build():
        return data_net(f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: "{lst}" '
                        f'batch_size: 1 }}')

    with pytest.raises(RistrettoError) as e:
        build()
    assert str(e.value).startswith(f"{lst}:2: ") and "the label 'one' is not an integer" in str(e.value)
    lst.write_text("\n\n")
    with pytest.raises(RistrettoError, match="the image list is empty"):
        build()
    lst.write_text(f"{tmp_path / 'missing.png'} 3\n")
    with pytest.raises(RistrettoError) as e:
        build()
    assert "missing.png" in str(e.value) and "could not load image" in str(e.value)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    lst.write_text(f"{CIFAR[0]} 0\n{bad} 3\r\n")  # CRLF tolerated
    net = build()
    net.forward()
    with pytest.raises(RistrettoError) as e:
        net.forward()
    assert "bad.png" in str(e.value) and "cannot decode" in str(e.value)
    lst.write_text(f"{CIFAR[0]}\n")  # no label: as Caffe, label 0
    net = build()
    net.forward()
    assert net.blobs["label"].data[0] == 0


# ---------------------------------------------------------------------- HDF5Data / HDF5Output
def _h5(path, data, label):
    with h5py.File(path, "w") as f:
        f["data"] = data
        f["label"] = label


def test_hdf5_data_spans_files_and_wraps(tmp_path):
    d1 = np.arange(6, dtype=np.float64).reshape(3, 2)
    d2 = 100 + np.arange(8, dtype=np.int32).reshape(4, 2)
    _h5(tmp_path / "a.h5", d1, np.array([0, 1, 2]))
    _h5(tmp_path / "b.h5", d2, np.array([10, 11, 12, 13], np.int64))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n  {tmp_path / 'b.h5'}\n")
    net = data_net(f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
                   f'source: "{tmp_path / "list.txt"}" batch_size: 5 }}')
    assert net.blobs["data"].shape == (5, 2) and net.blobs["label"].shape == (5,)
    rows = np.concatenate([d1, d2]).astype(np.float32)
    labels = np.array([0, 1, 2, 10, 11, 12, 13], np.float32)
    order = [i % 7 for i in range(15)]
    for k, (data, lab) in enumerate(forward_batches(net, 3)):
        idx = order[5 * k:5 * (k + 1)]
        np.testing.assert_array_equal(data, rows[idx])
        np.testing.assert_array_equal(lab, labels[idx])
        assert data.dtype == np.float32


def test_hdf5_data_shuffle_and_errors(tmp_path):
    _h5(tmp_path / "a.h5", np.arange(3.0)[:, None], np.arange(3))
    _h5(tmp_path / "b.h5", 10 + np.arange(4.0)[:, None], 10 + np.arange(4))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'} {tmp_path / 'b.h5'}")
    layer = (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
             f'source: "{tmp_path / "list.txt"}" batch_size: 7 shuffle: true }}')
    net = data_net(layer, seed=3)
    for data, lab in forward_batches(net, 3):
        assert sorted(lab.tolist()) == [0, 1, 2, 10, 11, 12, 13]  # one epoch per batch
        np.testing.assert_array_equal(data[:, 0], lab)  # rows stay together
    with pytest.raises(RistrettoError, match="does not transform data"):
        data_net(layer.replace('type: "HDF5Data"', 'type: "HDF5Data" transform_param { scale: 2 }'))
    with pytest.raises(RistrettoError) as e:
        data_net(layer.replace('top: "label"', 'top: "labels"'))
    assert "failed to find HDF5 dataset 'labels'" in str(e.value) and ".h5: layer 'd'" in str(e.value)
    with pytest.raises(RistrettoError, match="failed to open the HDF5 file list: No such file"):
        data_net(layer.replace("list.txt", "nope.txt"))


def test_hdf5_output_writes_one_batch(tmp_path):
    out = tmp_path / "out.h5"
    net = data_net(f'type: "DummyData" top: "x" top: "y" dummy_data_param {{ shape {{ dim: 2 dim: 3 }} '
                   f'shape {{ dim: 2 }} data_filler {{ type: "constant" value: 1.5 }} }} }} '
                   f'layer {{ name: "o" type: "HDF5Output" bottom: "x" bottom: "y" '
                   f'hdf5_output_param {{ file_name: "{out}" }}')
    net.forward()
    with h5py.File(out, "r") as f:
        assert f["data"].shape == (2, 3, 1, 1) and f["label"].shape == (2, 1, 1, 1)
        assert f["data"].dtype == np.float32 and np.all(f["data"][()] == 1.5)
    with pytest.raises(RistrettoError, match="one batch per run"):
        net.forward()


# ---------------------------------------------------------------------- DummyData
def test_dummy_data_shapes_once_per_top_or_legacy_dims():
    """One shape serves every top, or one per top; the legacy 4-D fields likewise, each
    once or once per top. Constant tops are filled once, the others on every forward."""
    net = data_net('type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } '
                   'data_filler { type: "constant" value: 2 } data_filler { type: "gaussian" std: 1 } }')
    assert net.blobs["a"].shape == net.blobs["b"].shape == (2, 3)
    first = net.blobs["b"].data.copy()
    net.forward()
    assert np.all(net.blobs["a"].data == 2) and not np.array_equal(net.blobs["b"].data, first)
    net = data_net('type: "DummyData" top: "a" top: "b" dummy_data_param { num: 4 channels: 3 channels: 1 '
                   'height: 5 width: 6 width: 1 }')
    assert net.blobs["a"].shape == (4, 3, 5, 6) and net.blobs["b"].shape == (4, 1, 5, 1)


@pytest.mark.parametrize("param, message", [
    ("", "shape must be given once or once per top \\(2\\), not 0 times"),
    ("shape { dim: 1 } shape { dim: 1 } shape { dim: 1 }", "shape must be given once or once per top"),
    ("num: 1 channels: 1 height: 1", "width must be given once or once per top \\(2\\), not 0 times"),
    ("num: 1 num: 1 num: 1 channels: 1 height: 1 width: 1", "num must be given once or once per top"),
    ("shape { dim: 1 } num: 1", "either shape or num/channels/height/width"),
    ("shape { dim: 1 } data_filler { } data_filler { } data_filler { }", "data_filler must be given 0, 1 or 2")])
def test_dummy_data_without_a_shape_per_top_is_an_error(param, message):
    """As Caffe's setup checks: a shape (or every legacy dimension) once or once per top,
    never missing (unlike an Input layer's), and not both kinds."""
    with pytest.raises(RistrettoError, match=message):
        data_net(f'type: "DummyData" top: "a" top: "b" dummy_data_param {{ {param} }}')


# ---------------------------------------------------------------------- MemoryData
MEMORY = ('type: "MemoryData" top: "data" top: "label" '
          'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }')


def test_memory_data_reset_and_wraparound():
    net = data_net(MEMORY)
    layer = net.layers[0]
    with pytest.raises(RistrettoError, match="call reset"):
        net.forward()
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    layer.reset(data, [5, 6, 7, 8])
    got = forward_batches(net, 3)
    np.testing.assert_array_equal(got[0][0], data[:2])
    np.testing.assert_array_equal(got[1][0], data[2:])
    np.testing.assert_array_equal(got[2][0], data[:2])
    assert got[1][1].shape == (2, 1, 1, 1) and got[1][1].ravel().tolist() == [7, 8]  # Caffe's label shape
    with pytest.raises(RistrettoError, match="multiple of the batch size"):
        layer.reset(data[:3], [1, 2, 3])
    with pytest.raises(RistrettoError, match=r"N x 1 x 2 x 3"):
        layer.reset(np.zeros((2, 1, 3, 2)), [1, 2])


def test_memory_data_add_datum_and_mat_vectors_transform():
    net = data_net(MEMORY.replace('memory_data_param', 'transform_param { scale: 0.5 } memory_data_param'))
    layer = net.layers[0]
    items = [np.full((1, 2, 3), v, np.uint8) for v in (2, 4)]
    layer.add_datum_vector([chw_to_datum(x, label=k) for k, x in enumerate(items)])
    with pytest.raises(RistrettoError, match="consumed"):
        layer.add_datum_vector([chw_to_datum(x) for x in items])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0, 0, 0], [1, 2])
    layer.add_mat_vector([np.full((2, 3), 6, np.uint8), np.full((2, 3), 8, np.uint8)], [3, 4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[:, 0, 1, 2], [3, 4])
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), [3, 4])


# ---------------------------------------------------------------------- resume
def _roundtrip(state):
    return json.loads(json.dumps(state))  # states must survive JSON (they go into solver states)


@pytest.mark.parametrize("transform", ["scale: 0.5", "mirror: true crop_size: 2"])
def test_data_layer_resumes_with_the_same_next_batch(tmp_path, transform):
    make_db(tmp_path / "db", n=7, shape=(2, 3, 4))
    layer = db_layer(tmp_path / "db", 3, transform=transform)
    a = data_net(layer, TRAIN, seed=11)
    forward_batches(a, 3)
    state = _roundtrip(a.state_dict())
    expected = forward_batches(a, 4)
    b = data_net(layer, TRAIN, seed=99)  # another seed: the state carries the generator
    b.load_state_dict(state)
    got = forward_batches(b, 4)
    for (x, y), (u, v) in zip(expected, got):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


def test_image_data_and_hdf5_resume(tmp_path):
    write_list(tmp_path / "list.txt", [(str(p), i) for i, p in enumerate(CIFAR[:5])])
    layer = (f'type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
             f'"{tmp_path / "list.txt"}" batch_size: 3 shuffle: true }}')
    a = data_net(layer, seed=5)
    forward_batches(a, 2)
    state = _roundtrip(a.state_dict())
    expected = [lab.tolist() for _, lab in forward_batches(a, 3)]  # crosses reshuffles
    b = data_net(layer, seed=6)
    b.load_state_dict(state)
    assert [lab.tolist() for _, lab in forward_batches(b, 3)] == expected

    _h5(tmp_path / "a.h5", np.arange(3.0)[:, None], np.arange(3))
    _h5(tmp_path / "b.h5", np.arange(4.0)[:, None], 10 + np.arange(4))
    (tmp_path / "h5.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    h5layer = (f'type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ '
               f'source: "{tmp_path / "h5.txt"}" batch_size: 3 shuffle: true }}')
    a = data_net(h5layer, seed=5)
    forward_batches(a, 2)
    state = _roundtrip(a.state_dict())
    expected = [lab.tolist() for _, lab in forward_batches(a, 4)]
    b = data_net(h5layer, seed=8)
    b.load_state_dict(state)
    assert [lab.tolist() for _, lab in forward_batches(b, 4)] == expected


# ---------------------------------------------------------------------- prefetch
@pytest.mark.parametrize("transform", ["scale: 0.25", "mirror: true crop_size: 3"])
def test_prefetching_gives_the_same_batches(tmp_path, transform):
    make_db(tmp_path / "db", n=11, shape=(2, 4, 5))
    layer = db_layer(tmp_path / "db", 4, transform=transform)
    with prefetch.disabled():
        plain_net = data_net(layer, TRAIN, seed=4)
        assert not plain_net.layers[0]._feed._prefetcher.threaded
        plain = forward_batches(plain_net, 9)
    ahead_net = data_net(layer, TRAIN, seed=4)
    assert ahead_net.layers[0]._feed._prefetcher.threaded
    ahead = forward_batches(ahead_net, 9)
    for (x, y), (u, v) in zip(plain, ahead):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


def test_prefetch_errors_arrive_in_order(tmp_path):
    with DBWriter(tmp_path / "db", "lmdb") as w:
        for i in range(4):
            w.put(f"{i}", chw_to_datum(np.full((1, 1, 2), i, np.uint8), i).SerializeToString())
        w.put("4", b"\xff\xff garbage")
    net = data_net(db_layer(tmp_path / "db", 2))
    forward_batches(net, 2)  # records 0-3 are fine
    with pytest.raises(RistrettoError, match="record '4': not a valid Datum"):
        net.forward()


# ---------------------------------------------------------------------- cache
def test_cache_returns_identical_batches_without_rereading(tmp_path):
    make_db(tmp_path / "db", n=10, shape=(1, 4, 4))
    layer = db_layer(tmp_path / "db", 4, transform="scale: 0.5 crop_size: 2")
    with prefetch.disabled():
        reference = forward_batches(data_net(layer), 7)
        with cache_mod.batch_cache() as cache:
            first = data_net(layer)
            assert first.layers[0]._feed.cached
            got1 = forward_batches(first, 5)
            assert first.layers[0].records_read == 5 * 4
            second = data_net(layer)
            got2 = forward_batches(second, 7)
            assert second.layers[0].records_read == 2 * 4  # batches 0-4 came from the cache
            second.blobs["data"].data[...] = -1  # tops are private copies
            third = data_net(layer)
            got3 = forward_batches(third, 7)
            assert third.layers[0].records_read == 0
            assert cache.batches(first.layers[0]._feed._producer.cache_key) == 7
    for got in (got1, got2, got3):
        for (x, y), (u, v) in zip(reference, got):
            np.testing.assert_array_equal(x, u)
            np.testing.assert_array_equal(y, v)


def test_cache_skips_random_transforms_and_honours_the_byte_limit(tmp_path):
    make_db(tmp_path / "db", n=10, shape=(1, 4, 4))
    with cache_mod.batch_cache():
        assert not data_net(db_layer(tmp_path / "db", 4, transform="mirror: true")).layers[0]._feed.cached
        crop = db_layer(tmp_path / "db", 4, transform="crop_size: 2")
        assert not data_net(crop, TRAIN).layers[0]._feed.cached
        assert data_net(crop, TEST).layers[0]._feed.cached
    batch_bytes = 4 * 16 * 4 + 4 * 4
    layer = db_layer(tmp_path / "db", 4)
    with prefetch.disabled(), cache_mod.batch_cache(max_bytes=2 * batch_bytes) as cache:
        forward_batches(data_net(layer), 5)
        again = data_net(layer)
        out = forward_batches(again, 5)
        assert again.layers[0].records_read == 3 * 4 and cache.bytes == 2 * batch_bytes
    with prefetch.disabled():
        plain = forward_batches(data_net(layer), 5)
    for (x, _), (u, _) in zip(plain, out):
        np.testing.assert_array_equal(x, u)


def test_cache_with_prefetch_and_resume(tmp_path):
    make_db(tmp_path / "db", n=9, shape=(1, 2, 2))
    layer = db_layer(tmp_path / "db", 2)
    with cache_mod.batch_cache():
        a = data_net(layer)
        ref = forward_batches(a, 6)
        b = data_net(layer)
        forward_batches(b, 2)
        state = _roundtrip(b.state_dict())
        c = data_net(layer)
        c.load_state_dict(state)
        rest = forward_batches(c, 4)
    for (x, y), (u, v) in zip(ref[2:], rest):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)
