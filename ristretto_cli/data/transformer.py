"""Caffe's DataTransformer (solver_and_cli.md §8.1), vectorised over a whole batch.

Per item: optional mirror (random, drawn in *every* phase when ``mirror`` is set), optional
crop (random offsets in TRAIN, centred in TEST), then ``(x - mean) * scale`` in float32
with the mean taken from the mean file at the *uncropped* source position, or per channel
from ``mean_value``. Items are C x H x W arrays (uint8 pixels, or float32 ``float_data``).

Items of one shape are transformed with whole-batch array operations; a batch of mixed
sizes (possible with crop) is transformed one group of equal shapes at a time.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.data.datum import decode_mode
from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN


def _shape_str(shape) -> str:
    return " x ".join(str(int(s)) for s in shape)


class DataTransformer:
    """``transform_param`` applied to batches; ``layer`` names the layer in errors."""

    def __init__(self, param: caffe_pb2.TransformationParameter | None = None, phase: int = caffe_pb2.TEST,
                 *, layer: str | None = None):
        self.param = caffe_pb2.TransformationParameter()
        if param is not None:
            self.param.CopyFrom(param)
        p = self.param
        self.phase = phase
        self.layer = layer
        self.scale = np.float32(p.scale)
        self.crop = int(p.crop_size)
        self.mirror = bool(p.mirror)
        self.force_color = bool(p.force_color)
        self.force_gray = bool(p.force_gray)
        self._warned_force = False
        self.mean_file: np.ndarray | None = None
        self.mean_file_path = p.mean_file if p.HasField("mean_file") else None
        if self.mean_file_path is not None and len(p.mean_value):
            raise self._error("cannot specify mean_file and mean_value at the same time")
        if self.mean_file_path is not None:
            from ristretto_cli.io import read_blob_file
            logger.info("Loading mean file from: %s", self.mean_file_path)
            mean = read_blob_file(self.mean_file_path)
            # Caffe compares only the blob's legacy channels/height/width and reads the first
            # C*H*W values: an N x C x H x W blob (N >= 1) or, our extension, a plain C x H x W.
            if mean.ndim == 4 and mean.shape[0] >= 1:
                if mean.shape[0] > 1:
                    logger.warning("The mean file %s holds %d images; using the first, as Caffe does",
                                   self.mean_file_path, mean.shape[0])
                mean = mean[0]
            if mean.ndim != 3:
                raise RistrettoError(f"a mean file must hold an N x C x H x W blob (N >= 1), got shape "
                                     f"{_shape_str(mean.shape)}", path=self.mean_file_path,
                                     layer=layer)
            self.mean_file = np.ascontiguousarray(mean, np.float32)
        self.mean_values = np.array(p.mean_value, np.float32) if len(p.mean_value) else None

    # ------------------------------------------------------------------ properties
    @property
    def deterministic(self) -> bool:
        """No random draws: the same input always gives the same output."""
        return not self.mirror and not (self.crop and self.phase == TRAIN)

    def decode_mode(self) -> str:
        """How encoded images are decoded: native, forced color (BGR) or forced gray."""
        try:
            return decode_mode(self.force_color, self.force_gray)
        except RistrettoError as exc:
            raise exc.located(layer=self.layer) from None

    def note_raw_datum(self) -> None:
        """force_color/force_gray only act on encoded Datums; Caffe logs an error and goes on."""
        if (self.force_color or self.force_gray) and not self._warned_force:
            self._warned_force = True
            logger.error("force_color and force_gray only for encoded datum")

    def _error(self, message: str) -> RistrettoError:
        return RistrettoError(message, layer=self.layer)

    # ------------------------------------------------------------------ shapes
    def infer_shape(self, item_shape) -> tuple[int, int, int]:
        """Output C x H' x W' for an input item of shape C x H x W (Caffe's InferBlobShape)."""
        c, h, w = (int(s) for s in item_shape)
        if c <= 0:
            raise self._error(f"input item has {c} channels; at least 1 is needed")
        if h <= 0 or w <= 0:  # Caffe's load_batch CHECKs that the batch holds data
            raise self._error(f"input item ({_shape_str(item_shape)}) holds no pixels")
        if h < self.crop or w < self.crop:
            raise self._error(f"crop_size {self.crop} is larger than the input item "
                              f"({_shape_str(item_shape)})")
        return (c, self.crop, self.crop) if self.crop else (c, h, w)

    def _check_item(self, shape, out_shape, index: int, names=None) -> None:
        c, h, w = shape
        what = f"item {index}" if names is None else f"item {index} ({names[index]})"
        if c != out_shape[0] or (not self.crop and (h, w) != tuple(out_shape[1:])):
            raise self._error(f"{what} of the batch is {_shape_str(shape)}, but the batch shape "
                              f"(from its first item) is {_shape_str(out_shape)}")
        if h < self.crop or w < self.crop:
            raise self._error(f"crop_size {self.crop} is larger than {what} ({_shape_str(shape)})")
        if self.mean_file is not None and tuple(shape) != self.mean_file.shape:
            raise RistrettoError(f"the mean file is {_shape_str(self.mean_file.shape)} but the input "
                                 f"is {_shape_str(shape)} (the mean must have the uncropped input size)",
                                 path=self.mean_file_path, layer=self.layer)
        if self.mean_values is not None and len(self.mean_values) not in (1, c):
            raise self._error(f"specify either 1 mean_value or as many as channels: {c} "
                              f"(got {len(self.mean_values)})")

    # ------------------------------------------------------------------ transform
    def _draw(self, rng, shapes: np.ndarray):
        """Per-item mirror flags and crop offsets; ``shapes`` is an (N, 3) array."""
        n = len(shapes)
        mirror = None
        if self.mirror:
            if rng is None:
                raise self._error("a random transform (mirror) needs a generator")
            mirror = rng.integers(0, 2, n).astype(bool)
        if not self.crop:
            zeros = np.zeros(n, np.int64)
            return mirror, zeros, zeros
        if self.phase == TRAIN:
            if rng is None:
                raise self._error("a random crop needs a generator")
            h_off = rng.integers(0, shapes[:, 1] - self.crop + 1)
            w_off = rng.integers(0, shapes[:, 2] - self.crop + 1)
        else:
            h_off = (shapes[:, 1] - self.crop) // 2
            w_off = (shapes[:, 2] - self.crop) // 2
        return mirror, np.asarray(h_off, np.int64), np.asarray(w_off, np.int64)

    def transform(self, items, rng: np.random.Generator | None = None, *, names=None) -> np.ndarray:
        """Transform a batch: ``items`` is an N x C x H x W array or a list of C x H x W
        arrays (uint8 or float32). Returns float32 N x C x H' x W', shaped by the first item.

        ``rng`` is needed only for random transforms; ``names`` (per item) improves errors.
        """
        stacked = items if isinstance(items, np.ndarray) else None
        if stacked is None:
            first = items[0]
            if all(x.shape == first.shape and x.dtype == first.dtype for x in items):
                stacked = np.stack(items)
        n = len(items)
        if n == 0:
            raise self._error("there is no item to transform")
        first_shape = items[0].shape if stacked is None else stacked.shape[1:]
        out_shape = self.infer_shape(first_shape)
        if stacked is not None:
            self._check_item(stacked.shape[1:], out_shape, 0, names)
            shapes = np.tile(np.array(stacked.shape[1:], np.int64), (n, 1))
        else:
            for i, x in enumerate(items):
                self._check_item(x.shape, out_shape, i, names)
            shapes = np.array([x.shape for x in items], np.int64)
        mirror, h_off, w_off = self._draw(rng, shapes)
        out = np.empty((n, *out_shape), np.float32)
        if stacked is not None:
            self._apply(stacked, h_off, w_off, mirror, out)
            return out
        # Mixed input sizes (crop to a common size): one vectorised pass per input shape.
        groups: dict[tuple, list[int]] = {}
        for i, x in enumerate(items):
            groups.setdefault((x.shape, x.dtype.str), []).append(i)
        for idx in groups.values():
            sel = np.array(idx)
            part = np.empty((len(idx), *out_shape), np.float32)
            self._apply(np.stack([items[i] for i in idx]), h_off[sel], w_off[sel],
                        None if mirror is None else mirror[sel], part)
            out[sel] = part
        return out

    def _apply(self, x: np.ndarray, h_off, w_off, mirror, out: np.ndarray) -> None:
        """Crop, mean, scale and mirror ``x`` (n x C x H x W, one shape) into ``out``."""
        n, c = x.shape[:2]
        oh, ow = out.shape[2:]
        if np.all(h_off == h_off[0]) and np.all(w_off == w_off[0]):
            h0, w0 = int(h_off[0]), int(w_off[0])
            src = x[:, :, h0:h0 + oh, w0:w0 + ow]
            mean = None if self.mean_file is None else self.mean_file[:, h0:h0 + oh, w0:w0 + ow]
        else:
            # Per-item offsets: one gather over the batch (and the mean at the source position).
            rows = (h_off[:, None] + np.arange(oh))[:, None, :, None]
            cols = (w_off[:, None] + np.arange(ow))[:, None, None, :]
            chans = np.arange(c)[None, :, None, None]
            src = x[np.arange(n)[:, None, None, None], chans, rows, cols]
            mean = None if self.mean_file is None else self.mean_file[chans, rows, cols]
        if mean is None and self.mean_values is not None:
            mv = self.mean_values if len(self.mean_values) == c else np.repeat(self.mean_values, c)
            mean = mv.reshape(1, c, 1, 1)
        # float32 arithmetic exactly as Caffe: (pixel - mean) * scale, or pixel * scale.
        if mean is not None:
            np.subtract(src, mean, out=out, dtype=np.float32)
            if self.scale != 1:
                np.multiply(out, self.scale, out=out)
        else:
            np.multiply(src, self.scale, out=out, dtype=np.float32)
        if mirror is not None and mirror.any():
            out[mirror] = out[mirror][..., ::-1]
