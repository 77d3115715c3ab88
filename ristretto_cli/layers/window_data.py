"""WindowData: batches of image windows for R-CNN style fine-tuning (Caffe 1.0's WindowDataLayer).

Windows come from a window file (``ristretto_cli.data.window_file``). Those with overlap >=
``fg_threshold`` are foreground (their class must be > 0); the others with overlap <
``bg_threshold`` are background, labelled 0; the rest are never used. Each batch holds
``batch_size - int(batch_size * fg_fraction)`` background windows followed by the foreground
ones, each drawn uniformly with replacement from its set. A window is cut from its image
(OpenCV, BGR, as Caffe reads it), optionally widened by ``context_pad`` output pixels per
side and/or made square, clipped to the image, warped bilinearly to its share of the
``crop_size`` x ``crop_size`` output (what lies beyond the image stays 0), optionally
flipped, then ``(pixel - mean) * scale`` in float32.

As in Caffe, ``crop_size``, ``mirror``, ``mean_file`` and ``mean_value`` come from
``transform_param`` and ``scale`` from ``window_data_param``. The draws (which windows,
which to flip) come from the layer's seeded generator at forward time, so a seeded run
repeats its batches and ``state_dict`` resumes them; they are not Caffe's mt19937 draws.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.data.datum import COLOR, decode_image, read_image
from ristretto_cli.data.transformer import DataTransformer
from ristretto_cli.data.window_file import WindowFile, read_window_file
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.data import fill_top, rng_from_state, rng_state
from ristretto_cli.layers.registry import register
from ristretto_cli.log import logger

IMAGE_CHANNELS = 3  # every image is read as 3-channel BGR


def _round_half_away(x: np.ndarray) -> np.ndarray:
    """C's round() of float32 values (halves away from zero), as int64; exact in float64.
    Values that are not finite (from an empty window) give 0; such windows are refused later."""
    x = np.asarray(x, np.float64)
    x = np.where(np.isfinite(x), x, 0)
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5)).astype(np.int64)


def window_placement(boxes, image_hw, crop_size: int, context_pad: int = 0, square: bool = False,
                     mirror=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each window is read from its image and where it lands in the output square.

    ``boxes``: (n, 4) ``x1 y1 x2 y2`` (inclusive corners); ``image_hw``: (n, 2) image rows and
    columns; ``mirror``: (n,) flips. Returns the region read, (n, 4) ``x1 y1 x2 y2``, the
    size it is warped to, (n, 2) ``height width``, and its offset in the output, (n, 2)
    ``top left``. Without context padding or square mode the window is read as given and
    fills the output. Otherwise the region around the window's centre is scaled by
    ``crop / (crop - 2 * context_pad)`` (after widening the shorter side in square mode),
    clipped to the image, and the cut-off parts become zero borders scaled like the window;
    a flipped window takes its right border on the left. The arithmetic is Caffe's: float32
    with C rounding.
    """
    boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
    n = len(boxes)
    rows, cols = (np.asarray(image_hw, np.int64).reshape(-1, 2)[:, k] for k in (0, 1))
    crop = np.float32(crop_size)
    if not context_pad and not square:
        return boxes.copy(), np.full((n, 2), crop_size, np.int64), np.zeros((n, 2), np.int64)
    x1, y1, x2, y2 = boxes.T
    context_scale = crop / np.float32(crop_size - 2 * context_pad)
    half_h = (y2 - y1 + 1).astype(np.float32) / np.float32(2)
    half_w = (x2 - x1 + 1).astype(np.float32) / np.float32(2)
    centre_x = x1.astype(np.float32) + half_w
    centre_y = y1.astype(np.float32) + half_h
    if square:
        half_h = half_w = np.maximum(half_h, half_w)
    x1 = _round_half_away(centre_x - half_w * context_scale)
    x2 = _round_half_away(centre_x + half_w * context_scale)
    y1 = _round_half_away(centre_y - half_h * context_scale)
    y2 = _round_half_away(centre_y + half_h * context_scale)
    # The widened region may leave the image: clip it, remembering how much was cut off.
    cut_x1, cut_y1 = np.maximum(0, -x1), np.maximum(0, -y1)
    cut_x2, cut_y2 = np.maximum(0, x2 - cols + 1), np.maximum(0, y2 - rows + 1)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty region: refused by the caller
        scale_x = crop / (x2 - x1 + 1).astype(np.float32)
        scale_y = crop / (y2 - y1 + 1).astype(np.float32)
    x1, y1, x2, y2 = x1 + cut_x1, y1 + cut_y1, x2 - cut_x2, y2 - cut_y2

    def to_output(length, scale):  # image pixels -> output pixels
        with np.errstate(invalid="ignore"):
            return _round_half_away(length.astype(np.float32) * scale)

    out_h, out_w = to_output(y2 - y1 + 1, scale_y), to_output(x2 - x1 + 1, scale_x)
    top = to_output(cut_y1, scale_y)
    flips = np.zeros(n, bool) if mirror is None else np.asarray(mirror, bool)
    left = np.where(flips, to_output(cut_x2, scale_x), to_output(cut_x1, scale_x))
    # Rounding may push the warped region past the output's edge: shrink it to fit.
    out_h = np.minimum(out_h, crop_size - top)
    out_w = np.minimum(out_w, crop_size - left)
    return (np.stack([x1, y1, x2, y2], 1), np.stack([out_h, out_w], 1), np.stack([top, left], 1))


@register("WindowData")
class WindowDataLayer(Layer):
    """Foreground and background windows of the images in a window file, warped to a square."""
    exact_bottoms = 0
    exact_tops = 2
    has_backward = False  # a source: nothing flows back into it

    def layer_setup(self, bottom, top):
        p = self.param.window_data_param
        tp = self.param.transform_param
        self._check_params(p, tp)
        transformer = DataTransformer(tp, self.phase, layer=self.name)  # loads and checks the mean
        self.crop_size = int(tp.crop_size)
        self.mirror = bool(tp.mirror)
        self.scale = np.float32(p.scale)
        self.batch_size = int(p.batch_size)
        self.context_pad = int(p.context_pad)
        self.square = p.crop_mode == "square"
        self.num_fg = int(np.float32(self.batch_size) * np.float32(p.fg_fraction))
        try:
            self.windows = read_window_file(p.source)
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from None
        self._split(p)
        images = self.windows.images
        self.channels = images[-1].channels  # Caffe shapes the data top by the last header
        if self.channels < IMAGE_CHANNELS:
            raise RistrettoError(f"the last image entry declares {self.channels} channel(s), which sets "
                                 f"the data top's channels, but every window holds {IMAGE_CHANNELS} "
                                 "(images are read as BGR)", path=p.source, line=images[-1].line,
                                 layer=self.name)
        self.mean = self._mean(transformer)
        self.image_paths = [p.root_folder + image.path for image in images]
        self._encoded = [self._read_bytes(i) for i in range(len(images))] if p.cache_images else None
        logger.info("Number of images: %d", len(images))
        logger.info("Amount of context padding: %d", self.context_pad)
        logger.info("Crop mode: %s", p.crop_mode)
        top[0].reshape((self.batch_size, self.channels, self.crop_size, self.crop_size))
        top[1].reshape((self.batch_size,))
        logger.info("output data size: %s", ",".join(str(d) for d in top[0].shape))

    def _check_params(self, p, tp) -> None:
        logger.info("Window data layer: foreground (object) overlap threshold: %g, background "
                    "(non-object) overlap threshold: %g, foreground sampling fraction: %g, "
                    "cache_images: %d, root_folder: %s", p.fg_threshold, p.bg_threshold,
                    p.fg_fraction, p.cache_images, p.root_folder)
        for f in ("mean_file", "crop_size", "mirror"):
            if p.HasField(f):
                logger.warning("layer '%s': window_data_param.%s is ignored (a legacy field); put it in "
                               "transform_param", self.name, f)
        for f in ("scale", "force_color", "force_gray"):
            if tp.HasField(f):
                logger.warning("layer '%s': WindowData ignores transform_param.%s (it reads color images "
                               "and scales by window_data_param.scale)", self.name, f)
        if not p.source:
            raise self.error("window_data_param.source (the window file) is not set")
        if p.batch_size <= 0:
            raise self.error("window_data_param.batch_size must be positive")
        if tp.crop_size <= 0:
            hint = " (window_data_param.crop_size is a legacy field)" if p.HasField("crop_size") else ""
            raise self.error("WindowData needs transform_param.crop_size > 0: every window is warped to "
                             f"crop_size x crop_size{hint}")
        if 2 * p.context_pad >= tp.crop_size:
            raise self.error(f"context_pad {p.context_pad} leaves no room for the window in crop_size "
                             f"{tp.crop_size} (2 * context_pad must be smaller)")
        if not 0 <= p.fg_fraction <= 1:
            raise self.error(f"fg_fraction must be between 0 and 1, got {p.fg_fraction:g}")
        if p.crop_mode not in ("warp", "square"):
            logger.warning("layer '%s': crop_mode '%s' is neither 'warp' nor 'square'; warping, as Caffe "
                           "does", self.name, p.crop_mode)

    def _split(self, p) -> None:
        """Foreground and background windows (indices into the file's windows), as Caffe splits them."""
        w: WindowFile = self.windows
        fg = w.overlap >= np.float32(p.fg_threshold)
        bg = ~fg & (w.overlap < np.float32(p.bg_threshold))
        bad = np.flatnonzero(fg & (w.label <= 0))
        if bad.size:
            k = bad[0]
            raise RistrettoError(f"a foreground window (overlap {w.overlap[k]:g} >= fg_threshold "
                                 f"{p.fg_threshold:g}) has class_index {w.label[k]}; it must be > 0 "
                                 "(0 is the background class)", path=w.path, line=int(w.line[k]),
                                 layer=self.name)
        self.fg_windows, self.bg_windows = np.flatnonzero(fg), np.flatnonzero(bg)
        self.labels = np.where(fg, w.label, 0).astype(np.float32)
        classes, counts = np.unique(w.label[fg], return_counts=True)
        logger.info("class 0 has %d samples", self.bg_windows.size)
        for c, k in zip(classes, counts):
            logger.info("class %d has %d samples", c, k)
        # Caffe requires both sets whatever fg_fraction is.
        for name, chosen, rule in (("foreground", self.fg_windows, f">= fg_threshold {p.fg_threshold:g}"),
                                   ("background", self.bg_windows, f"< bg_threshold {p.bg_threshold:g}")):
            if not chosen.size:
                raise RistrettoError(f"the window file has no {name} windows (overlap {rule}); WindowData "
                                     "needs at least one of each", path=w.path, layer=self.name)

    def _mean(self, transformer: DataTransformer) -> np.ndarray | None:
        """The mean to subtract, broadcastable to (3, crop, crop): the mean file's centre
        crop_size square (offset ``(width - crop) / 2`` on both axes, as Caffe), or mean_value."""
        crop = self.crop_size
        if transformer.mean_file is not None:
            mean = transformer.mean_file
            c, h, w = mean.shape
            off = (w - crop) // 2
            if c < IMAGE_CHANNELS or w < crop or h < off + crop:
                raise RistrettoError(f"the mean file is {c} x {h} x {w}, but WindowData reads "
                                     f"{IMAGE_CHANNELS} channels of its centre {crop} x {crop} square at "
                                     "offset (width - crop_size) / 2 on both axes",
                                     path=transformer.mean_file_path,
                                     layer=self.name)
            return mean[:IMAGE_CHANNELS, off:off + crop, off:off + crop]
        if transformer.mean_values is not None:
            values = transformer.mean_values
            if len(values) not in (1, self.channels):
                raise self.error(f"specify either 1 mean_value or as many as channels: {self.channels} "
                                 f"(got {len(values)})")
            return np.resize(values, IMAGE_CHANNELS).reshape(IMAGE_CHANNELS, 1, 1)
        return None

    # ------------------------------------------------------------------ images
    def _image_error(self, index: int, message: str) -> RistrettoError:
        listed = f"{self.windows.path}:{self.windows.images[index].line}"
        return RistrettoError(f"{message} (image entry at {listed})", path=self.image_paths[index],
                              layer=self.name)

    def _read_bytes(self, index: int) -> bytes:
        try:
            return read_bytes(self.image_paths[index], "could not load image")
        except RistrettoError as exc:
            raise self._image_error(index, exc.message) from None

    def _image(self, index: int) -> np.ndarray:
        """Image ``index`` as OpenCV reads it in color (H x W x 3, BGR)."""
        try:
            if self._encoded is not None:
                return decode_image(self._encoded[index], COLOR, "could not load image")
            return read_image(self.image_paths[index], is_color=True)
        except RistrettoError as exc:
            raise self._image_error(index, exc.message) from None

    # ------------------------------------------------------------------ forward
    def _draw(self) -> tuple[np.ndarray, np.ndarray]:
        """The batch's windows (background first, then foreground) and their flips."""
        rng = self.rng
        bg = self.bg_windows[rng.integers(self.bg_windows.size, size=self.batch_size - self.num_fg)]
        fg = self.fg_windows[rng.integers(self.fg_windows.size, size=self.num_fg)]
        picks = np.concatenate([bg, fg])
        flips = (rng.integers(0, 2, size=self.batch_size).astype(bool) if self.mirror
                 else np.zeros(self.batch_size, bool))
        return picks, flips

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        picks, flips = self._draw()
        w = self.windows
        image_of = w.image_index[picks]
        images = {int(i): self._image(int(i)) for i in np.unique(image_of)}
        image_hw = np.array([images[int(i)].shape[:2] for i in image_of], np.int64).reshape(-1, 2)
        roi, size, offset = window_placement(w.boxes[picks], image_hw, self.crop_size, self.context_pad,
                                             self.square, flips)
        self._check_placement(picks, image_hw, roi, size)
        crop = self.crop_size
        data = np.zeros((self.batch_size, self.channels, crop, crop), np.float32)
        written = np.zeros((self.batch_size, 1, crop, crop), bool)
        # One crop and resize per window: each comes from its own image region.
        for k, (x1, y1, x2, y2) in enumerate(roi):
            region = images[int(image_of[k])][y1:y2 + 1, x1:x2 + 1]
            out_h, out_w = size[k]
            warped = _resize(region, int(out_w), int(out_h))
            if flips[k]:
                warped = warped[:, ::-1]
            row0, col0 = offset[k]
            data[k, :IMAGE_CHANNELS, row0:row0 + out_h, col0:col0 + out_w] = warped.transpose(2, 0, 1)
            written[k, 0, row0:row0 + out_h, col0:col0 + out_w] = True
        pixels = data[:, :IMAGE_CHANNELS]
        if self.mean is not None:
            np.subtract(pixels, self.mean, out=pixels, where=written)
        if self.scale != 1:
            np.multiply(pixels, self.scale, out=pixels, where=written)
        fill_top(top[0], data)
        fill_top(top[1], self.labels[picks])

    def _check_placement(self, picks, image_hw, roi, size) -> None:
        """Caffe (OpenCV) aborts on a region outside its image or warped to no pixels."""
        rows, cols = image_hw.T
        x1, y1, x2, y2 = roi.T
        inside = (x1 >= 0) & (y1 >= 0) & (x2 < cols) & (y2 < rows)
        bad = ~inside | (x2 < x1) | (y2 < y1) | (size[:, 0] < 1) | (size[:, 1] < 1)
        if not bad.any():
            return
        k = int(np.flatnonzero(bad)[0])
        window = picks[k]
        box = " ".join(str(v) for v in self.windows.boxes[window])
        image = self.image_paths[int(self.windows.image_index[window])]
        if not inside[k]:
            why = "it is not inside the image (without context_pad or square mode it is read as given)"
        elif x2[k] < x1[k] or y2[k] < y1[k]:
            why = "no part of it lies inside the image" if self.context_pad or self.square else "it is empty"
        else:
            why = "the part inside the image warps to no output pixels"
        raise RistrettoError(f"window '{box}' of image {image} ({cols[k]} x {rows[k]} pixels) cannot be "
                             f"cropped: {why}", path=self.windows.path, line=int(self.windows.line[window]),
                             layer=self.name)

    def state_dict(self) -> dict | None:
        return {"rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        if "rng" in state:
            self.rng = rng_from_state(state["rng"])


def _resize(region: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV's bilinear resize (INTER_LINEAR, Caffe's flag) of an image region."""
    import cv2
    return cv2.resize(region, (width, height), interpolation=cv2.INTER_LINEAR)
