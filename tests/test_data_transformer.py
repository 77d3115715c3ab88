"""DataTransformer against hand-computed values (solver_and_cli.md §8.1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import test_data
from data_support import capture_log, data_net  # noqa: F401

from ristretto_cli.data.datum import COLOR, GRAY, NATIVE, chw_to_datum, datum_to_chw, encoded_datum
from ristretto_cli.data.db import DBWriter
from ristretto_cli.data.transformer import DataTransformer
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import write_mean_file
from ristretto_cli.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def tp(**kw) -> caffe_pb2.TransformationParameter:
    mean_value = kw.pop("mean_value", None)
    p = caffe_pb2.TransformationParameter(**kw)
    if mean_value is not None:
        p.mean_value.extend(mean_value)
    return p


class FakeRng:
    """Hands out prepared draws, one array per ``integers`` call, checking the bounds."""

    def __init__(self, *draws):
        self.draws = [np.asarray(d) for d in draws]
        self.calls = []

    def integers(self, low, high, size=None):
        d = self.draws.pop(0)
        self.calls.append((low, np.asarray(high).tolist(), size))
        assert np.all(d >= low) and np.all(d < high)
        return d


def reference(item, *, scale=1.0, crop=0, h_off=0, w_off=0, mirror=False, mean=None, mean_values=None):
    """Caffe's per-pixel loop, literally (float32 arithmetic)."""
    c_n, h_n, w_n = item.shape
    oh, ow = (crop, crop) if crop else (h_n, w_n)
    out = np.zeros((c_n, oh, ow), np.float32)
    s = np.float32(scale)
    for c in range(c_n):
        for h in range(oh):
            for w in range(ow):
                v = np.float32(item[c, h_off + h, w_off + w])
                if mean is not None:
                    v = np.float32(v - np.float32(mean[c, h_off + h, w_off + w])) * s
                elif mean_values is not None:
                    mv = mean_values[0] if len(mean_values) == 1 else mean_values[c]
                    v = np.float32(v - np.float32(mv)) * s
                else:
                    v = v * s
                out[c, h, (ow - 1 - w) if mirror else w] = v
    return out


def test_scale_only_is_float32_pixel_times_scale():
    x = np.array([[[[0, 1, 255], [7, 128, 3]]], [[[9, 9, 9], [200, 100, 50]]]], np.uint8)
    out = DataTransformer(tp(scale=0.00390625)).transform(x)
    assert out.dtype == np.float32 and out.shape == (2, 1, 2, 3)
    np.testing.assert_array_equal(out[1, 0, 1], np.float32([200 / 256, 100 / 256, 50 / 256]))
    for i in range(2):
        np.testing.assert_array_equal(out[i], reference(x[i], scale=0.00390625))
    odd = DataTransformer(tp(scale=0.017)).transform(x)
    for i in range(2):
        np.testing.assert_array_equal(odd[i], reference(x[i], scale=0.017))


def test_center_crop_in_test_phase():
    x = np.arange(30, dtype=np.uint8).reshape(1, 1, 5, 6)
    out = DataTransformer(tp(crop_size=3), TEST).transform(x)
    # h_off = (5 - 3) // 2 = 1, w_off = (6 - 3) // 2 = 1
    np.testing.assert_array_equal(out[0, 0], np.float32([[7, 8, 9], [13, 14, 15], [19, 20, 21]]))
    x4 = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4)
    out4 = DataTransformer(tp(crop_size=3), TEST).transform(x4)
    # h_off = w_off = floor(1 / 2) = 0
    np.testing.assert_array_equal(out4[0, 0], np.float32([[0, 1, 2], [4, 5, 6], [8, 9, 10]]))


def test_mirror_is_random_in_every_phase():
    x = np.arange(12, dtype=np.uint8).reshape(2, 1, 2, 3)
    for phase in (TEST, TRAIN):
        t = DataTransformer(tp(mirror=True), phase)
        assert not t.deterministic
        rng = FakeRng([1, 0])
        out = t.transform(x, rng)
        assert rng.calls == [(0, 2, 2)]
        np.testing.assert_array_equal(out[0, 0], np.float32([[2, 1, 0], [5, 4, 3]]))
        np.testing.assert_array_equal(out[1], x[1].astype(np.float32))
    seeded = DataTransformer(tp(mirror=True), TEST)
    a = seeded.transform(np.repeat(x, 50, axis=0), np.random.default_rng(5))
    src = np.repeat(x, 50, axis=0).astype(np.float32)
    flipped = [bool(np.array_equal(a[i], src[i, :, :, ::-1])) for i in range(100)]
    kept = [bool(np.array_equal(a[i], src[i])) for i in range(100)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 20 < sum(flipped) < 80  # both outcomes occur


def test_random_crop_in_train_with_mirror_and_mean_file(tmp_path):
    rng0 = np.random.default_rng(0)
    x = rng0.integers(0, 256, (2, 2, 5, 4)).astype(np.uint8)
    mean = rng0.uniform(0, 255, (2, 5, 4)).astype(np.float32)
    write_mean_file(tmp_path / "mean.binaryproto", mean)
    t = DataTransformer(tp(crop_size=3, mirror=True, scale=0.5, mean_file=str(tmp_path / "mean.binaryproto")),
                        TRAIN)
    rng = FakeRng([1, 0], [2, 0], [1, 0])  # mirror flags, then h offsets, then w offsets
    out = t.transform(x, rng)
    assert rng.calls[1] == (0, [3, 3], None) and rng.calls[2] == (0, [2, 2], None)
    np.testing.assert_array_equal(out[0], reference(x[0], scale=0.5, crop=3, h_off=2, w_off=1, mirror=True,
                                                    mean=mean))
    np.testing.assert_array_equal(out[1], reference(x[1], scale=0.5, crop=3, h_off=0, w_off=0, mirror=False,
                                                    mean=mean))
    # TEST crop with the mean file: the mean is taken at the uncropped (centred) position.
    t_test = DataTransformer(tp(crop_size=3, scale=0.5, mean_file=str(tmp_path / "mean.binaryproto")), TEST)
    np.testing.assert_array_equal(t_test.transform(x)[1], reference(x[1], scale=0.5, crop=3, h_off=1, w_off=0,
                                                                     mean=mean))
    assert t_test.deterministic


def test_mean_file_shape_must_match_the_uncropped_input(tmp_path):
    write_mean_file(tmp_path / "m.binaryproto", np.zeros((2, 4, 4), np.float32))
    t = DataTransformer(tp(mean_file=str(tmp_path / "m.binaryproto"), crop_size=3), TEST, layer="data")
    with pytest.raises(RistrettoError) as e:
        t.transform(np.zeros((1, 2, 5, 5), np.uint8))
    msg = str(e.value)
    assert "2 x 4 x 4" in msg and "2 x 5 x 5" in msg and "m.binaryproto" in msg and "layer 'data'" in msg
    with pytest.raises(RistrettoError, match="No such file"):
        DataTransformer(tp(mean_file=str(tmp_path / "missing.binaryproto")))
    with pytest.raises(RistrettoError, match="mean_file and mean_value"):
        DataTransformer(tp(mean_file=str(tmp_path / "m.binaryproto"), mean_value=[1]))


def test_mean_values_one_or_per_channel():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.uint8).reshape(2, 3, 2, 2)
    one = DataTransformer(tp(mean_value=[104.5], scale=2)).transform(x)
    three = DataTransformer(tp(mean_value=[1, 2, 3.25])).transform(x)
    for i in range(2):
        np.testing.assert_array_equal(one[i], reference(x[i], scale=2, mean_values=[104.5]))
        np.testing.assert_array_equal(three[i], reference(x[i], mean_values=[1, 2, 3.25]))
    assert three[0, 2, 0, 0] == np.float32(8 - 3.25)
    with pytest.raises(RistrettoError, match="either 1 mean_value or as many as channels: 3"):
        DataTransformer(tp(mean_value=[1, 2])).transform(x)


def test_float_data_items():
    d = chw_to_datum(np.array([[[0.25, -1.5], [3.0, 1e-3]]], np.float32), label=3)
    assert len(d.float_data) == 4 and not d.data
    item = datum_to_chw(d)
    assert item.dtype == np.float32
    out = DataTransformer(tp(scale=0.5, mean_value=[0.125])).transform([item])
    np.testing.assert_array_equal(out[0], reference(item, scale=0.5, mean_values=[0.125]))


def test_mixed_sizes_crop_to_one_shape_and_mismatches_are_errors():
    a = np.arange(25, dtype=np.uint8).reshape(1, 5, 5)
    b = np.arange(42, dtype=np.uint8).reshape(1, 7, 6)
    out = DataTransformer(tp(crop_size=3), TEST).transform([a, b, a])
    np.testing.assert_array_equal(out[0], reference(a, crop=3, h_off=1, w_off=1))
    np.testing.assert_array_equal(out[1], reference(b, crop=3, h_off=2, w_off=1))
    np.testing.assert_array_equal(out[2], out[0])
    with pytest.raises(RistrettoError, match=r"item 1 .*is 1 x 7 x 6, but the batch shape .* is 1 x 5 x 5"):
        DataTransformer(tp()).transform([a, b])
    with pytest.raises(RistrettoError, match="crop_size 6 is larger"):
        DataTransformer(tp(crop_size=6)).transform([a])


def _png_jpeg():
    img = cv2.imread(str(test_data("images/foolbox_cifar10/cifar10_00_3.png")), cv2.IMREAD_COLOR)
    ok1, png = cv2.imencode(".png", img)
    ok2, jpg = cv2.imencode(".jpg", img)
    ok3, gray_png = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    assert ok1 and ok2 and ok3
    return img, png.tobytes(), jpg.tobytes(), gray_png.tobytes()


def test_encoded_datums_force_color_and_force_gray():
    img, png, jpg, gray_png = _png_jpeg()
    for buf in (png, jpg):
        d = encoded_datum(buf, 1)
        native = datum_to_chw(d, NATIVE)
        color = datum_to_chw(d, COLOR)
        gray = datum_to_chw(d, GRAY)
        assert native.shape == color.shape == (3, 32, 32) and gray.shape == (1, 32, 32)
        raw = np.frombuffer(buf, np.uint8)
        np.testing.assert_array_equal(color, cv2.imdecode(raw, cv2.IMREAD_COLOR).transpose(2, 0, 1))
        np.testing.assert_array_equal(gray[0], cv2.imdecode(raw, cv2.IMREAD_GRAYSCALE))
    # BGR planes
    np.testing.assert_array_equal(datum_to_chw(encoded_datum(png), NATIVE), img.transpose(2, 0, 1))
    g = encoded_datum(gray_png)
    assert datum_to_chw(g, NATIVE).shape == (1, 32, 32)
    c3 = datum_to_chw(g, COLOR)
    assert c3.shape == (3, 32, 32) and np.array_equal(c3[0], c3[2])
    with pytest.raises(RistrettoError, match="could not decode"):
        datum_to_chw(encoded_datum(b"not an image"), NATIVE, "db: record 'x'")


def test_data_layer_on_encoded_records_with_force_gray(tmp_path):
    img, png, jpg, _ = _png_jpeg()
    with DBWriter(tmp_path / "db", "lmdb") as w:
        w.put("0", encoded_datum(png, 4).SerializeToString())
        w.put("1", encoded_datum(jpg, 5).SerializeToString())
    src = f'source: "{tmp_path / "db"}" batch_size: 2 backend: LMDB'
    net = data_net(f'type: "Data" top: "data" top: "label" transform_param {{ force_gray: true scale: 0.5 }} '
                   f'data_param {{ {src} }}')
    net.forward()
    data = net.blobs["data"].data
    assert data.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(data[0, 0], cv2.imdecode(np.frombuffer(png, np.uint8), 0) * np.float32(0.5))
    np.testing.assert_array_equal(data[1, 0], cv2.imdecode(np.frombuffer(jpg, np.uint8), 0) * np.float32(0.5))
    np.testing.assert_array_equal(net.blobs["label"].data, [4, 5])
    with pytest.raises(RistrettoError, match="both force_color and force_gray"):
        data_net(f'type: "Data" top: "data" transform_param {{ force_gray: true force_color: true }} '
                 f'data_param {{ {src} }}')


def test_force_gray_on_raw_datums_is_logged_once_and_ignored(tmp_path):
    with DBWriter(tmp_path / "db", "lmdb") as w:
        for i in range(3):
            w.put(str(i), chw_to_datum(np.full((3, 2, 2), i, np.uint8), i).SerializeToString())
    with capture_log() as log:
        net = data_net(f'type: "Data" top: "data" transform_param {{ force_gray: true }} '
                       f'data_param {{ source: "{tmp_path / "db"}" batch_size: 2 backend: LMDB }}')
        net.forward()
        net.forward()
    assert net.blobs["data"].data.shape == (2, 3, 2, 2)
    errors = log.levels(40)
    assert errors == ["force_color and force_gray only for encoded datum"]
