"""The pycaffe-compatible API: a typical pycaffe script runs after changing one import."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import test_data

from ristretto_cli import pycaffe as caffe

DEPLOY = str(test_data("models/lenet/lenet.prototxt"))
WEIGHTS = str(test_data("models/lenet/lenet_iter_10000.caffemodel"))


def mnist_images():
    files = sorted(test_data("images/foolbox_mnist").glob("mnist_*.png"))
    images = np.stack([cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]).astype(np.float32)
    labels = [int(f.stem.split("_")[-1]) for f in files]
    return images[:, None] / 256.0, labels


def test_pycaffe_style_classification_script():
    caffe.set_mode_cpu()
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    images, labels = mnist_images()
    assert net.inputs == ["data"]
    assert net.outputs == ["prob"]
    net.blobs["data"].reshape(len(images), 1, 28, 28)
    net.reshape()
    out = net.forward(data=images)
    assert set(out) == {"prob"}
    assert out["prob"].shape == (len(images), 10)
    assert list(out["prob"].argmax(axis=1)) == labels
    np.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-6)
    assert [b.data.shape for b in net.params["conv1"]] == [(20, 1, 5, 5), (20,)]
    assert list(net.params) == ["conv1", "conv2", "ip1", "ip2"]
    assert net.blobs["conv1"].num == len(images) and net.blobs["conv1"].channels == 20
    assert net.blobs["ip2"].height == 1 and net.blobs["ip2"].width == 1
    assert [layer.type for layer in net.layers][:2] == ["Input", "Convolution"]


def test_keyword_weights_form_and_matches_opencv():
    images, _ = mnist_images()
    net = caffe.Net(DEPLOY, caffe.TEST, weights=WEIGHTS)
    net.blobs["data"].reshape(*images.shape)
    net.reshape()
    net.blobs["data"].data[...] = images
    ours = net.forward()["prob"].copy()
    cv_net = cv2.dnn.readNetFromCaffe(DEPLOY, WEIGHTS)
    cv_net.setInput(images)
    theirs = cv_net.forward()
    np.testing.assert_allclose(ours, theirs.reshape(ours.shape), rtol=1e-4, atol=1e-6)


def test_backward_and_save_roundtrip(tmp_path):
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TRAIN)
    net.blobs["data"].data[...] = np.random.default_rng(0).random(net.blobs["data"].shape)
    net.forward()
    grads = net.backward(prob=np.ones(net.blobs["prob"].shape, np.float32))
    assert set(grads) == {"data"}
    path = tmp_path / "copy.caffemodel"
    net.save(str(path))
    again = caffe.Net(DEPLOY, str(path), caffe.TEST)
    for name in net.params:
        for a, b in zip(net.params[name], again.params[name]):
            np.testing.assert_array_equal(a.data, b.data)


def test_semantics_keyword_and_bad_inputs():
    with pytest.raises(Exception, match="semantics"):
        caffe.Net(DEPLOY, WEIGHTS, caffe.TEST, semantics="gpu")
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST, semantics="caffe-cpu")
    with pytest.raises(Exception, match="not an input"):
        net.forward(nope=np.zeros(1))
    with pytest.raises(Exception, match="reshape the blob first"):
        net.forward(data=np.zeros((1, 1, 28, 28), np.float32))
