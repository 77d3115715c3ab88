"""convert_imageset, compute_image_mean and the convert_mnist_data command line."""

from __future__ import annotations

import cv2
import lmdb
import numpy as np
import pytest
from conftest import shared_data, test_data
from data_support import message, run_cli  # noqa: F401

from ristretto_cli.data.datum import image_to_datum
from ristretto_cli.data.db import iterate_db
from ristretto_cli.data.tools import compute_image_mean, convert_imageset, load_mnist
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import read_blob_file, read_blob_proto
from ristretto_cli.proto import caffe_pb2

CIFAR = sorted(test_data("images/foolbox_cifar10").glob("*.png"))


def records(path, backend="lmdb"):
    return [(k.decode(), caffe_pb2.Datum.FromString(v)) for k, v in iterate_db(path, backend)]


def image_list(tmp_path, names, labels=None) -> str:
    lst = tmp_path / "list.txt"
    labels = labels if labels is not None else range(len(names))
    lst.write_text("".join(f"{n} {lab}\n" for n, lab in zip(names, labels)))
    return str(lst)


def test_convert_imageset_raw_keys_and_bytes(tmp_path, capsys):
    root = str(CIFAR[0].parent) + "/"
    lst = image_list(tmp_path, [p.name for p in CIFAR[:4]], [3, 8, 8, 0])
    status, lines = run_cli(capsys, "convert_imageset", root, lst, tmp_path / "db")
    assert status == 0, lines[-2:]
    msgs = [message(x) for x in lines]
    assert "A total of 4 images." in msgs and msgs[-1] == "Processed 4 files."
    recs = records(tmp_path / "db")
    assert [k for k, _ in recs] == [f"{i:08d}_{p.name}" for i, p in enumerate(CIFAR[:4])]
    for (_, d), p, label in zip(recs, CIFAR, [3, 8, 8, 0]):
        want = image_to_datum(cv2.imread(str(p)), label)
        assert d.SerializeToString() == want.SerializeToString()
        assert d.HasField("encoded") and not d.encoded  # CVMatToDatum writes encoded: false
        assert (d.channels, d.height, d.width, d.label) == (3, 32, 32, label)


def test_convert_imageset_encoded_gray_resize_shuffle(tmp_path, capsys):
    cat = str(shared_data("images/caffe/cat.jpg"))
    names = [str(CIFAR[0]), cat]
    lst = image_list(tmp_path, names)
    # --encoded with matching extensions and no resize: the file bytes themselves.
    status, _ = run_cli(capsys, "convert_imageset", "", lst, tmp_path / "enc", "--encoded")
    assert status == 0
    recs = records(tmp_path / "enc")
    assert recs[0][1].data == CIFAR[0].read_bytes() and recs[1][1].data == open(cat, "rb").read()
    assert recs[0][1].encoded and not recs[0][1].HasField("channels")
    # --encode_type=png re-encodes the jpg (and implies --encoded).
    status, lines = run_cli(capsys, "convert_imageset", "", lst, tmp_path / "png", "--encode_type=png")
    assert status == 0 and any("assuming encoded=true" in x for x in lines)
    d = records(tmp_path / "png")[1][1]
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(cat))
    # gflags spellings: -gray=true, --resize_height/--resize_width, -backend=leveldb
    status, _ = run_cli(capsys, "convert_imageset", "", lst, tmp_path / "gray", "-gray=true",
                        "--resize_height=10", "--resize_width=12", "-backend=leveldb")
    assert status == 0
    d = records(tmp_path / "gray", "leveldb")[1][1]
    want = cv2.resize(cv2.imread(cat, cv2.IMREAD_GRAYSCALE), (12, 10))
    assert (d.channels, d.height, d.width) == (1, 10, 12) and d.data == want.tobytes()
    # --shuffle is seeded: the same seed gives the same DB; keys keep the new line order.
    many = image_list(tmp_path, [str(p) for p in CIFAR])
    for name in ("s1", "s2"):
        convert_imageset("", many, tmp_path / name, shuffle=True, seed=7, progress=False)
    s1, s2 = records(tmp_path / "s1"), records(tmp_path / "s2")
    assert [k for k, _ in s1] == [k for k, _ in s2]
    assert [k.split("_", 1)[1] for k, _ in s1] != [str(p) for p in CIFAR]
    assert sorted(k.split("_", 1)[1] for k, _ in s1) == sorted(str(p) for p in CIFAR)
    assert [k[:8] for k, _ in s1] == [f"{i:08d}" for i in range(len(CIFAR))]


def test_convert_imageset_errors(tmp_path):
    cat = str(shared_data("images/caffe/cat.jpg"))
    with pytest.raises(RistrettoError, match="incorrect image size 3 x 360 x 480"):
        convert_imageset("", image_list(tmp_path, [str(CIFAR[0]), cat]), tmp_path / "a", check_size=True,
                         progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(RistrettoError) as e:
        convert_imageset("", image_list(tmp_path, [str(tmp_path / "gone.jpg")]), tmp_path / "b",
                         progress=False)
    assert "gone.jpg" in str(e.value) and "could not load image" in str(e.value)
    lst = tmp_path / "l.txt"
    lst.write_text(f"{CIFAR[0]} 1\n{CIFAR[1]} 2.5\n")
    with pytest.raises(RistrettoError) as e:
        convert_imageset("", str(lst), tmp_path / "c", progress=False)
    assert str(e.value).startswith(f"{lst}:2: the label '2.5' is not an integer")
    with pytest.raises(RistrettoError, match="no extension"):
        convert_imageset("", image_list(tmp_path, ["noext"]), tmp_path / "d", encoded=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.txt", "list.txt"]


@pytest.mark.slow
def test_compute_image_mean_of_the_mnist_lmdb(tmp_path, capsys):
    out = tmp_path / "mean.binaryproto"
    status, lines = run_cli(capsys, "compute_image_mean", shared_data("reference/mnist_test_lmdb"), out,
                            "--backend=lmdb")
    assert status == 0, lines[-2:]
    pixels, _ = load_mnist(shared_data("mnist/t10k-images-idx3-ubyte.gz"),
                           shared_data("mnist/t10k-labels-idx1-ubyte.gz"))
    # Float32 sums of integers below 2^24 are exact, so the mean is sum / count in float32.
    want = (pixels.sum(0, dtype=np.int64).astype(np.float32) / np.float32(10000))[None]
    mean = read_blob_file(out)
    assert mean.shape == (1, 1, 28, 28)
    np.testing.assert_array_equal(mean[0], want)
    bp = read_blob_proto(out)
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 1, 28, 28)
    msgs = [message(x) for x in lines]
    assert "Number of channels: 1" in msgs
    chan = np.cumsum(want.reshape(-1), dtype=np.float32)[-1] / np.float32(784)
    assert f"mean_value channel [0]: {chan:g}" in msgs
    assert msgs[-1].startswith("mean_value channel [0]: 33.79")


def test_compute_image_mean_of_encoded_color_images(tmp_path):
    names = [str(p) for p in CIFAR[:3]]
    convert_imageset("", image_list(tmp_path, names), tmp_path / "db", encoded=True, progress=False)
    mean = compute_image_mean(tmp_path / "db", tmp_path / "m.binaryproto", progress=False)
    want = np.zeros((3, 32, 32), np.float32)
    for n in names:
        want += cv2.imread(n).transpose(2, 0, 1)
    np.testing.assert_array_equal(mean, want / np.float32(3))
    # The mean file feeds the transformer of a Data layer over that DB.
    from data_support import data_net
    net = data_net(f'type: "Data" top: "data" '
                   f'transform_param {{ mean_file: "{tmp_path / "m.binaryproto"}" }} '
                   f'data_param {{ source: "{tmp_path / "db"}" batch_size: 3 backend: LMDB }}')
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data[1], cv2.imread(names[1]).transpose(2, 0, 1) - mean)
    with pytest.raises(RistrettoError, match="empty"):
        env = lmdb.open(str(tmp_path / "empty"))
        env.close()
        compute_image_mean(tmp_path / "empty", None, progress=False)


def test_convert_mnist_data_cli(tmp_path, capsys):
    images = shared_data("mnist/t10k-images-idx3-ubyte.gz")
    labels = shared_data("mnist/t10k-labels-idx1-ubyte.gz")
    status, lines = run_cli(capsys, "convert_mnist_data", images, labels, tmp_path / "db",
                            "--backend=leveldb")
    assert status == 0
    assert [message(x) for x in lines[-3:]] == ["A total of 10000 items.", "Rows: 28 Cols: 28",
                                                 "Processed 10000 files."]
    assert sum(1 for _ in iterate_db(tmp_path / "db", "leveldb")) == 10000
    status, lines = run_cli(capsys, "convert_mnist_data", images, labels, tmp_path / "db")
    assert status == 1 and lines[-1].endswith("cannot create the DB: the path already exists")
