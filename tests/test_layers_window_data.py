"""WindowData: the window file, the fg/bg split, the crop/warp arithmetic, mean, scale, mirror,
seeded draws, cache_images, a whole TRAIN net and the CLI error path."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from data_support import build_net, capture_log, data_net, forward_batches

from ristretto_cli.cli import main
from ristretto_cli.data.window_file import read_window_file
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import read_net_param
from ristretto_cli.io.binaryproto import write_mean_file
from ristretto_cli.layers.window_data import window_placement
from ristretto_cli.net import Net
from ristretto_cli.proto import caffe_pb2

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def write_image(path, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A random BGR image saved losslessly; returns its pixels (H x W x 3)."""
    img = np.random.default_rng(seed).integers(0, 256, (rows, cols, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return img


def write_windows(path, entries) -> None:
    """entries: (image path, rows, cols, [(class, overlap, x1, y1, x2, y2), ...]) per image."""
    lines = []
    for i, (image, rows, cols, windows) in enumerate(entries):
        lines += [f"# {i}", str(image), "3", str(rows), str(cols), str(len(windows))]
        lines += [" ".join(str(v) for v in w) for w in windows]
    path.write_text("\n".join(lines) + "\n")


def window_layer(source, batch: int, *, crop: int = 8, transform: str = "", extra: str = "") -> str:
    return (f'type: "WindowData" top: "data" top: "label" transform_param {{ crop_size: {crop} {transform} }} '
            f'window_data_param {{ source: "{source}" batch_size: {batch} {extra} }}')


@pytest.fixture
def scene(tmp_path):
    """Two images; image 0 has a foreground and a background window, image 1 one foreground."""
    a = write_image(tmp_path / "a.png", 40, 50, seed=1)
    b = write_image(tmp_path / "b.png", 30, 20, seed=2)
    write_windows(tmp_path / "windows.txt", [
        (tmp_path / "a.png", 40, 50, [(1, 0.9, 5, 6, 20, 30), (4, 0.1, 0, 0, 49, 39)]),
        (tmp_path / "b.png", 30, 20, [(2, 0.7, 2, 3, 15, 25)]),
    ])
    return tmp_path, {"a": a, "b": b}


# ---------------------------------------------------------------------- window file
def test_window_file_is_read_as_tokens_with_lines(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# 0\nimg/a.jpg\n3 40 50\n2\n1 0.75 1 2 3 4\n0 0.25 5 6\n 7 8\n\n# 1 b.jpg 3 9 9 0\n")
    w = read_window_file(str(path))
    assert [(im.path, im.channels, im.height, im.width, im.line) for im in w.images] == [
        ("img/a.jpg", 3, 40, 50, 1), ("b.jpg", 3, 9, 9, 9)]
    np.testing.assert_array_equal(w.image_index, [0, 0])
    np.testing.assert_array_equal(w.label, [1, 0])
    assert w.overlap.dtype == np.float32
    np.testing.assert_array_equal(w.overlap, np.float32([0.75, 0.25]))
    np.testing.assert_array_equal(w.boxes, [[1, 2, 3, 4], [5, 6, 7, 8]])
    np.testing.assert_array_equal(w.line, [5, 6])


@pytest.mark.parametrize("text, line, message", [
    ("", None, "the window file is empty"),
    ("#0\na.jpg 3 4 4 0\n", 1, "expected '#' to start image entry 0, got '#0'"),
    ("# 0\na.jpg\n3 4 4\n1\n1 0.9 0 0 x 3\n", 5, "expected x2 of window 0 of image 0 (an integer), got 'x'"),
    ("# 0\na.jpg\n3 4 4\n1\n1 high 0 0 1 1\n", 5, "expected the overlap of window 0 of image 0 (a number)"),
    ("# 0\na.jpg\n3 4 4\n2\n1 0.9 0 0 1 1\n1 0.9\n", 6, "the window file ends early: expected x1 of window 1"),
    ("# 0\na.jpg\n3 4 4\n-1\n", 4, "negative number of windows"),
    ("# 0\na.jpg\n3 4 4\n0\n# 5\nb.jpg\n3 4 4\n1\n1 0.9 0 0 1 1\n", 5, "image index 5 is out of range"),
    ("# 0\na.jpg\n3 4 4\n1\n1 0.9 0 0 1 99999999999\n", 5, "out of the int32 range"),
])
def test_window_file_errors_name_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "w.txt"
    path.write_text(text)
    with pytest.raises(RistrettoError) as e:
        read_window_file(str(path))
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(e.value).startswith(prefix) and message in str(e.value), str(e.value)
    with pytest.raises(RistrettoError, match="failed to open the window file: No such file"):
        read_window_file(str(tmp_path / "missing.txt"))


def test_image_index_that_is_not_its_position_warns(tmp_path):
    path = tmp_path / "w.txt"
    path.write_text("# 1\na.jpg 3 4 4 1\n1 0.9 0 0 1 1\n# 0\nb.jpg 3 4 4 1\n1 0.9 0 0 1 1\n")
    with capture_log() as log:
        w = read_window_file(str(path))
    np.testing.assert_array_equal(w.image_index, [1, 0])  # as Caffe: the index, not the entry
    assert any("image entry 0 has index 1" in m for m in log.levels(30))


# ---------------------------------------------------------------------- fg/bg split and labels
def test_foreground_and_background_split_and_batch_order(tmp_path):
    write_image(tmp_path / "a.png", 20, 20)
    write_windows(tmp_path / "w.txt", [(tmp_path / "a.png", 20, 20, [
        (3, 0.9, 0, 0, 9, 9),    # fg
        (2, 0.5, 1, 1, 9, 9),    # fg: overlap == fg_threshold
        (7, 0.2, 2, 2, 9, 9),    # bg: its class becomes 0
        (5, 0.35, 3, 3, 9, 9),   # neither: not < bg_threshold
        (0, 0.0, 4, 4, 9, 9),    # bg
    ])])
    net = data_net(window_layer(tmp_path / "w.txt", 7, extra="fg_threshold: 0.5 bg_threshold: 0.35 "
                                "fg_fraction: 0.3"), TRAIN)
    layer = net.layer_by_name("d")
    np.testing.assert_array_equal(layer.fg_windows, [0, 1])
    np.testing.assert_array_equal(layer.bg_windows, [2, 4])
    np.testing.assert_array_equal(layer.labels, [3, 2, 0, 0, 0])
    assert layer.num_fg == 2  # int(7 * 0.3)
    seen = set()
    for data, label in forward_batches(net, 20):
        assert data.shape == (7, 3, 8, 8) and label.shape == (7,)
        np.testing.assert_array_equal(label[:5], 0)   # background first ...
        assert set(label[5:]) <= {2.0, 3.0}           # ... then foreground
        seen |= set(label[5:].tolist())
    assert seen == {2.0, 3.0}


@pytest.mark.parametrize("windows, message", [
    ([(0, 0.9, 0, 0, 5, 5), (0, 0.1, 0, 0, 5, 5)], "has class_index 0; it must be > 0"),
    ([(1, 0.9, 0, 0, 5, 5)], "no background windows (overlap < bg_threshold 0.5)"),
    ([(1, 0.1, 0, 0, 5, 5)], "no foreground windows (overlap >= fg_threshold 0.5)"),
])
def test_split_errors(tmp_path, windows, message):
    write_image(tmp_path / "a.png", 10, 10)
    write_windows(tmp_path / "w.txt", [(tmp_path / "a.png", 10, 10, windows)])
    with pytest.raises(RistrettoError) as e:
        data_net(window_layer(tmp_path / "w.txt", 2, extra="fg_fraction: 1"), TRAIN)
    assert str(e.value).startswith(f"{tmp_path / 'w.txt'}") and message in str(e.value)
    assert "layer 'd'" in str(e.value)
    if "class_index" in message:
        assert str(e.value).startswith(f"{tmp_path / 'w.txt'}:7: ")


# ---------------------------------------------------------------------- pixels
def _warp(img, x1, y1, x2, y2, width, height):
    return cv2.resize(img[y1:y2 + 1, x1:x2 + 1], (width, height), interpolation=cv2.INTER_LINEAR)


def test_warped_window_with_mean_file_and_scale_matches_a_reference(scene):
    tmp, img = scene
    mean = np.random.default_rng(5).uniform(0, 255, (3, 12, 12)).astype(np.float32)
    write_mean_file(tmp / "mean.binaryproto", mean)
    # fg_fraction 1: every item is a foreground window (image 0's or image 1's).
    net = data_net(window_layer(tmp / "windows.txt", 4, transform=f'mean_file: "{tmp / "mean.binaryproto"}"',
                                extra="scale: 0.25 fg_fraction: 1"), TRAIN)
    off = (12 - 8) // 2
    refs = {}
    for label, name, box in ((1, "a", (5, 6, 20, 30)), (2, "b", (2, 3, 15, 25))):
        pixels = _warp(img[name], *box, 8, 8).transpose(2, 0, 1).astype(np.float32)
        refs[label] = (pixels - mean[:, off:off + 8, off:off + 8]) * np.float32(0.25)
    for data, label in forward_batches(net, 3):
        for k in range(4):
            np.testing.assert_array_equal(data[k], refs[int(label[k])])


def test_mean_values_and_no_mean(scene):
    tmp, img = scene
    fg = {1: _warp(img["a"], 5, 6, 20, 30, 6, 6), 2: _warp(img["b"], 2, 3, 15, 25, 6, 6)}
    bg = _warp(img["a"], 0, 0, 49, 39, 6, 6).transpose(2, 0, 1).astype(np.float32)
    net = data_net(window_layer(tmp / "windows.txt", 3, crop=6, transform="mean_value: 10 mean_value: 20 "
                                "mean_value: 30", extra="scale: 2 fg_fraction: 0.34"), TEST)
    mv = np.float32([10, 20, 30]).reshape(3, 1, 1)  # per channel, in BGR order
    for data, label in forward_batches(net, 2):
        np.testing.assert_array_equal(label[:2], [0, 0])  # int(3 * 0.34) = 1 foreground window
        np.testing.assert_array_equal(data[:2], np.stack([(bg - mv) * np.float32(2)] * 2))
        want = fg[int(label[2])].transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(data[2], (want - mv) * np.float32(2))
    plain = data_net(window_layer(tmp / "windows.txt", 2, crop=6, extra="fg_fraction: 0"), TEST)
    np.testing.assert_array_equal(forward_batches(plain, 1)[0][0], np.stack([bg, bg]))


def test_mirror_flips_some_windows_and_draws_are_seeded(scene):
    tmp, img = scene
    ref = {1: _warp(img["a"], 5, 6, 20, 30, 8, 8), 2: _warp(img["b"], 2, 3, 15, 25, 8, 8)}
    layer = window_layer(tmp / "windows.txt", 6, transform="mirror: true", extra="fg_fraction: 1")
    flips = []
    for data, label in forward_batches(data_net(layer, TEST, seed=3), 4):
        for k in range(6):
            plain = ref[int(label[k])].transpose(2, 0, 1).astype(np.float32)
            flipped = plain[..., ::-1]
            assert np.array_equal(data[k], plain) or np.array_equal(data[k], flipped)
            flips.append(np.array_equal(data[k], flipped))
    assert any(flips) and not all(flips)  # mirror is drawn in every phase, as in Caffe

    def run(seed):
        return forward_batches(data_net(layer, TRAIN, seed=seed), 3)

    first, again, other = run(7), run(7), run(8)
    for (x, y), (u, v) in zip(first, again):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)
    assert any(not np.array_equal(x, u) for (x, _), (u, _) in zip(first, other))


def test_cache_images_gives_the_same_batches(scene):
    tmp, _ = scene
    layer = window_layer(tmp / "windows.txt", 5, transform="mirror: true", extra="context_pad: 1")
    plain = forward_batches(data_net(layer, TRAIN, seed=4), 3)
    cached_net = data_net(layer.replace("context_pad: 1", "context_pad: 1 cache_images: true"), TRAIN, seed=4)
    (tmp / "a.png").unlink()  # cached at set-up: the file is no longer needed
    cached = forward_batches(cached_net, 3)
    for (x, y), (u, v) in zip(plain, cached):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


def test_resume_continues_with_the_same_batches(scene):
    tmp, _ = scene
    layer = window_layer(tmp / "windows.txt", 4, transform="mirror: true")
    a = data_net(layer, TRAIN, seed=11)
    forward_batches(a, 2)
    state = json.loads(json.dumps(a.state_dict()))
    expected = forward_batches(a, 3)
    b = data_net(layer, TRAIN, seed=99)
    b.load_state_dict(state)
    for (x, y), (u, v) in zip(expected, forward_batches(b, 3)):
        np.testing.assert_array_equal(x, u)
        np.testing.assert_array_equal(y, v)


# ---------------------------------------------------------------------- context_pad and square
@pytest.mark.parametrize("box, hw, crop, pad, square, mirror, roi, size, offset", [
    # Inside the image: the widened region (scale 10/6) fills the output, no border.
    ((20, 30, 39, 49), (100, 100), 10, 2, False, False, (13, 23, 47, 57), (10, 10), (0, 0)),
    # Cut at the top left: 7 of 35 pixels per axis -> a border of 2 output pixels.
    ((0, 0, 19, 19), (100, 100), 10, 2, False, False, (0, 0, 27, 27), (8, 8), (2, 2)),
    # Flipped, the left border is the (empty) right cut.
    ((0, 0, 19, 19), (100, 100), 10, 2, False, True, (0, 0, 27, 27), (8, 8), (2, 0)),
    # Square: the short side widened to the long one (centre + half is inclusive: 21 pixels).
    ((10, 20, 29, 29), (50, 40), 7, 0, True, False, (10, 15, 30, 35), (7, 7), (0, 0)),
    # Square with context, cut at the bottom right (3 of 15 pixels); flipped: left border 2.
    ((30, 20, 39, 29), (30, 40), 8, 1, True, False, (28, 18, 39, 29), (6, 6), (0, 0)),
    ((30, 20, 39, 29), (30, 40), 8, 1, True, True, (28, 18, 39, 29), (6, 6), (0, 2)),
    # Rounding gives border 4 (3.5) + height 7 (6.5) > 10: the height shrinks to 6.
    ((10, 0, 28, 4), (50, 50), 10, 0, True, False, (10, 0, 29, 12), (6, 10), (4, 0)),
    # Warp mode without context: the window as given.
    ((3, 4, 9, 12), (20, 20), 5, 0, False, True, (3, 4, 9, 12), (5, 5), (0, 0)),
])
def test_window_placement_hand_computed(box, hw, crop, pad, square, mirror, roi, size, offset):
    r, s, o = window_placement([box], [hw], crop, pad, square, [mirror])
    assert tuple(r[0]) == roi and tuple(s[0]) == size and tuple(o[0]) == offset


def test_context_pad_output_has_zero_borders_without_mean(tmp_path):
    img = write_image(tmp_path / "a.png", 100, 100, seed=3)
    write_windows(tmp_path / "w.txt", [(tmp_path / "a.png", 100, 100, [(1, 1, 0, 0, 19, 19), (1, 0, 0, 0, 9, 9)])])
    net = data_net(window_layer(tmp_path / "w.txt", 1, crop=10, transform="mean_value: 50",
                                extra="context_pad: 2 fg_fraction: 1 scale: 0.5"), TRAIN)
    data, label = forward_batches(net, 1)[0]
    assert label.tolist() == [1]
    want = np.zeros((3, 10, 10), np.float32)
    want[:, 2:, 2:] = (_warp(img, 0, 0, 27, 27, 8, 8).transpose(2, 0, 1).astype(np.float32)
                       - np.float32(50)) * np.float32(0.5)
    np.testing.assert_array_equal(data[0], want)  # the border stays 0, not (0 - mean) * scale


def test_square_mode_with_mirror_in_the_layer(tmp_path):
    img = write_image(tmp_path / "a.png", 30, 40, seed=4)
    write_windows(tmp_path / "w.txt", [(tmp_path / "a.png", 30, 40, [(2, 0.8, 30, 20, 39, 29), (0, 0, 0, 0, 5, 5)])])
    net = data_net(window_layer(tmp_path / "w.txt", 8, crop=8, transform="mirror: true",
                                extra='context_pad: 1 crop_mode: "square" fg_fraction: 1'), TRAIN, seed=2)
    warped = _warp(img, 28, 18, 39, 29, 6, 6).transpose(2, 0, 1).astype(np.float32)
    plain = np.zeros((3, 8, 8), np.float32)
    plain[:, :6, :6] = warped
    flipped = np.zeros((3, 8, 8), np.float32)
    flipped[:, :6, 2:] = warped[..., ::-1]
    data, _ = forward_batches(net, 1)[0]
    kinds = [np.array_equal(d, flipped) for d in data]
    assert all(np.array_equal(d, flipped) or np.array_equal(d, plain) for d in data)
    assert any(kinds) and not all(kinds)


# ---------------------------------------------------------------------- errors
def test_parameter_errors(scene):
    tmp, _ = scene
    src = tmp / "windows.txt"
    cases = [
        (f'type: "WindowData" top: "data" top: "label" window_data_param {{ source: "{src}" batch_size: 2 '
         'crop_size: 8 }', "crop_size > 0: every window is warped to crop_size x crop_size (window_data_param"),
        (window_layer(src, 2, crop=8, extra="context_pad: 4"), "context_pad 4 leaves no room"),
        (window_layer(src, 2, extra="fg_fraction: 1.5"), "fg_fraction must be between 0 and 1"),
        (window_layer(src, 0), "batch_size must be positive"),
        (window_layer("", 2), "window_data_param.source (the window file) is not set"),
        (window_layer(src, 2, transform="mean_value: 1 mean_value: 2"), "either 1 mean_value or as many"),
    ]
    for text, message in cases:
        with pytest.raises(RistrettoError) as e:
            data_net(text, TRAIN)
        assert message in str(e.value) and "layer 'd'" in str(e.value), str(e.value)
    write_mean_file(tmp / "small.binaryproto", np.zeros((3, 8, 6), np.float32))
    with pytest.raises(RistrettoError) as e:
        data_net(window_layer(src, 2, transform=f'mean_file: "{tmp / "small.binaryproto"}"'), TRAIN)
    assert str(e.value).startswith(f"{tmp / 'small.binaryproto'}: ") and "the mean file is 3 x 8 x 6" in str(e.value)


def test_window_outside_its_image_and_missing_image_name_the_window_file_line(tmp_path):
    write_image(tmp_path / "a.png", 10, 10)
    write_windows(tmp_path / "w.txt", [(tmp_path / "a.png", 10, 10, [(1, 0.9, 2, 2, 10, 8), (0, 0, 0, 0, 4, 4)])])
    net = data_net(window_layer(tmp_path / "w.txt", 1, extra="fg_fraction: 1"), TRAIN)
    with pytest.raises(RistrettoError) as e:
        net.forward()
    assert str(e.value).startswith(f"{tmp_path / 'w.txt'}:7: layer 'd': window '2 2 10 8'")
    assert "not inside the image" in str(e.value)
    # With context padding the same window is clipped to the image instead.
    padded = data_net(window_layer(tmp_path / "w.txt", 1, extra="fg_fraction: 1 context_pad: 1"), TRAIN)
    padded.forward()
    (tmp_path / "a.png").unlink()
    with pytest.raises(RistrettoError) as e:
        padded.forward()
    assert str(e.value).startswith(f"{tmp_path / 'a.png'}: layer 'd': could not load image")
    assert f"(image entry at {tmp_path / 'w.txt'}:1)" in str(e.value)
    with pytest.raises(RistrettoError, match="could not load image"):  # cache_images reads at set-up
        data_net(window_layer(tmp_path / "w.txt", 1, extra="cache_images: true"), TRAIN)


def test_root_folder_and_channels_of_the_last_header(tmp_path):
    write_image(tmp_path / "a.png", 12, 12)
    (tmp_path / "w.txt").write_text("# 0\na.png 4 12 12 2\n1 0.9 0 0 5 5\n0 0.1 0 0 11 11\n")
    net = data_net(window_layer(tmp_path / "w.txt", 2, extra=f'root_folder: "{tmp_path}/"'), TRAIN)
    data, _ = forward_batches(net, 1)[0]
    assert data.shape == (2, 4, 8, 8)
    assert not data[:, 3].any() and data[:, :3].any()  # images are 3-channel; the rest stays 0
    (tmp_path / "w.txt").write_text("# 0\na.png 1 12 12 2\n1 0.9 0 0 5 5\n0 0.1 0 0 11 11\n")
    with pytest.raises(RistrettoError) as e:
        data_net(window_layer(tmp_path / "w.txt", 2, extra=f'root_folder: "{tmp_path}/"'), TRAIN)
    assert str(e.value).startswith(f"{tmp_path / 'w.txt'}:1: ") and "declares 1 channel(s)" in str(e.value)


# ---------------------------------------------------------------------- nets and the CLI
NET = """
name: "rcnn"
layer {{ name: "data" type: "WindowData" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ crop_size: 8 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 }}
  window_data_param {{ source: "{source}" batch_size: 4 fg_fraction: 0.5 context_pad: 1 }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param {{ num_output: 2 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "conv" top: "fc"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"""


def test_train_net_with_window_data(scene):
    tmp, _ = scene
    net = build_net(NET.format(source=tmp / "windows.txt"), TRAIN)
    assert net.blobs["data"].data.shape == (4, 3, 8, 8)
    for _ in range(3):
        loss = net.forward()
        net.backward()
        assert np.isfinite(loss)
        label = net.blobs["label"].data
        np.testing.assert_array_equal(label[:2], 0)
        assert set(label[2:]) <= {1.0, 2.0}
    assert np.abs(net.layer_by_name("conv").blobs[0].diff).sum() > 0  # gradients reach the weights


def test_v1_net_moves_crop_and_mirror_to_transform_param_and_loses_scale(scene):
    """Caffe's V1 upgrade moves window_data_param's crop_size, mirror, mean_file and scale into
    transform_param; WindowData then reads scale from window_data_param (1 by default)."""
    tmp, img = scene
    model = tmp / "v1.prototxt"
    model.write_text(f'name: "v1" layers {{ name: "data" type: WINDOW_DATA top: "data" top: "label" '
                     f'window_data_param {{ source: "{tmp / "windows.txt"}" batch_size: 2 crop_size: 6 '
                     f'scale: 0.5 fg_fraction: 0 }} }}')
    with capture_log() as log:
        net = Net(read_net_param(str(model)), TRAIN, seed=1)
    t = net.layer_by_name("data").param.transform_param
    assert (t.crop_size, t.scale) == (6, 0.5)
    assert any("WindowData ignores transform_param.scale" in m for m in log.levels(30))
    net.forward()
    bg = _warp(img["a"], 0, 0, 49, 39, 6, 6).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(net.blobs["data"].data, np.stack([bg, bg]))  # not scaled


def test_cli_reports_a_bad_window_file_in_one_line(capsys, tmp_path):
    write_image(tmp_path / "a.png", 10, 10)
    (tmp_path / "w.txt").write_text("# 0\na.png 3 10 10 1\n1 0.9 0 0 5 five\n")
    model = tmp_path / "net.prototxt"
    model.write_text(NET.format(source=tmp_path / "w.txt"))
    assert main(["time", f"--model={model}", "--iterations=1"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"ristretto: error: {tmp_path / 'w.txt'}:3: layer 'data': ")
    assert "expected y2 of window 0 of image 0 (an integer), got 'five'" in err[0]
