"""pycaffe's caffe.io: image reading, resizing, ten crops, the Transformer, proto <-> array
conversions; checked against OpenCV's own image decoding and blob layout, hand-computed
values and round trips."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import test_data

from ristretto_cli import pycaffe as caffe
from ristretto_cli.proto import caffe_pb2

CIFAR = sorted(test_data("images/foolbox_cifar10").glob("*.png"))
MNIST = sorted(test_data("images/foolbox_mnist").glob("*.png"))
CIFAR_DEPLOY = str(test_data("models/cifar10_quick/cifar10_quick.prototxt"))
CIFAR_WEIGHTS = str(test_data("models/cifar10_quick_v1/cifar10_quick_iter_5000.caffemodel"))
# Per-channel means (R, G, B) of CIFAR-10's training images (see opencv_support.py).
CIFAR_MEAN_RGB = np.array([125.3, 123.0, 113.9], np.float32)


def _labels(paths):
    return [int(p.stem.rsplit("_", 1)[1]) for p in paths]


# ----------------------------------------------------------------------------- load_image
def test_load_image_reads_rgb_in_unit_range():
    img = caffe.io.load_image(CIFAR[0])
    bgr = cv2.imread(str(CIFAR[0]), cv2.IMREAD_COLOR)
    assert img.dtype == np.float32 and img.shape == (32, 32, 3)
    np.testing.assert_array_equal(img, (bgr[:, :, ::-1] / 255.0).astype(np.float32))


def test_load_image_gray_file_as_color_or_intensity():
    gray = cv2.imread(str(MNIST[0]), cv2.IMREAD_GRAYSCALE)
    want = (gray / 255.0).astype(np.float32)
    color = caffe.io.load_image(MNIST[0])
    assert color.shape == (28, 28, 3)
    for k in range(3):
        np.testing.assert_array_equal(color[:, :, k], want)
    single = caffe.io.load_image(MNIST[0], color=False)
    assert single.shape == (28, 28, 1)
    np.testing.assert_array_equal(single[:, :, 0], want)


def test_load_image_color_file_as_intensity_uses_luminance_weights():
    rgb = cv2.imread(str(CIFAR[1]), cv2.IMREAD_COLOR)[:, :, ::-1] / 255.0
    want = 0.2125 * rgb[:, :, 0] + 0.7154 * rgb[:, :, 1] + 0.0721 * rgb[:, :, 2]
    img = caffe.io.load_image(CIFAR[1], color=False)
    assert img.shape == (32, 32, 1)
    np.testing.assert_allclose(img[:, :, 0], want, rtol=1e-6, atol=1e-7)


def test_load_image_drops_alpha_and_scales_16_bit(tmp_path):
    rng = np.random.default_rng(0)
    bgra = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "alpha.png"), bgra)
    img = caffe.io.load_image(tmp_path / "alpha.png")
    np.testing.assert_array_equal(img, (bgra[:, :, 2::-1] / 255.0).astype(np.float32))
    deep = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    img = caffe.io.load_image(tmp_path / "deep.png", color=False)
    np.testing.assert_array_equal(img[:, :, 0], (deep / 65535.0).astype(np.float32))


def test_load_image_names_an_unreadable_file(tmp_path):
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not_an_image.jpg"):
        caffe.io.load_image(bad)


# ----------------------------------------------------------------------------- resize_image
def test_resize_image_bilinear_from_pixel_centres():
    # Width 2 -> 4: output centres fall at input x = -0.25, 0.25, 0.75, 1.25 (edges held).
    im = np.array([[[0.0], [1.0]]], np.float32)
    out = caffe.io.resize_image(im, (1, 4))
    assert out.shape == (1, 4, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_resize_image_keeps_any_channel_count_and_constants():
    rng = np.random.default_rng(1)
    im = rng.random((6, 8, 5)).astype(np.float32)
    out = caffe.io.resize_image(im, (3, 4))
    assert out.shape == (3, 4, 5)
    for k in range(5):   # channel by channel, as one-channel images (up to float rounding)
        np.testing.assert_allclose(out[:, :, k], caffe.io.resize_image(im[:, :, k:k + 1], (3, 4))[:, :, 0],
                                   rtol=1e-6)
    const = caffe.io.resize_image(np.full((5, 5, 3), 0.25), (9, 2))
    assert const.shape == (9, 2, 3) and (const == np.float32(0.25)).all()
    with pytest.raises(ValueError, match="interp_order 2"):
        caffe.io.resize_image(im, (3, 4), interp_order=2)


# ----------------------------------------------------------------------------- oversample
def test_oversample_gives_corners_centre_and_their_mirrors():
    im = np.arange(5 * 6 * 2, dtype=np.float32).reshape(5, 6, 2)
    crops = caffe.io.oversample([im, im + 100], (2, 3))
    assert crops.shape == (20, 2, 3, 2)
    # centre: 5 / 2 - 2 / 2 = 1.5 -> row 1, 6 / 2 - 3 / 2 = 1.5 -> column 1
    starts = [(0, 0), (0, 3), (3, 0), (3, 3), (1, 1)]
    for n, base in enumerate((im, im + 100)):
        for i, (r, c) in enumerate(starts):
            window = base[r:r + 2, c:c + 3]
            np.testing.assert_array_equal(crops[10 * n + i], window)
            np.testing.assert_array_equal(crops[10 * n + 5 + i], window[:, ::-1])


# ----------------------------------------------------------------------------- Transformer
def _cifar_transformer(shape):
    t = caffe.io.Transformer({"data": shape})
    t.set_transpose("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    t.set_mean("data", CIFAR_MEAN_RGB)
    return t


def test_transformer_matches_opencv_blob_and_classifies():
    """The classic pycaffe script: load_image, a Transformer, forward. The batch equals
    OpenCV's blobFromImages of the same files (RGB minus the mean), and the real weights
    classify the images."""
    net = caffe.Net(CIFAR_DEPLOY, CIFAR_WEIGHTS, caffe.TEST)
    net.blobs["data"].reshape(len(CIFAR), 3, 32, 32)
    net.reshape()
    t = _cifar_transformer(net.blobs["data"].data.shape)
    batch = np.stack([t.preprocess("data", caffe.io.load_image(p)) for p in CIFAR])
    want = cv2.dnn.blobFromImages([cv2.imread(str(p), cv2.IMREAD_COLOR) for p in CIFAR],
                                  mean=(125.3, 123.0, 113.9), swapRB=True)
    np.testing.assert_allclose(batch, want, atol=1e-4)
    net.blobs["data"].data[...] = batch
    prob = net.forward()["prob"]
    assert int((prob.argmax(axis=1) == np.array(_labels(CIFAR))).sum()) >= 7


def test_transformer_resizes_swaps_scales_and_undoes_it():
    t = caffe.io.Transformer({"data": (1, 3, 4, 6)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 0, 1))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([1.0, 2.0, 3.0]))
    t.set_input_scale("data", 0.5)
    rng = np.random.default_rng(2)
    img = rng.random((4, 6, 3)).astype(np.float32)
    kept = img.copy()
    out = t.preprocess("data", img)
    want = (img.transpose(2, 0, 1)[[2, 0, 1]] * 255 - np.array([1, 2, 3], np.float32)[:, None, None]) * 0.5
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_array_equal(img, kept)            # the caller's image is untouched
    np.testing.assert_allclose(t.deprocess("data", out), img, atol=1e-6)
    # an image of another size is resized to the input's height and width first
    big = rng.random((8, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(t.preprocess("data", big),
                               t.preprocess("data", caffe.io.resize_image(big, (4, 6))), rtol=1e-6)


def test_transformer_deprocess_inverts_any_axis_order():
    # Undone by applying them again (as pycaffe's deprocess did before rc3) neither would come back.
    t = caffe.io.Transformer({"data": (1, 4, 5, 5)})
    t.set_transpose("data", (2, 1, 0))
    t.set_channel_swap("data", (1, 2, 3, 0))
    img = np.random.default_rng(3).random((5, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(t.deprocess("data", t.preprocess("data", img)), img)


def test_transformer_rejects_what_does_not_fit():
    t = caffe.io.Transformer({"data": (1, 3, 8, 8)})
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t.set_raw_scale("image", 255)
    with pytest.raises(ValueError, match="3 channels"):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="3 axes"):
        t.set_transpose("data", (1, 0))
    with pytest.raises(ValueError, match="4 channels"):
        t.set_mean("data", np.zeros(4))
    with pytest.raises(ValueError, match="has 4 channels, input data has 3"):
        t.set_mean("data", np.zeros((4, 8, 8)))
    with pytest.raises(ValueError, match="one value per channel"):
        t.set_mean("data", np.zeros((1, 3, 8, 8)))
    t.set_transpose("data", (2, 0, 1))
    t.set_mean("data", np.ones((3, 8, 8)))       # elementwise, of the input's size
    out = t.preprocess("data", np.ones((8, 8, 3), np.float32))
    assert (out == 0).all() and out.shape == (3, 8, 8)


def test_set_mean_resizes_a_mean_of_another_size():
    """pycaffe's Transformer.set_mean (io.py) resizes an elementwise mean whose height and
    width differ from the input's (classify.py gives the 256 x 256 ImageNet mean to a
    227 x 227 CaffeNet): bilinearly, so a mean constant per channel stays that constant."""
    t = caffe.io.Transformer({"data": (1, 3, 8, 8)})
    ramp = np.arange(3 * 16 * 16, dtype=np.float64).reshape(3, 16, 16)
    t.set_mean("data", ramp)
    want = caffe.io.resize_image(ramp.transpose(1, 2, 0), (8, 8)).transpose(2, 0, 1)
    np.testing.assert_allclose(t.mean["data"], want, rtol=1e-6)
    assert t.mean["data"].shape == (3, 8, 8)
    gray = caffe.io.Transformer({"data": (1, 1, 8, 8)})
    gray.set_mean("data", np.full((16, 16), 5.0))       # (H, W): one channel
    assert gray.mean["data"].shape == (1, 8, 8) and (gray.mean["data"] == 5.0).all()
    # a per-channel-constant mean of another size classifies as the per-channel mean does
    image_mean = np.broadcast_to(CIFAR_MEAN_RGB[:, None, None], (3, 40, 40))
    images = [caffe.io.load_image(p) for p in CIFAR[:4]]
    full = caffe.Classifier(CIFAR_DEPLOY, CIFAR_WEIGHTS, mean=image_mean, raw_scale=255)
    channel = caffe.Classifier(CIFAR_DEPLOY, CIFAR_WEIGHTS, mean=CIFAR_MEAN_RGB, raw_scale=255)
    np.testing.assert_allclose(full.predict(images, oversample=False),
                               channel.predict(images, oversample=False), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- protos
def test_blobproto_round_trips_and_legacy_shapes():
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    blob = caffe.io.array_to_blobproto(arr, diff=-arr)
    assert list(blob.shape.dim) == [2, 3, 4]
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), -arr)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3, data=range(6))
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 1, 3)
    arrays = [arr, np.ones((1, 2, 3, 4))]
    text = caffe.io.arraylist_to_blobprotovector_str(arrays)
    assert caffe.io.arraylist_to_blobprotovecor_str(arrays) == text    # pycaffe's spelling
    back = caffe.io.blobprotovector_str_to_arraylist(text)
    assert [a.shape for a in back] == [(2, 3, 4), (1, 2, 3, 4)]
    np.testing.assert_array_equal(back[0], arr)


def test_datum_round_trips_bytes_and_floats():
    pixels = np.random.default_rng(4).integers(0, 256, (3, 4, 5), dtype=np.uint8)
    datum = caffe.io.array_to_datum(pixels, label=7)
    assert datum.data == pixels.tobytes() and len(datum.float_data) == 0 and datum.label == 7
    assert (datum.channels, datum.height, datum.width) == (3, 4, 5)
    back = caffe.io.datum_to_array(caffe_pb2.Datum.FromString(datum.SerializeToString()))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, pixels)
    floats = pixels.astype(np.float32) / 3
    datum = caffe.io.array_to_datum(floats)
    assert not datum.data and not datum.HasField("label")
    np.testing.assert_allclose(caffe.io.datum_to_array(datum), floats, rtol=1e-7)
    with pytest.raises(ValueError, match="channels, height, width"):
        caffe.io.array_to_datum(np.zeros((2, 2)))


def test_proto_module_is_reachable_as_in_pycaffe():
    assert caffe.proto.caffe_pb2.NetParameter is caffe_pb2.NetParameter
