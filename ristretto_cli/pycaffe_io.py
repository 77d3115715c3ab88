"""pycaffe's ``caffe.io``: images in and out of a net's input layout, protos <-> arrays.

Reached as ``caffe.io`` after ``from ristretto_cli import pycaffe as caffe``. The names,
arguments and results are pycaffe's. Images are read and resized with OpenCV where pycaffe
uses scikit-image: the same pixels on reading; resizing is bilinear from pixel centres as
well, but scikit-image's border handling (and, in its newer versions, smoothing before
shrinking) can differ in the last digits near the edges.

One pycaffe slip is not copied: ``Transformer.preprocess`` never writes into the caller's
array (pycaffe modifies a float32 input of the right size in place unless a channel swap
copied it first).
"""

from __future__ import annotations

import cv2
import numpy as np

from ristretto_cli.io.blobproto import blob_shape
from ristretto_cli.proto import caffe_pb2

__all__ = ["Transformer", "load_image", "resize_image", "oversample", "blobproto_to_array",
           "array_to_blobproto", "arraylist_to_blobprotovector_str",
           "arraylist_to_blobprotovecor_str", "blobprotovector_str_to_arraylist",
           "array_to_datum", "datum_to_array"]


# ----------------------------------------------------------------------------- protos
def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as a float64 array of its shape (the legacy 4-D fields
    when present, as in Caffe)."""
    values = blob.diff if return_diff else blob.data
    return np.array(values, dtype=np.float64).reshape(blob_shape(blob))


def array_to_blobproto(arr, diff=None) -> caffe_pb2.BlobProto:
    """An array (any number of axes) as a BlobProto with ``shape``; ``diff`` as its diff."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(int(d) for d in arr.shape)
    blob.data.extend(arr.astype(np.float64).ravel())
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float64).ravel())
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    """Arrays serialized as one BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


#: pycaffe's spelling of the name.
arraylist_to_blobprotovecor_str = arraylist_to_blobprotovector_str


def blobprotovector_str_to_arraylist(data: bytes) -> list[np.ndarray]:
    """A serialized BlobProtoVector as a list of arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(data)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr, label=None) -> caffe_pb2.Datum:
    """A ``(C, H, W)`` array as a Datum: uint8 as its byte string, anything else as floats."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"array_to_datum needs a (channels, height, width) array, got shape {arr.shape}")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = (int(d) for d in arr.shape)
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float64).ravel())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """A Datum's values as ``(C, H, W)``: uint8 from its bytes, else float64 (its label is
    ``datum.label``). Encoded (compressed image) datums are not decoded, as in pycaffe."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape).copy()
    return np.array(datum.float_data, dtype=np.float64).reshape(shape)


# ----------------------------------------------------------------------------- images
class _UnreadableImage(ValueError, OSError):
    """A file ``load_image`` cannot read: an OSError as scikit-image's in pycaffe (and a
    ValueError, as before)."""


#: scikit-image's luminance weights for R, G, B (what pycaffe's grayscale reading uses).
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


def load_image(filename, color: bool = True) -> np.ndarray:
    """An image file as float32 in [0, 1], ``(H, W, 3)`` RGB, or ``(H, W, 1)`` intensity
    with ``color=False``; gray files are repeated into three channels for ``color=True`` and
    an alpha channel is dropped."""
    raw = cv2.imread(str(filename), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise _UnreadableImage(f"{filename}: cannot read an image from this file")
    if np.issubdtype(raw.dtype, np.integer):
        img = raw.astype(np.float64) / np.iinfo(raw.dtype).max
    else:
        img = raw.astype(np.float64)
    if img.ndim == 3:
        img = img[:, :, 2::-1] if img.shape[2] >= 3 else img[:, :, :1]   # BGR(A) -> RGB
        if not color:
            img = (img @ _GRAY_WEIGHTS)[:, :, None] if img.shape[2] == 3 else img
    else:
        img = img[:, :, None]
    if color and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return img.astype(np.float32)


_INTERPOLATION = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR, 3: cv2.INTER_CUBIC}
#: OpenCV resizes at most this many channels at a time.
_CV_MAX_CHANNELS = 512


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """``(H, W, K)`` -> ``(new_dims[0], new_dims[1], K)`` float32; ``interp_order`` 0
    (nearest), 1 (bilinear) or 3 (bicubic). A constant image stays that constant."""
    im = np.asarray(im)
    if im.ndim != 3:
        raise ValueError(f"resize_image needs an (height, width, channels) array, got shape {im.shape}")
    if interp_order not in _INTERPOLATION:
        raise ValueError(f"interp_order {interp_order} is not supported: use 0 (nearest), "
                         f"1 (bilinear) or 3 (bicubic)")
    height, width = (int(d) for d in new_dims)
    lo, hi = (im.min(), im.max()) if im.size else (0, 0)
    if lo == hi:
        return np.full((height, width, im.shape[2]), lo, np.float32)
    src = im.astype(np.float32)
    out = np.empty((height, width, im.shape[2]), np.float32)
    for k in range(0, im.shape[2], _CV_MAX_CHANNELS):
        part = np.ascontiguousarray(src[:, :, k:k + _CV_MAX_CHANNELS])
        resized = cv2.resize(part, (width, height), interpolation=_INTERPOLATION[interp_order])
        out[:, :, k:k + _CV_MAX_CHANNELS] = resized.reshape(height, width, -1)
    return out


def centre_crop_origin(image_dims, crop_dims) -> tuple[int, int]:
    """Top-left corner of the centre crop, where pycaffe's float arithmetic puts it
    (truncated): shared by ``oversample`` and ``Classifier.predict``."""
    (h, w), (ch, cw) = image_dims[:2], crop_dims[:2]
    return int(h / 2.0 - ch / 2.0), int(w / 2.0 - cw / 2.0)


def oversample(images, crop_dims) -> np.ndarray:
    """Ten crops of each ``(H, W, K)`` image: the four corners and the centre, then the
    same five mirrored left to right; ``(10 * N, crop_h, crop_w, K)`` float32."""
    shape = np.array(images[0].shape)
    ch, cw = (int(d) for d in crop_dims)
    corners = [(i, j) for i in (0, shape[0] - ch) for j in (0, shape[1] - cw)]
    starts = corners + [centre_crop_origin(shape, (ch, cw))]
    crops = np.empty((10 * len(images), ch, cw, shape[-1]), np.float32)
    for n, im in enumerate(images):
        window = np.stack([im[i:i + ch, j:j + cw, :] for i, j in starts])
        crops[10 * n:10 * n + 5] = window
        crops[10 * n + 5:10 * n + 10] = window[:, :, ::-1, :]
    return crops


# ----------------------------------------------------------------------------- Transformer
class Transformer:
    """Turns ``(H, W, K)`` images into a net input's ``(K, H, W)`` layout and back.

    ``inputs``: input blob name -> its shape (e.g. ``{'data': net.blobs['data'].data.shape}``).
    ``preprocess`` applies, in this order: conversion to float32, resizing to the input's
    height and width, ``set_transpose``, ``set_channel_swap``, ``set_raw_scale``,
    ``set_mean`` (subtracted), ``set_input_scale``.
    """

    def __init__(self, inputs: dict):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check_input(self, in_) -> tuple[int, ...]:
        if in_ not in self.inputs:
            raise ValueError(f"{in_} is not one of the net inputs: {list(self.inputs)}")
        return self.inputs[in_]

    def preprocess(self, in_, data) -> np.ndarray:
        """One ``(H', W', K)`` image as a ``(K, H, W)`` float32 input for ``in_``."""
        shape = self._check_input(in_)
        out = np.array(data, dtype=np.float32)      # a copy: the caller's array is left alone
        in_dims = shape[2:]
        if out.shape[:2] != in_dims:
            out = resize_image(out, in_dims)
        if in_ in self.transpose:
            out = out.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            out = out[list(self.channel_swap[in_]), :, :]
        out = np.ascontiguousarray(out)
        if in_ in self.raw_scale:
            out *= self.raw_scale[in_]
        if in_ in self.mean:
            out -= self.mean[in_]
        if in_ in self.input_scale:
            out *= self.input_scale[in_]
        return out

    def deprocess(self, in_, data) -> np.ndarray:
        """The inverse of ``preprocess`` (resizing aside): a net input back to an image."""
        self._check_input(in_)
        out = np.array(data).squeeze()              # a copy in its own dtype, as pycaffe
        if not np.issubdtype(out.dtype, np.floating):
            out = out.astype(np.float32)
        if in_ in self.input_scale:
            out /= self.input_scale[in_]
        if in_ in self.mean:
            out += self.mean[in_]
        if in_ in self.raw_scale:
            out /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            out = out[np.argsort(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            out = out.transpose(np.argsort(self.transpose[in_]))
        return out

    def set_transpose(self, in_, order) -> None:
        """The axis order taking an image to the input's layout, e.g. ``(2, 0, 1)`` for
        ``(H, W, K)`` -> ``(K, H, W)``."""
        shape = self._check_input(in_)
        if len(order) != len(shape) - 1:
            raise ValueError(f"transpose order {tuple(order)} needs {len(shape) - 1} axes, as "
                             f"input {in_} has without its batch axis")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order) -> None:
        """The channel order after transposing, e.g. ``(2, 1, 0)`` for RGB -> BGR."""
        shape = self._check_input(in_)
        if len(order) != shape[1]:
            raise ValueError(f"channel swap {tuple(order)} needs {shape[1]} channels, as input "
                             f"{in_} has")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale) -> None:
        """Multiplies the image before the mean is subtracted (255 for models trained on
        0-255 pixels, as CaffeNet)."""
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_, mean) -> None:
        """Subtracted after the raw scale: one value per channel, or a ``(K, H, W)`` (or
        ``(H, W)``) array; one of another height and width (the 256 x 256 ImageNet mean for
        a 227 x 227 input) is resized to the input's, bilinearly, as pycaffe does."""
        shape = self._check_input(in_)
        mean = np.asarray(mean)
        if mean.ndim == 1:
            if mean.shape[0] != shape[1]:
                raise ValueError(f"mean has {mean.shape[0]} channels, input {in_} has {shape[1]}")
            mean = mean[:, None, None]
        else:
            ms = (1,) + mean.shape if mean.ndim == 2 else mean.shape
            if len(ms) != 3:
                raise ValueError(f"mean of shape {mean.shape}: give one value per channel or a "
                                 f"(channels, height, width) array")
            if ms[0] != shape[1]:
                raise ValueError(f"mean of shape {mean.shape} has {ms[0]} channels, input {in_} "
                                 f"has {shape[1]}")
            if ms[1:] != shape[2:]:
                mean = resize_image(mean.reshape(ms).transpose(1, 2, 0), shape[2:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_, scale) -> None:
        """Multiplies the input after the mean is subtracted."""
        self._check_input(in_)
        self.input_scale[in_] = scale
