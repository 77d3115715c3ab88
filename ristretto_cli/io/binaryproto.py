"""Single-blob ``.binaryproto`` files: mean images and InfogainLoss matrices."""

from __future__ import annotations

import os

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.atomic import atomic_write_bytes
from ristretto_cli.io.blobproto import blob_to_array, packed_float_field
from ristretto_cli.io.files import parse_binary, read_bytes, serialize_binary
from ristretto_cli.proto import caffe_pb2

WHAT = "binaryproto blob file"


def read_blob_proto(path):
    """The file's BlobProto message."""
    path = os.fspath(path)
    data = read_bytes(path)
    if not data:
        raise RistrettoError(f"not a valid {WHAT}: the file is empty", path=path)
    return parse_binary(data, caffe_pb2.BlobProto(), path, WHAT)


def read_blob_file(path) -> np.ndarray:
    """The blob as a float32 array shaped by its proto (legacy 4-D fields when present)."""
    bp = read_blob_proto(path)
    try:
        return blob_to_array(bp)
    except RistrettoError as exc:
        raise RistrettoError(f"not a valid {WHAT}: {exc.message}", path=os.fspath(path)) from None


def write_mean_file(path, mean_chw) -> None:
    """Write a C x H x W mean as Caffe's ``compute_image_mean`` does: legacy
    num=1/channels/height/width plus packed float data, atomically."""
    mean = np.asarray(mean_chw, dtype=np.float32)
    if mean.ndim != 3:
        raise RistrettoError(f"a mean image must be C x H x W, got shape {mean.shape}",
                             path=os.fspath(path))
    bp = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1],
                             width=mean.shape[2])
    wire = bp.SerializeToString()
    if mean.size:
        wire += packed_float_field(5, mean.ravel())
    atomic_write_bytes(path, serialize_binary(bp, path, WHAT, wire))
