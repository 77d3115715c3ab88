"""The pycaffe-compatible API: a typical pycaffe script runs after changing one import."""

from __future__ import annotations

import sys
import types

import cv2
import numpy as np
import pytest
from conftest import test_data
from solver_support import B0, W0, T, X, reference_train, solver_param

from ristretto_cli import pycaffe as caffe
from ristretto_cli.io import format_message, read_solver_param

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
    with pytest.raises(Exception, match="Input blob arguments do not match net inputs"):
        net.forward(nope=np.zeros(1))          # keywords must be exactly the inputs, as pycaffe's
    with pytest.raises(Exception, match="Input blob arguments do not match net inputs"):
        net.forward(data=np.zeros(net.blobs["data"].data.shape, np.float32), nope=np.zeros(1))
    with pytest.raises(Exception, match="Top diff arguments do not match net outputs"):
        net.backward(ip2=np.zeros(1))
    with pytest.raises(Exception, match="not batch sized"):
        net.backward(prob=np.zeros((net.blobs["prob"].data.shape[0] + 1, 10), np.float32))
    with pytest.raises(Exception, match="reshape the blob first"):
        net.forward(data=np.zeros((1, 1, 28, 28), np.float32))


# ----------------------------------------------------------------------------- batches
def test_forward_all_runs_any_number_of_items_in_batches():
    images, labels = mnist_images()                      # 8 items, in batches of 3 (3 + 3 + 2)
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    net.blobs["data"].reshape(3, 1, 28, 28)
    net.reshape()
    out = net.forward_all(data=images, blobs=["ip1"])
    assert set(out) == {"prob", "ip1"}
    assert out["prob"].shape == (8, 10) and out["ip1"].shape == (8, 500)
    whole = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    whole.blobs["data"].reshape(8, 1, 28, 28)
    whole.reshape()
    want = whole.forward(data=images, blobs=["ip1"])
    np.testing.assert_allclose(out["prob"], want["prob"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["ip1"], want["ip1"], rtol=1e-5, atol=1e-6)
    assert list(out["prob"].argmax(axis=1)) == labels
    with pytest.raises(Exception, match="inputs as keywords"):
        net.forward_all()


def test_forward_backward_all_gives_each_items_gradient():
    images, _ = mnist_images()
    dprob = np.random.default_rng(5).standard_normal((8, 10)).astype(np.float32)
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    net.blobs["data"].reshape(5, 1, 28, 28)
    net.reshape()
    outs, grads = net.forward_backward_all(data=images, prob=dprob)
    whole = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    whole.blobs["data"].reshape(8, 1, 28, 28)
    whole.reshape()
    want_out = whole.forward(data=images)["prob"].copy()
    want_grad = whole.backward(prob=dprob)["data"]
    assert outs["prob"].shape == (8, 10) and grads["data"].shape == (8, 1, 28, 28)
    np.testing.assert_allclose(outs["prob"], want_out, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(grads["data"], want_grad, rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- Classifier
CIFAR_DEPLOY = str(test_data("models/cifar10_quick/cifar10_quick.prototxt"))
CIFAR_WEIGHTS = str(test_data("models/cifar10_quick_v1/cifar10_quick_iter_5000.caffemodel"))
CIFAR_MEAN_RGB = np.array([125.3, 123.0, 113.9], np.float32)


def test_classifier_predicts_from_loaded_images_as_opencv_does():
    paths = sorted(test_data("images/foolbox_cifar10").glob("*.png"))
    labels = [int(p.stem.rsplit("_", 1)[1]) for p in paths]
    clf = caffe.Classifier(CIFAR_DEPLOY, CIFAR_WEIGHTS, mean=CIFAR_MEAN_RGB, raw_scale=255)
    images = [caffe.io.load_image(p) for p in paths]
    centre = clf.predict(images, oversample=False)
    ten = clf.predict(images)
    # OpenCV's importer on the same files: the images, and the images mirrored
    cv_net = cv2.dnn.readNetFromCaffe(CIFAR_DEPLOY, CIFAR_WEIGHTS)
    bgr = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    blob = cv2.dnn.blobFromImages(bgr, mean=(125.3, 123.0, 113.9), swapRB=True)
    cv_net.setInput(blob)
    plain = cv_net.forward().reshape(len(paths), 10)
    cv_net.setInput(np.ascontiguousarray(blob[:, :, :, ::-1]))
    mirrored = cv_net.forward().reshape(len(paths), 10)
    np.testing.assert_allclose(centre, plain, rtol=1e-4, atol=1e-5)
    # 32 x 32 images and crops: the five crops are the image, the other five its mirror
    np.testing.assert_allclose(ten, (plain + mirrored) / 2, rtol=1e-4, atol=1e-5)
    assert int((centre.argmax(axis=1) == np.array(labels)).sum()) >= 7


# ----------------------------------------------------------------------------- solvers
def _write_solver(tmp_path, kind: str) -> str:
    param = solver_param(f'type: "{kind}" base_lr: 0.05 momentum: 0.9 momentum2: 0.999 lr_policy: "fixed" '
                         f'max_iter: 6 random_seed: 1 snapshot_after_train: false '
                         f'snapshot_prefix: "{tmp_path}/snap"')
    path = tmp_path / "solver.prototxt"
    path.write_text(format_message(param))
    return str(path)


def _feed(solver):
    for net in [solver.net, *solver.test_nets]:
        net.blobs["x"].data[...] = X
        net.blobs["t"].data[...] = T
    solver.net.params["ip"][0].data[...] = W0
    solver.net.params["ip"][1].data[...] = B0


@pytest.mark.parametrize("make, kind", [
    (lambda f: caffe.get_solver(f), "Adam"),           # the file's type
    (lambda f: caffe.SGDSolver(f), "SGD"),             # the class's type, whatever the file says
    (lambda f: caffe.NesterovSolver(f), "Nesterov"),
    (lambda f: caffe.AdamSolver(f), "Adam"),
])
def test_solvers_step_as_the_spec_formulas(make, kind, tmp_path):
    path = _write_solver(tmp_path, "Adam")
    solver = make(path)
    assert solver.param.type == kind and solver.max_iter == 6
    _feed(solver)
    solver.step(4)
    assert solver.iter == 4
    param = read_solver_param(path)
    param.type = kind
    want, _ = reference_train(param, 4)
    for blob, w in zip(solver.net.params["ip"], want):
        np.testing.assert_allclose(blob.data, w, rtol=2e-5, atol=2e-6)
    solver.solve()
    assert solver.iter == 6
    solver.snapshot()
    assert (tmp_path / "snap_iter_6.caffemodel").exists()
    assert (tmp_path / "snap_iter_6.solverstate").exists()
    again = make(path)
    again.restore(str(tmp_path / "snap_iter_6.solverstate"))
    assert again.iter == 6
    for a, b in zip(again.net.params["ip"], solver.net.params["ip"]):
        np.testing.assert_array_equal(a.data, b.data)


def test_blob_and_layer_names():
    net = caffe.Net(DEPLOY, WEIGHTS, caffe.TEST)
    assert net.top_names["conv1"] == ["conv1"] and net.bottom_names["conv1"] == ["data"]
    assert net.top_names["relu1"] == ["ip1"] == net.bottom_names["relu1"]     # in place
    assert net.bottom_names["data"] == [] and net.top_names["prob"] == ["prob"]
    assert list(net.top_names) == net._layer_names
    assert net._blob_names == list(net.blobs) and net._blob_names[0] == "data"
    types = caffe.layer_type_list()
    assert types == sorted(types) and {"Convolution", "Python", "SoftmaxWithLoss"} <= set(types)


# ----------------------------------------------------------------------------- Detector
def test_detector_classifies_windows_as_opencv_does(tmp_path):
    """Four CIFAR-10 images tiled into one file; the windows are the tiles."""
    paths = sorted(test_data("images/foolbox_cifar10").glob("*.png"))[:4]
    bgr = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    cv2.imwrite(str(tmp_path / "tiles.png"), np.vstack([np.hstack(bgr[:2]), np.hstack(bgr[2:])]))
    windows = [np.array(w) for w in ((0, 0, 32, 32), (0, 32, 32, 64), (32, 0, 64, 32), (32, 32, 64, 64))]
    det = caffe.Detector(CIFAR_DEPLOY, CIFAR_WEIGHTS, mean=CIFAR_MEAN_RGB, raw_scale=255)
    found = det.detect_windows([(str(tmp_path / "tiles.png"), windows)])
    assert [d["window"] is w for d, w in zip(found, windows)] == [True] * 4
    assert {d["filename"] for d in found} == {str(tmp_path / "tiles.png")}
    cv_net = cv2.dnn.readNetFromCaffe(CIFAR_DEPLOY, CIFAR_WEIGHTS)
    cv_net.setInput(cv2.dnn.blobFromImages(bgr, mean=(125.3, 123.0, 113.9), swapRB=True))
    want = cv_net.forward().reshape(4, 10)
    np.testing.assert_allclose(np.stack([d["prediction"] for d in found]), want, rtol=1e-4, atol=1e-5)


def test_detector_context_crops_by_hand():
    """R-CNN's context box for a 32-pixel input and context_pad 4 (scale 32 / 24), worked by
    hand for a window inside the image and one at its corner."""
    det = caffe.Detector(CIFAR_DEPLOY, CIFAR_WEIGHTS, mean=CIFAR_MEAN_RGB, raw_scale=255, context_pad=4)
    im = np.random.default_rng(6).random((32, 32, 3)).astype(np.float32)
    # (8, 8, 24, 24): half 8.5, centre 16.5, box round(16.5 -+ 11.33) = (5, 5, 28, 28), 24 rows
    # of box for 32 input rows: the clipped 24 rows fill the input, no context past the image.
    np.testing.assert_array_equal(det.crop(im, (8, 8, 24, 24)), caffe.io.resize_image(im[5:28, 5:28], (32, 32)))
    # (0, 0, 16, 16): box (-3, -3, 20, 20); 3 rows past the image -> round(3 * 32 / 24) = 4
    # input rows of mean; the clipped box's 21 rows -> round(21 * 32 / 24) = 28 input rows.
    crop = det.crop(im, (0, 0, 16, 16))
    mean_rgb = CIFAR_MEAN_RGB / 255
    np.testing.assert_allclose(crop[:4], np.broadcast_to(mean_rgb, (4, 32, 3)), rtol=1e-6)
    np.testing.assert_allclose(crop[:, :4], np.broadcast_to(mean_rgb, (32, 4, 3)), rtol=1e-6)
    np.testing.assert_array_equal(crop[4:, 4:], caffe.io.resize_image(im[0:20, 0:20], (28, 28)))
    plain = caffe.Detector(CIFAR_DEPLOY, CIFAR_WEIGHTS)
    np.testing.assert_array_equal(plain.crop(im, (2, 3, 10, 12)), im[2:10, 3:12])


def test_detector_selective_search_asks_the_proposal_package(tmp_path, monkeypatch):
    """pycaffe's Detector.detect_selective_search (detector.py) gets windows from the
    selective_search_ijcv_with_python package (``get_windows(absolute paths,
    cmd='selective_search_rcnn')``) and gives them to detect_windows; without the package,
    an ImportError."""
    image = sorted(test_data("images/foolbox_cifar10").glob("*.png"))[0]
    det = caffe.Detector(CIFAR_DEPLOY, CIFAR_WEIGHTS, mean=CIFAR_MEAN_RGB, raw_scale=255)
    with pytest.raises(ImportError, match="selective_search_ijcv_with_python"):
        det.detect_selective_search([str(image)])
    calls = []
    windows = [np.array([[0, 0, 32, 32], [4, 4, 20, 28]])]

    def get_windows(image_fnames, cmd):
        calls.append((image_fnames, cmd))
        return windows

    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python",
                        types.SimpleNamespace(get_windows=get_windows))
    monkeypatch.chdir(image.parent)
    found = det.detect_selective_search([image.name])
    assert calls == [([str(image)], "selective_search_rcnn")]
    want = det.detect_windows([(str(image), windows[0])])
    assert [d["filename"] for d in found] == [str(image)] * 2
    for mine, theirs in zip(found, want):
        np.testing.assert_array_equal(mine["window"], theirs["window"])
        np.testing.assert_array_equal(mine["prediction"], theirs["prediction"])


# ----------------------------------------------------------------------------- lower-level surface
def test_underscored_api_hdf5_weights_and_network_file_keyword(tmp_path):
    """pycaffe's lower-level members: ``_forward``/``_backward`` by layer index give what
    ``forward``/``backward`` give, ``_inputs``/``_outputs`` index ``_blob_names``,
    ``_blob_loss_weights`` follows the blobs; weights saved as HDF5 load back equal;
    ``network_file=`` names the model."""
    images, _ = mnist_images()
    net = caffe.Net(network_file=DEPLOY, weights=WEIGHTS, phase=caffe.TEST)
    net.blobs["data"].reshape(len(images), 1, 28, 28)
    net.reshape()
    want = net.forward(data=images)["prob"].copy()
    dx = net.backward(prob=np.ones_like(want))["data"].copy()
    net.blobs["data"].data[...] = images
    net._forward(0, len(net.layers) - 1)
    np.testing.assert_array_equal(net.blobs["prob"].data, want)
    net.blobs["prob"].diff[...] = 1
    net._backward(len(net.layers) - 1, 0)
    np.testing.assert_array_equal(net.blobs["data"].diff, dx)
    assert [net._blob_names[i] for i in net._inputs] == ["data"]
    assert [net._blob_names[i] for i in net._outputs] == ["prob"]
    assert net._blob_loss_weights == [0.0] * len(net._blob_names)
    net.params["ip2"][0].diff[...] = 3
    net.clear_param_diffs()
    assert not net.params["ip2"][0].diff.any()
    net.save_hdf5(str(tmp_path / "w.caffemodel.h5"))
    other = caffe.Net(DEPLOY, caffe.TEST)
    other.load_hdf5(str(tmp_path / "w.caffemodel.h5"))
    for name, blobs in net.params.items():
        for mine, theirs in zip(blobs, other.params[name]):
            np.testing.assert_array_equal(mine.data, theirs.data)


def test_set_input_arrays_feeds_a_memory_data_net(tmp_path):
    model = tmp_path / "memory.prototxt"
    model.write_text('layer { name: "d" type: "MemoryData" top: "data" top: "label" '
                     'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }\n'
                     'layer { name: "p" type: "Power" bottom: "data" top: "twice" power_param { scale: 2 } }\n')
    net = caffe.Net(str(model), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.array([5, 6, 7, 8], np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["twice"].data, 2 * data[:2])
    assert list(net.blobs["label"].data.ravel()) == [5, 6]
    deploy = caffe.Net(DEPLOY, caffe.TEST)
    with pytest.raises(Exception, match="first layer is a MemoryData layer"):
        deploy.set_input_arrays(data, np.zeros(4, np.float32))


ANONYMOUS_LOSSES = """name: "anonymous"
layer { name: "data" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" }
layer { name: "half" type: "EuclideanLoss" bottom: "x" bottom: "x" loss_weight: 0.5 }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" }
"""


def test_anonymous_loss_tops_are_listed_as_automatic(tmp_path):
    """Caffe names a loss layer's missing top '(automatic)' in the net's blob list (never an
    output); pycaffe's ``blobs`` dict then keeps the first place and the last blob."""
    path = tmp_path / "net.prototxt"
    path.write_text(ANONYMOUS_LOSSES)
    net = caffe.Net(str(path), caffe.TRAIN)
    splits = ["x_data_0_split_0", "x_data_0_split_1", "x_data_0_split_2", "x_data_0_split_3",
              "label_data_1_split_0", "label_data_1_split_1"]
    names = ["x", "label", *splits, "(automatic)", "(automatic)", "acc"]
    assert net._blob_names == names
    assert list(net.blobs) == ["x", "label", *splits, "(automatic)", "acc"]
    assert net._blob_loss_weights == [0.0] * 8 + [1.0, 0.5, 0.0]
    assert net.outputs == ["acc"] and net._outputs == [10]
    net.blobs["x"].data[...] = [[1, 2, 3], [3, 2, 1]]
    net.blobs["label"].data[...] = [2, 0]
    assert net.forward() == {"acc": 1.0}
    # the EuclideanLoss of x against itself is 0; it is the last '(automatic)' blob
    assert net.blobs["(automatic)"].data == 0.0
    softmax = np.log(np.exp([1, 2, 3]).sum()) - 3            # both rows: -log p(right class)
    loss_blobs = [b for name, b, _ in net.engine.blob_entries if name == "(automatic)"]
    assert loss_blobs[0].data == pytest.approx(softmax, rel=1e-6)
