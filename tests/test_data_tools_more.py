"""convert_cifar_data, convert_mnist_siamese_data, extract_features and
upgrade_solver_proto_text, mostly through the command line."""

from __future__ import annotations

import os
import re

import cv2
import numpy as np
from conftest import test_data
from data_support import message, run_cli

from ristretto_cli.data.db import iterate_db
from ristretto_cli.data.siamese import DEFAULT_SEED, convert_mnist_siamese_data
from ristretto_cli.data.tools import convert_mnist_data
from ristretto_cli.proto import caffe_pb2

MNIST_PNGS = sorted(test_data("images/foolbox_mnist").glob("mnist_*.png"))
LENET = test_data("models/lenet")


def records(path, backend="lmdb"):
    return [(k.decode(), v) for k, v in iterate_db(path, backend)]


def datums(path, backend="lmdb"):
    return [(k, caffe_pb2.Datum.FromString(v)) for k, v in records(path, backend)]


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1          # negative int32 values are 10-byte varints
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def raw_datum_bytes(channels, height, width, data: bytes, label: int) -> bytes:
    """A raw Datum encoded by hand: fields 1, 2, 3 (varints), 4 (bytes), 5 (varint), in
    field order, the way protobuf writes them."""
    return (b"\x08" + varint(channels) + b"\x10" + varint(height) + b"\x18" + varint(width)
            + b"\x22" + varint(len(data)) + data + b"\x28" + varint(label))


def write_mnist_idx(folder) -> tuple[str, str, np.ndarray, np.ndarray]:
    """The bundled MNIST digits as raw IDX files; (images path, labels path, images, labels)."""
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in MNIST_PNGS])
    labels = np.array([int(p.stem.rsplit("_", 1)[1]) for p in MNIST_PNGS], np.uint8)
    image_path, label_path = os.path.join(folder, "images-idx3"), os.path.join(folder, "labels-idx1")
    with open(image_path, "wb") as f:
        f.write(np.array([2051, len(images), 28, 28], ">u4").tobytes() + images.tobytes())
    with open(label_path, "wb") as f:
        f.write(np.array([2049, len(labels)], ">u4").tobytes() + labels.tobytes())
    return image_path, label_path, images, labels


# ---------------------------------------------------------------------- convert_cifar_data
CIFAR_FILES = {"data_batch_1.bin": 3, "data_batch_2.bin": 2, "data_batch_3.bin": 1,
               "data_batch_4.bin": 2, "data_batch_5.bin": 1, "test_batch.bin": 4}


def write_cifar(folder) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    contents = {}
    for name, n in CIFAR_FILES.items():
        data = rng.integers(0, 256, size=(n, 3073), dtype=np.uint8)
        data[:, 0] = rng.integers(0, 10, size=n)
        contents[name] = data.tobytes()
    contents["data_batch_2.bin"] = b"\xc8" + contents["data_batch_2.bin"][1:]   # label byte 200
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return contents


def test_convert_cifar_data_records_are_the_file_records(tmp_path, capsys):
    contents = write_cifar(tmp_path)
    status, lines = run_cli(capsys, "convert_cifar_data", tmp_path, tmp_path / "out", "lmdb")
    assert status == 0, lines[-2:]
    assert [message(x) for x in lines] == ["Writing Training data"] + [
        f"Training Batch {b}" for b in range(1, 6)] + ["Writing Testing data"]
    for db, names in (("cifar10_train_lmdb", [f"data_batch_{b}.bin" for b in range(1, 6)]),
                      ("cifar10_test_lmdb", ["test_batch.bin"])):
        file_records = [contents[n][i:i + 3073] for n in names for i in range(0, len(contents[n]), 3073)]
        got = records(tmp_path / "out" / db)
        assert [k for k, _ in got] == [f"{i:05d}" for i in range(len(file_records))]
        for (_, value), rec in zip(got, file_records):
            label = int(np.int8(np.uint8(rec[0])))      # read through a signed char, as Caffe
            assert value == raw_datum_bytes(3, 32, 32, rec[1:], label)
    assert caffe_pb2.Datum.FromString(records(tmp_path / "out" / "cifar10_train_lmdb")[3][1]).label == -56


def test_convert_cifar_data_errors_write_nothing(tmp_path, capsys):
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4.bin").write_bytes(b"\x00" * 3074)
    status, lines = run_cli(capsys, "convert_cifar_data", tmp_path, tmp_path / "out", "lmdb")
    assert status == 1 and len(lines) == 1
    assert lines[0].startswith("ristretto: error: ") and "data_batch_4.bin" in lines[0]
    assert "truncated" in lines[0] and not (tmp_path / "out").exists()
    os.remove(tmp_path / "data_batch_4.bin")
    status, lines = run_cli(capsys, "convert_cifar_data", tmp_path, tmp_path / "out", "lmdb")
    assert status == 1 and lines == [f"ristretto: error: {tmp_path / 'data_batch_4.bin'}: "
                                     "Unable to open train file #4: No such file or directory"]
    write_cifar(tmp_path)
    status, lines = run_cli(capsys, "convert_cifar_data", tmp_path, tmp_path / "out", "hdf5")
    assert status == 1 and "unknown DB backend 'hdf5'" in lines[0]
    # An existing test DB: the train DB is not left behind either.
    (tmp_path / "out" / "cifar10_test_leveldb").mkdir(parents=True)
    status, lines = run_cli(capsys, "convert_cifar_data", tmp_path, tmp_path / "out", "leveldb")
    assert status == 1 and "already exists" in lines[-1]
    assert sorted(os.listdir(tmp_path / "out")) == ["cifar10_test_leveldb"]
    os.rmdir(tmp_path / "out" / "cifar10_test_leveldb")
    status, _ = run_cli(capsys, "convert_cifar_data", tmp_path, tmp_path / "out", "leveldb")
    assert status == 0 and len(records(tmp_path / "out" / "cifar10_test_leveldb", "leveldb")) == 4


# ---------------------------------------------------------------------- convert_mnist_siamese_data
def test_convert_mnist_siamese_data_pairs(tmp_path, capsys):
    image_path, label_path, images, labels = write_mnist_idx(tmp_path)
    status, lines = run_cli(capsys, "convert_mnist_siamese_data", image_path, label_path, tmp_path / "pairs")
    assert status == 0, lines[-2:]
    msgs = [message(x) for x in lines]
    assert msgs[:2] == [f"A total of {len(images)} items.", "Rows: 28 Cols: 28"]
    assert (tmp_path / "pairs" / "CURRENT").exists()        # LevelDB, as Caffe's tool
    got = datums(tmp_path / "pairs", "leveldb")
    assert [k for k, _ in got] == [f"{i:08d}" for i in range(len(images))]
    flat = {images[i].tobytes(): i for i in range(len(images))}
    assert len(flat) == len(images)
    for _, d in got:
        assert (d.channels, d.height, d.width) == (2, 28, 28) and d.HasField("label")
        first, second = flat[d.data[:784]], flat[d.data[784:]]
        assert d.label == int(labels[first] == labels[second])
    # the same seed gives the same DB; another seed other pairs; the default is the documented one
    convert_mnist_siamese_data(image_path, label_path, tmp_path / "again", "lmdb", seed=DEFAULT_SEED,
                               progress=False)
    assert records(tmp_path / "again") == records(tmp_path / "pairs", "leveldb")
    convert_mnist_siamese_data(image_path, label_path, tmp_path / "other", "lmdb", seed=5, progress=False)
    assert records(tmp_path / "other") != records(tmp_path / "again")
    status, _ = run_cli(capsys, "convert_mnist_siamese_data", image_path, label_path, tmp_path / "s5",
                        "-seed=5", "--backend=lmdb")
    assert status == 0 and records(tmp_path / "s5") == records(tmp_path / "other")


# ---------------------------------------------------------------------- extract_features
def lenet_test_net(tmp_path, batch_size=3) -> str:
    """LeNet's train/test net with its TEST data layer reading an LMDB of the bundled digits."""
    image_path, label_path, _, _ = write_mnist_idx(tmp_path)
    db = tmp_path / "digits_lmdb"
    convert_mnist_data(image_path, label_path, db, progress=False)
    text = (LENET / "lenet_train_test.prototxt").read_text()
    text = text.replace('"examples/mnist/mnist_test_lmdb"', f'"{db}"').replace("batch_size: 100",
                                                                                f"batch_size: {batch_size}")
    model = tmp_path / "lenet.prototxt"
    model.write_text(text)
    return str(model)


def test_extract_features_equals_a_pycaffe_forward(tmp_path, capsys):
    from ristretto_cli import pycaffe as caffe
    model = lenet_test_net(tmp_path)
    weights = str(LENET / "lenet_iter_10000.caffemodel")
    dbs = [str(tmp_path / n) for n in ("ip2_db", "conv1_db", "loss_db")]
    status, lines = run_cli(capsys, "extract_features", weights, model, "ip2,conv1,loss", ",".join(dbs), 3,
                            "lmdb")
    assert status == 0, lines[-2:]
    msgs = [message(x) for x in lines]
    assert msgs[0] == "Using CPU" and lines[0].startswith("E")
    assert [m for m in msgs if m.startswith(("Opening", "Extract", "Success"))] == [
        *(f"Opening dataset {d}" for d in dbs), "Extracting Features",
        "Extracted features of 9 query images for feature blob ip2",
        "Extracted features of 9 query images for feature blob conv1",
        "Extracted features of 3 query images for feature blob loss",
        "Successfully extracted the features!"]

    net = caffe.Net(model, weights, caffe.TEST)
    want = {"ip2": [], "conv1": [], "loss": []}
    for _ in range(3):
        net.forward()
        for name in want:
            values = net.blobs[name].data
            want[name].extend(values.reshape(values.shape[0] if values.ndim else 1, -1).copy())
    for name, db, shape in zip(want, dbs, [(10, 1, 1), (20, 24, 24), (1, 1, 1)]):
        got = datums(db)
        assert [k for k, _ in got] == [f"{i:010d}" for i in range(len(want[name]))]
        for (_, d), values in zip(got, want[name]):
            assert (d.channels, d.height, d.width) == shape
            assert not d.HasField("label") and not d.HasField("data") and not d.HasField("encoded")
            np.testing.assert_array_equal(np.array(d.float_data, np.float32), values)
    # 9 items from 8 digits: the data layer wrapped around, so item 8 repeats item 0
    np.testing.assert_array_equal(want["ip2"][8], want["ip2"][0])


def test_extract_features_gpu_and_errors(tmp_path, capsys):
    model = lenet_test_net(tmp_path)
    weights = str(LENET / "lenet_iter_10000.caffemodel")
    status, lines = run_cli(capsys, "extract_features", weights, model, "ip1", tmp_path / "gpu", 1, "leveldb",
                            "GPU", 0)
    assert status == 0 and len(datums(tmp_path / "gpu", "leveldb")) == 3
    warnings = [message(x) for x in lines if x.startswith("W")]
    assert warnings == ["no GPU backend is available: running on the CPU (GPU 0 ignored)"]

    def one_line_error(*args) -> str:
        status, lines = run_cli(capsys, "extract_features", weights, model, *args)
        assert status == 1 and lines[-1].startswith("ristretto: error: ")
        assert not any(x.startswith("ristretto: error") for x in lines[:-1])
        return lines[-1]

    err = one_line_error("ip1,ip2", tmp_path / "a", 1, "lmdb")
    assert err.endswith("the number of blob names and dataset names must be equal (2 vs. 1)")
    err = one_line_error("ip1,fc7", f"{tmp_path / 'a'},{tmp_path / 'b'}", 1, "lmdb")
    assert f"Unknown feature blob name 'fc7' in the network {model}" in err
    assert one_line_error("ip1", tmp_path / "a", -1, "lmdb").endswith("NUM_MINI_BATCHES must be >= 0, got -1")
    assert "unknown mode 'TPU'" in one_line_error("ip1", tmp_path / "a", 1, "lmdb", "TPU")
    assert "the same DB is named twice" in one_line_error("ip1,ip2", f"{tmp_path / 'a'},{tmp_path / 'a'}/", 1,
                                                          "lmdb")
    # the second DB exists: the first is not written either
    (tmp_path / "b").mkdir()
    err = one_line_error("ip1,ip2", f"{tmp_path / 'a'},{tmp_path / 'b'}", 1, "lmdb")
    assert "already exists" in err
    assert not (tmp_path / "a").exists()
    assert not [n for n in os.listdir(tmp_path) if re.match(r"\.a\..*\.tmp$", n)]


# ---------------------------------------------------------------------- upgrade_solver_proto_text
LEGACY_SOLVER = """net: "lenet_train_test.prototxt"
base_lr: 0.01
momentum: 0.95
lr_policy: "fixed"
max_iter: 100
solver_type: NESTEROV
"""


def test_upgrade_solver_proto_text(tmp_path, capsys):
    from ristretto_cli.io import read_solver_param
    old = tmp_path / "old_solver.prototxt"
    old.write_text(LEGACY_SOLVER)
    new = tmp_path / "new_solver.prototxt"
    status, lines = run_cli(capsys, "upgrade_solver_proto_text", old, new)
    assert status == 0, lines
    assert message(lines[-1]) == f"Wrote upgraded SolverParameter text proto to {new}"
    text = new.read_text()
    assert 'type: "Nesterov"' in text and "solver_type" not in text
    assert "snapshot_prefix" not in text            # only the type is upgraded, as Caffe's tool
    parsed = read_solver_param(new, upgrade=False)
    assert parsed.type == "Nesterov" and parsed.momentum == np.float32(0.95) and parsed.max_iter == 100
    # a current solver is written as is, with Caffe's error-level note
    status, lines = run_cli(capsys, "upgrade_solver_proto_text", new, tmp_path / "same.prototxt")
    assert status == 0 and (tmp_path / "same.prototxt").read_text() == text
    assert any(x.startswith("E") and message(x) == f"File already in latest proto format: {new}" for x in lines)
    # both fields: an error, nothing written
    both = tmp_path / "both.prototxt"
    both.write_text(LEGACY_SOLVER + 'type: "Adam"\n')
    status, lines = run_cli(capsys, "upgrade_solver_proto_text", both, tmp_path / "out.prototxt")
    assert status == 1 and "cannot be both specified" in lines[-1]
    assert not (tmp_path / "out.prototxt").exists()
