"""BlobProto <-> NumPy (formats.md §4): legacy shape precedence, double data, counts,
Caffe's ToProto wire form and ShapeEquals."""

from __future__ import annotations

import numpy as np
import pytest
from io_support import bits

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import array_to_blob, blob_diff_to_array, blob_shape, blob_to_array, shape_equals
from ristretto_cli.proto import caffe_pb2


def test_legacy_fields_take_precedence_when_any_is_present():
    bp = caffe_pb2.BlobProto(height=3)
    bp.shape.dim.extend([7, 7])
    assert blob_shape(bp) == (0, 0, 3, 0)  # absent legacy fields count as 0
    bp = caffe_pb2.BlobProto(num=0)       # present with the default value still counts
    bp.shape.dim.extend([2])
    assert blob_shape(bp) == (0, 0, 0, 0)


def test_shape_dim_is_used_without_legacy_fields():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 3, 4])
    assert blob_shape(bp) == (2, 3, 4)
    assert blob_shape(caffe_pb2.BlobProto()) == ()  # a 0-axis scalar (count 1)


def test_data_is_read_as_float32_in_c_order():
    bp = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    bp.data.extend([0, 1, 2, 3, 4, 5])
    a = blob_to_array(bp)
    assert a.dtype == np.float32 and a.shape == (1, 2, 1, 3)
    assert a[0, 1, 0, 2] == 5


def test_double_data_is_preferred_and_rounded_to_float32():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2])
    bp.data.extend([9.0, 9.0])
    bp.double_data.extend([0.1, 1e300])
    a = blob_to_array(bp)
    assert a[0] == np.float32(0.1) and np.isinf(a[1])


@pytest.mark.parametrize("field", ["data", "double_data"])
def test_count_mismatch_is_an_error(field):
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, 3])
    getattr(bp, field).extend([1.0] * 5)
    with pytest.raises(RistrettoError, match=f"5 values in {field}, but its shape 2 x 3 needs 6"):
        blob_to_array(bp)


def test_negative_dimension_is_an_error():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2, -3])
    with pytest.raises(RistrettoError, match="negative dimension"):
        blob_to_array(bp)


def test_diff_is_none_when_absent_and_checked_when_present():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([2])
    bp.data.extend([1, 2])
    assert blob_diff_to_array(bp) is None
    bp.double_diff.extend([0.5, 0.25])
    assert blob_diff_to_array(bp).tolist() == [0.5, 0.25]
    bp.diff.append(1.0)  # ignored: double_diff is non-empty
    assert blob_diff_to_array(bp).tolist() == [0.5, 0.25]
    bp.ClearField("double_diff")
    with pytest.raises(RistrettoError, match="1 values in diff"):
        blob_diff_to_array(bp)


def test_array_to_blob_writes_shape_dim_and_packed_data_like_caffe():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    bp = array_to_blob(a)
    assert not any(bp.HasField(f) for f in ("num", "channels", "height", "width"))
    # The wire form Caffe's ToProto produces: data (field 5, packed) then shape (field 7).
    expected = (b"\x2a\x18" + a.astype("<f4").tobytes() + b"\x3a\x04\x0a\x02\x02\x03")
    assert bp.SerializeToString() == expected
    with_diff = array_to_blob(a, -a)
    assert blob_diff_to_array(with_diff).tolist() == (-a).tolist()


def test_array_to_blob_keeps_every_bit():
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 1e-45, -3.4028235e38], dtype=np.float32)
    nan_payloads = np.array([0x7FC00001, 0xFFC12345], dtype=np.uint32).view(np.float32)
    a = np.concatenate([specials, nan_payloads, np.random.default_rng(1).standard_normal(1000)
                        .astype(np.float32)]).reshape(2, 504)
    back = blob_to_array(caffe_pb2.BlobProto.FromString(array_to_blob(a).SerializeToString()))
    assert np.array_equal(bits(back), bits(a))


def test_scalar_and_empty_arrays():
    scalar = array_to_blob(np.float32(2.5))
    assert blob_shape(scalar) == () and blob_to_array(scalar).shape == () and blob_to_array(scalar) == 2.5
    empty = array_to_blob(np.zeros((0, 4), np.float32))
    assert blob_shape(empty) == (0, 4) and blob_to_array(empty).shape == (0, 4)


@pytest.mark.parametrize("legacy, shape, equal", [
    ((1, 1, 500, 800), (500, 800), True),    # InnerProduct weight stored by a V1 caffemodel
    ((1, 1, 1, 500), (500,), True),          # bias
    ((20, 1, 5, 5), (20, 1, 5, 5), True),
    ((1, 1, 500, 800), (1, 500, 800), True),
    ((1, 1, 500, 800), (800, 500), False),
    ((2, 1, 500, 800), (500, 800), False),    # padding is with 1s only
    ((1, 1, 1, 1), (1, 1, 1, 1, 1), False),   # more than 4 axes never matches legacy dims
    ((1, 1, 1, 7), (7, 1), False),
])
def test_shape_equals_with_legacy_dims_right_aligns_and_pads_with_ones(legacy, shape, equal):
    num, channels, height, width = legacy
    bp = caffe_pb2.BlobProto(num=num, channels=channels, height=height, width=width)
    assert shape_equals(bp, shape) is equal


def test_shape_equals_with_shape_dim_is_exact():
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend([500, 800])
    assert shape_equals(bp, (500, 800))
    assert not shape_equals(bp, (1, 1, 500, 800))
