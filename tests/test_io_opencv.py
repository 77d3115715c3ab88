"""Caffemodels written here load in an independent Caffe reader (OpenCV's dnn module) and
give exactly the outputs of the original files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import test_data

from ristretto_cli.io import read_weights, write_caffemodel


def _images(folder: str, flags: int) -> tuple[list[np.ndarray], list[int]]:
    paths = sorted(test_data(f"images/{folder}").glob("*.png"))
    assert len(paths) == 8
    return [cv2.imread(str(p), flags) for p in paths], [int(p.stem.rsplit("_", 1)[1]) for p in paths]


def _forward(prototxt, caffemodel, blob) -> np.ndarray:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(blob)
    return net.forward()


def _mnist_blob():
    images, labels = _images("foolbox_mnist", cv2.IMREAD_GRAYSCALE)
    return cv2.dnn.blobFromImages(images, scalefactor=1 / 256.0), labels  # LeNet's training scale


def _cifar_blob():
    # Caffe's CIFAR-10 nets see RGB images as stored by convert_cifar_data, minus the mean.
    images, labels = _images("foolbox_cifar10", cv2.IMREAD_COLOR)
    blob = cv2.dnn.blobFromImages(images, mean=(125.3, 123.0, 113.9), swapRB=True)
    return blob, labels


CASES = [
    ("models/lenet/lenet.prototxt", "models/lenet/lenet_iter_10000.caffemodel", _mnist_blob, 8),
    ("models/lenet/lenet.prototxt", "models/lenet_v1/lenet_iter_10000.caffemodel", _mnist_blob, 8),
    ("models/cifar10_quick/cifar10_quick.prototxt",
     "models/cifar10_quick/cifar10_quick_iter_4000.caffemodel", _cifar_blob, 7),
    ("models/cifar10_quick/cifar10_quick.prototxt",
     "models/cifar10_quick_v1/cifar10_quick_iter_5000.caffemodel", _cifar_blob, 7),
]


@pytest.mark.parametrize("prototxt, caffemodel, make_input, min_correct", CASES)
def test_written_caffemodel_gives_the_same_outputs_in_opencv(prototxt, caffemodel, make_input,
                                                            min_correct, tmp_path):
    blob, labels = make_input()
    ours = tmp_path / "written.caffemodel"
    write_caffemodel(ours, read_weights(test_data(caffemodel)))  # V1 files are upgraded here
    original = _forward(test_data(prototxt), test_data(caffemodel), blob)
    rewritten = _forward(test_data(prototxt), ours, blob)
    assert original.shape == (8, 10)
    assert np.array_equal(rewritten, original)
    # and the outputs are meaningful, not e.g. all zeros from missing weights
    assert int((original.argmax(axis=1) == np.array(labels)).sum()) >= min_correct


def test_upgraded_v1_deploy_prototxt_also_runs_in_opencv(tmp_path):
    from ristretto_cli.io import read_net_param, write_net_text
    blob, _ = _mnist_blob()
    prototxt = tmp_path / "lenet_upgraded.prototxt"
    write_net_text(prototxt, read_net_param(test_data("models/lenet_v1/lenet.prototxt")))
    model = test_data("models/lenet_v1/lenet_iter_10000.caffemodel")
    assert np.array_equal(_forward(prototxt, model, blob),
                          _forward(test_data("models/lenet_v1/lenet.prototxt"), model, blob))
