"""Blob: a named N-D array with its gradient, the unit of data flow between layers.

Caffe blobs are views onto shared memory; here ``data``/``diff`` are NumPy arrays and sharing
is expressed by two blobs holding the same array object (Split tops, weight sharing) or a
reshaped view of it (Flatten, Reshape). Code that must be seen by every alias (in-place
layers, Ristretto's in-place input trimming, solver updates) writes *into* the array.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.errors import RistrettoError

DTYPE = np.float32
#: Caffe's largest blob (its count is a C int).
MAX_COUNT = 2**31 - 1


def check_shape(shape: tuple[int, ...]) -> None:
    """Caffe's checks on a blob shape: no negative axis, at most INT_MAX values."""
    if any(s < 0 for s in shape):
        raise RistrettoError(f"negative dimension in blob shape {shape}")
    size = count(shape)
    if size > MAX_COUNT:
        raise RistrettoError(f"blob size exceeds INT_MAX: shape {shape} holds {size} values, "
                             f"Caffe's limit is {MAX_COUNT}")


class Blob:
    __slots__ = ("name", "data", "_diff")

    def __init__(self, shape=(), name: str = "", data: np.ndarray | None = None):
        self.name = name
        if data is None:
            shape = tuple(int(s) for s in shape)
            check_shape(shape)
            data = np.zeros(shape, DTYPE)
        self.data = data
        self._diff: np.ndarray | None = None

    # The gradient is allocated on first use: a net that only runs forward never pays for it.
    @property
    def diff(self) -> np.ndarray:
        d = self._diff
        if d is None or d.shape != self.data.shape:
            d = self._diff = np.zeros(self.data.shape, self.data.dtype)
        return d

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._diff = value

    @property
    def has_diff(self) -> bool:
        return self._diff is not None and self._diff.shape == self.data.shape

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def count(self) -> int:
        return int(self.data.size)

    @property
    def num_axes(self) -> int:
        return self.data.ndim

    def reshape(self, shape) -> None:
        """Give the blob a new shape; contents become undefined (zeros) if it changes."""
        shape = tuple(int(s) for s in shape)
        if self.data.shape != shape:
            check_shape(shape)
            self.data = np.zeros(shape, self.data.dtype)
            self._diff = None

    def share_data(self, other: Blob) -> None:
        """Alias ``other``'s values (Caffe's ShareData)."""
        self.data = other.data

    def share_diff(self, other: Blob) -> None:
        self._diff = other.diff

    def zero_diff(self) -> None:
        if self._diff is not None:
            self._diff[...] = 0

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self.shape})"


class BlobView:
    """A blob as pycaffe shows it (its ``Blob``): ``data`` and ``diff`` as NumPy arrays,
    ``shape``, ``count``, the legacy 4-D accessors and ``reshape(*shape)``. Given to Python
    layers and to the pycaffe API."""

    def __init__(self, blob: Blob):
        self._blob = blob

    @property
    def data(self) -> np.ndarray:
        return self._blob.data

    @data.setter
    def data(self, value) -> None:
        self._blob.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._blob.diff

    @diff.setter
    def diff(self, value) -> None:
        self._blob.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def _legacy(self, axis: int) -> int:
        shape = self._blob.shape
        if len(shape) > 4:
            raise RistrettoError("legacy accessors need a blob of at most 4 axes")
        return shape[axis] if axis < len(shape) else 1  # Caffe pads missing axes with 1 on the right

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self._blob.reshape(shape)

    def __repr__(self) -> str:
        return f"<Blob shape={self.shape}>"


def canonical_axis(axis: int, num_axes: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex: negative counts from the end; out of range is an error."""
    if not -num_axes <= axis < num_axes:
        raise RistrettoError(f"{what} {axis} out of range for a {num_axes}-D blob")
    return axis + num_axes if axis < 0 else axis


def count(shape, start: int = 0, end: int | None = None) -> int:
    """Product of ``shape[start:end]`` (1 for an empty range), as Caffe's Blob::count."""
    n = 1
    for s in tuple(shape)[start:end]:
        n *= int(s)
    return n


def shape_str(shape) -> str:
    """Caffe's shape string: ``64 1 28 28 (50176)``."""
    return "".join(f"{s} " for s in shape) + f"({count(shape)})"     # a scalar: "(1)"
