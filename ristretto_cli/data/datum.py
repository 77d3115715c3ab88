"""Datum records <-> NumPy arrays, and OpenCV image decoding the way Caffe does it.

Layout conventions (formats.md §9.1): a raw Datum holds uint8 pixels (or ``float_data``)
in CHW order; an encoded Datum holds a whole image file that OpenCV decodes to HWC with
BGR channel order. Everything handed to the transformer is CHW.
"""

from __future__ import annotations

import os

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

# Decode modes: Caffe's DecodeDatumToCVMatNative (-1 = as stored), force_color, force_gray.
NATIVE = "native"
COLOR = "color"
GRAY = "gray"


def _cv2():
    import cv2
    return cv2


def imread_flag(mode: str) -> int:
    cv2 = _cv2()
    return {NATIVE: cv2.IMREAD_UNCHANGED, COLOR: cv2.IMREAD_COLOR, GRAY: cv2.IMREAD_GRAYSCALE}[mode]


def decode_mode(force_color: bool, force_gray: bool) -> str:
    if force_color and force_gray:
        raise RistrettoError("transform_param: cannot set both force_color and force_gray")
    return COLOR if force_color else GRAY if force_gray else NATIVE


def image_to_chw(img: np.ndarray, where: str = "image") -> np.ndarray:
    """An OpenCV image (H x W or H x W x C, uint8) as a C x H x W array (a view)."""
    if img.dtype != np.uint8:
        raise RistrettoError(f"{where}: image data type must be unsigned byte (8-bit), got {img.dtype}")
    if img.ndim == 2:
        return img[np.newaxis]
    return img.transpose(2, 0, 1)


def decode_image(buf: bytes, mode: str = NATIVE, where: str = "encoded image") -> np.ndarray:
    """Decode image file bytes with OpenCV; RistrettoError naming ``where`` if it fails."""
    cv2 = _cv2()
    img = cv2.imdecode(np.frombuffer(buf, np.uint8), imread_flag(mode)) if len(buf) else None
    if img is None:
        raise RistrettoError(f"{where}: could not decode the image data")
    return img


def read_image(path: str, is_color: bool = True, height: int = 0, width: int = 0) -> np.ndarray:
    """Caffe's ReadImageToCVMat: ``imread`` in color (BGR) or grayscale, then a bilinear
    ``resize`` to width x height when both are > 0. Returns the OpenCV (HWC/HW) image."""
    cv2 = _cv2()
    if not os.path.isfile(path):
        reason = "is a directory" if os.path.isdir(path) else "No such file or directory"
        raise RistrettoError(f"could not load image: {reason}", path=path)
    flags = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    try:
        path.encode("utf-8")
        img = cv2.imread(path, flags)
    except UnicodeEncodeError:      # a name that is not UTF-8 crashes imread: decode the bytes
        with open(path, "rb") as f:
            buf = np.frombuffer(f.read(), np.uint8)
        img = cv2.imdecode(buf, flags) if buf.size else None
    if img is None:
        raise RistrettoError("could not load image: OpenCV cannot decode it", path=path)
    if height > 0 and width > 0:
        img = cv2.resize(img, (width, height))  # default INTER_LINEAR, as Caffe
    return img


def parse_datum(value: bytes, where: str = "record") -> caffe_pb2.Datum:
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception:
        raise RistrettoError(f"{where}: not a valid Datum record") from None
    return datum


def datum_to_chw(datum: caffe_pb2.Datum, mode: str = NATIVE, where: str = "record",
                 decode_check=None) -> np.ndarray:
    """The Datum's pixels as C x H x W: uint8 for ``data`` and encoded images, float32 for
    ``float_data``. ``mode`` (native/color/gray) applies to encoded Datums only."""
    if datum.encoded:
        if decode_check is not None:
            decode_check()
        return image_to_chw(decode_image(datum.data, mode, where), where)
    c, h, w = datum.channels, datum.height, datum.width
    size = c * h * w
    if datum.data:
        if len(datum.data) != size:
            raise RistrettoError(f"{where}: the Datum holds {len(datum.data)} bytes but its shape "
                                 f"{c} x {h} x {w} needs {size}")
        return np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    if len(datum.float_data) != size:
        raise RistrettoError(f"{where}: the Datum holds {len(datum.float_data)} float values but "
                             f"its shape {c} x {h} x {w} needs {size}")
    return np.array(datum.float_data, np.float32).reshape(c, h, w)


def chw_to_datum(array: np.ndarray, label: int = 0, *, encoded_flag: bool | None = None) -> caffe_pb2.Datum:
    """A raw Datum from a C x H x W array (uint8 -> ``data``, otherwise ``float_data``).

    ``encoded_flag=False`` also stores ``encoded: false`` explicitly, as Caffe's CVMatToDatum
    does (so the serialized bytes equal those of ``convert_imageset``).
    """
    a = np.asarray(array)
    if a.ndim != 3:
        raise RistrettoError(f"a Datum needs a C x H x W array, got shape {a.shape}")
    datum = caffe_pb2.Datum(channels=a.shape[0], height=a.shape[1], width=a.shape[2])
    if a.dtype == np.uint8:
        datum.data = np.ascontiguousarray(a).tobytes()
    else:
        datum.float_data.extend(np.asarray(a, np.float32).ravel().tolist())
    datum.label = int(label)
    if encoded_flag is not None:
        datum.encoded = encoded_flag
    return datum


def image_to_datum(img: np.ndarray, label: int = 0) -> caffe_pb2.Datum:
    """Caffe's CVMatToDatum + set_label: an OpenCV image as a raw (CHW uint8) Datum."""
    return chw_to_datum(image_to_chw(img), label, encoded_flag=False)


def encoded_datum(data: bytes, label: int = 0) -> caffe_pb2.Datum:
    """An encoded Datum as Caffe's ReadFileToDatum / imencode path writes it."""
    return caffe_pb2.Datum(data=data, label=int(label), encoded=True)


def stack_items(items: list[np.ndarray]) -> np.ndarray | None:
    """The items as one N x C x H x W array when they agree in shape and dtype, else None."""
    first = items[0]
    if all(x.shape == first.shape and x.dtype == first.dtype for x in items):
        return np.stack(items)
    return None
