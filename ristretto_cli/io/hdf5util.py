"""Small HDF5 helpers shared by the weights and solver-state readers/writers (h5py optional)."""

from __future__ import annotations

import os

import numpy as np

from ristretto_cli.errors import RistrettoError


def require_h5py(path=None):
    """The h5py module, or a RistrettoError saying how to install it."""
    try:
        import h5py
    except ImportError:
        raise RistrettoError("HDF5 files need the optional h5py package "
                             "(pip install 'ristretto-cli[hdf5]')", path=path) from None
    return h5py


def open_h5(path, what: str):
    """Open an existing HDF5 file read-only; RistrettoError when it cannot be opened."""
    h5py = require_h5py(path)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RistrettoError("cannot read: No such file or directory", path=path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise RistrettoError(f"not a valid {what}: HDF5 library cannot open it ({exc})",
                             path=path) from None


def load_float_dataset(ds, where: str, path, what: str) -> np.ndarray:
    """A numeric dataset as float32 (Caffe accepts float and integer classes)."""
    h5py = require_h5py(path)
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
        raise RistrettoError(f"not a valid {what}: {where} is not a numeric dataset", path=path)
    return np.asarray(ds[()], dtype=np.float32)


def load_int(f, name: str, path, what: str) -> int:
    h5py = require_h5py(path)
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "iu" or ds.size != 1:
        raise RistrettoError(f"not a valid {what}: no integer dataset '{name}'", path=path)
    return int(np.asarray(ds[()]).reshape(-1)[0])


def load_string(f, name: str, path, what: str) -> str:
    h5py = require_h5py(path)
    ds = f.get(name)
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "SOU":
        raise RistrettoError(f"not a valid {what}: '{name}' is not a string dataset", path=path)
    value = ds[()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")
    return str(value)


def save_int(f, name: str, value: int) -> None:
    """Like Caffe's ``hdf5_save_int``: a 1-D int32 dataset of length 1."""
    f.create_dataset(name, data=np.array([value], dtype=np.int32))


def save_string(f, name: str, value: str) -> None:
    """Like ``H5LTmake_dataset_string``: a scalar, NUL-terminated fixed-length string."""
    h5py = require_h5py()
    raw = value.encode("utf-8")
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(raw) + 1)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(f.id, name.encode("utf-8"), tid, space)
    dset.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(raw + b"\0", dtype=f"S{len(raw) + 1}"), mtype=tid)


def save_float_dataset(group, name: str, array) -> None:
    """An N-D float32 dataset (contiguous, uncompressed, as Caffe writes blobs)."""
    group.create_dataset(name, data=np.asarray(array, dtype=np.float32))
