"""BlobProto <-> NumPy: shapes (incl. the legacy 4-D fields), data, and Caffe's shape check."""

from __future__ import annotations

import math

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

_LEGACY = ("num", "channels", "height", "width")
_INT_MAX = 2**31 - 1


def has_legacy_shape(bp) -> bool:
    """Whether any of num/channels/height/width is present (then they define the shape)."""
    return any(bp.HasField(f) for f in _LEGACY)


def blob_shape(bp) -> tuple[int, ...]:
    """The blob's shape: (num, channels, height, width) when any legacy field is present
    (absent ones count as 0, as in Caffe), else ``shape.dim`` (empty -> a 0-axis scalar)."""
    if has_legacy_shape(bp):
        return (bp.num, bp.channels, bp.height, bp.width)
    return tuple(int(d) for d in bp.shape.dim)


def blob_count(bp) -> int:
    """Number of values the shape calls for; RistrettoError for negative or huge shapes."""
    shape = blob_shape(bp)
    if any(d < 0 for d in shape):
        raise RistrettoError(f"blob shape {' x '.join(map(str, shape))} has a negative dimension")
    if len(shape) > 32:
        raise RistrettoError(f"blob has {len(shape)} axes; at most 32 are allowed")
    count = math.prod(shape)
    if count > _INT_MAX:
        raise RistrettoError(f"blob shape {' x '.join(map(str, shape))} has more than INT_MAX values")
    return count


def _source(bp, float_field: str, double_field: str, what: str, required: bool):
    """The repeated field holding the values (double preferred), checked against the shape;
    None when not ``required`` and both fields are empty."""
    doubles = getattr(bp, double_field)
    field = double_field if len(doubles) else float_field
    values = getattr(bp, field)
    if not required and len(values) == 0:
        return None
    count = blob_count(bp)
    if len(values) != count:
        shape = " x ".join(map(str, blob_shape(bp))) or "(scalar)"
        raise RistrettoError(f"blob {what} has {len(values)} values in {field}, but its shape "
                             f"{shape} needs {count}")
    return values


def _values(bp, float_field: str, double_field: str, what: str, required: bool):
    values = _source(bp, float_field, double_field, what, required)
    if values is None:
        return None
    with np.errstate(over="ignore"):  # a double beyond float32 range becomes inf, as in C++
        return np.array(values, dtype=np.float32).reshape(blob_shape(bp))


def blob_to_array(bp) -> np.ndarray:
    """The blob's data as float32 (``double_data`` preferred when non-empty); its length must
    equal the shape's count."""
    return _values(bp, "data", "double_data", "data", required=True)


def blob_diff_to_array(bp) -> np.ndarray | None:
    """The blob's diff as float32, or None when the blob has none."""
    return _values(bp, "diff", "double_diff", "diff", required=False)


def check_blob(bp) -> None:
    """Validate a stored blob without converting it: the data count (when any data is
    stored; a blob may be a shape-only placeholder) and the diff count."""
    if len(bp.data) or len(bp.double_data):
        _source(bp, "data", "double_data", "data", required=True)
    _source(bp, "diff", "double_diff", "diff", required=False)


def packed_float_field(field_number: int, values: np.ndarray) -> bytes:
    """Wire bytes of a packed float field (tag, length, little-endian float32 payload)."""
    payload = np.ascontiguousarray(values, dtype="<f4").tobytes()
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def array_to_blob(data, diff=None) -> caffe_pb2.BlobProto:
    """A BlobProto as Caffe's ``ToProto`` writes it: ``shape.dim`` + packed float ``data``
    (and ``diff`` when given); the legacy 4-D fields are never written."""
    a = np.asarray(data, dtype=np.float32)
    bp = caffe_pb2.BlobProto()
    if a.ndim:
        bp.shape.dim.extend(int(d) for d in a.shape)
    wire = b""
    if a.size:
        wire += packed_float_field(5, a.ravel())
    if diff is not None:
        d = np.asarray(diff, dtype=np.float32)
        if d.shape != a.shape:
            raise RistrettoError(f"diff shape {d.shape} differs from data shape {a.shape}")
        if d.size:
            wire += packed_float_field(6, d.ravel())
    if wire:
        bp.MergeFromString(wire)
    return bp


def shape_equals(bp, shape) -> bool:
    """Caffe's ``Blob::ShapeEquals``: with legacy fields present, ``shape`` (at most 4 axes)
    right-aligned and padded with 1s must equal (num, channels, height, width); otherwise
    ``shape.dim`` must equal ``shape`` exactly."""
    shape = tuple(int(d) for d in shape)
    if has_legacy_shape(bp):
        if len(shape) > 4:
            return False
        return (1,) * (4 - len(shape)) + shape == blob_shape(bp)
    return tuple(int(d) for d in bp.shape.dim) == shape
