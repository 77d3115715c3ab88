"""Batched im2col / col2im for convolution and deconvolution, any number of spatial axes.

A column buffer has rows ``(channel, kernel offsets...)`` — Caffe's im2col row order, which
matches the weight layout ``[out, in/group, k...]`` — and columns covering the whole batch,
so that one GEMM per group does a whole layer: ``Y (out, cols) = W (out, C*k) @ col``.

The columns are ordered either ``(item, positions...)`` or, with ``batch_inner``,
``(positions..., item)``. Strided NumPy copies cost a fixed overhead per innermost run, so
the run should be long: with small feature maps ``batch_inner`` makes the runs
``width * batch`` long; with large maps the plain order is better, because transposing the
GEMM result back to ``(N, C, ...)`` is then a cheap copy of contiguous rows (see
``batch_inner_for``).

im2col is one strided copy out of an ``as_strided`` window view of the zero-padded input;
col2im accumulates one strided slice per kernel offset (``prod(kernel)`` whole-array adds,
no scatter).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

#: Column buffers are limited to about this many elements; larger batches are processed in
#: chunks of items (each chunk is still one GEMM per group).
COL_BUFFER_ELEMENTS = 1 << 25


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    """Caffe's convolution output size, with C integer division (truncation toward zero)."""
    extent = dilation * (kernel - 1) + 1
    num = size + 2 * pad - extent
    quotient = num // stride if num >= 0 else -((-num) // stride)
    return quotient + 1


def deconv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


@dataclass(frozen=True)
class ConvGeometry:
    """Spatial geometry of one convolution: ``image`` = its input grid, ``cols`` = its output
    grid (for a deconvolution the roles are swapped by the caller)."""
    image: tuple[int, ...]
    cols: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def pointwise(self) -> bool:
        """1x1 kernel, stride 1, no padding: the input already is the column buffer."""
        return (all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride)
                and all(p == 0 for p in self.pad))

    @property
    def kernel_size(self) -> int:
        return _prod(self.kernel)

    @property
    def col_size(self) -> int:
        return _prod(self.cols)

    @property
    def image_size(self) -> int:
        return _prod(self.image)

    @property
    def padded(self) -> tuple[int, ...]:
        # Large enough for every window of the output grid: when C truncation yields one
        # output for an input smaller than the kernel extent, that window runs past the pad.
        return tuple(max(i + 2 * p, (o - 1) * s + d * (k - 1) + 1 if o > 0 else 0)
                     for i, o, k, s, p, d in zip(self.image, self.cols, self.kernel, self.stride,
                                                 self.pad, self.dilation))

    def needs_padding(self) -> bool:
        return self.padded != self.image

    def offset_slices(self, offset) -> tuple[slice, ...]:
        """Per spatial axis: the strided slice of the padded image read by kernel ``offset``."""
        return tuple(slice(q * d, q * d + (o - 1) * s + 1, s)
                     for q, d, o, s in zip(offset, self.dilation, self.cols, self.stride))

    def interior(self) -> tuple[slice, ...]:
        return tuple(slice(p, p + i) for p, i in zip(self.pad, self.image))


def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def batch_inner_for(n: int, positions: tuple[int, ...], itemsize: int) -> bool:
    """Heuristic layout choice (speed only; both orders give identical results).

    Put the batch innermost when feature-map rows are short (the strided copies would then
    run many tiny inner loops) and one channel of the batch still fits in cache (the final
    transposition back to ``(N, C, ...)`` reads it with stride ``N``).
    """
    if n <= 1 or not positions:
        return False
    return positions[-1] < 32 and _prod(positions) * n * itemsize <= (1 << 19)


# ------------------------------------------------------------------------- layouts
def _spatial_axes(nsp: int, start: int = 2) -> tuple[int, ...]:
    return tuple(range(start, start + nsp))


def to_cols(a: np.ndarray, batch_inner: bool, out: np.ndarray) -> np.ndarray:
    """``(N, C, *spatial)`` -> ``(C, columns)`` in the column order; written into ``out``."""
    nsp = a.ndim - 2
    perm = (1, *_spatial_axes(nsp), 0) if batch_inner else (1, 0, *_spatial_axes(nsp))
    view = a.transpose(perm)
    np.copyto(out.reshape(view.shape), view)
    return out


def from_cols(m: np.ndarray, n: int, spatial: tuple[int, ...], batch_inner: bool) -> np.ndarray:
    """``(C, columns)`` -> a ``(N, C, *spatial)`` view (not contiguous unless N == 1)."""
    c = m.shape[0]
    nsp = len(spatial)
    if batch_inner:
        return m.reshape((c,) + spatial + (n,)).transpose(nsp + 1, 0, *range(1, nsp + 1))
    return m.reshape((c, n) + spatial).transpose(1, 0, *_spatial_axes(nsp))


# ------------------------------------------------------------------------- im2col / col2im
def im2col(x: np.ndarray, geo: ConvGeometry, batch_inner: bool,
           out: np.ndarray | None = None) -> np.ndarray:
    """``x`` ``(N, C, *image)`` -> column buffer ``(C*prod(kernel), N*prod(cols))``."""
    n, c = x.shape[:2]
    nsp = len(geo.image)
    if batch_inner:
        xt = x.transpose(1, *_spatial_axes(nsp), 0)    # (C, *image, N) view
        sp_axes, batch_axis = range(1, 1 + nsp), 1 + nsp
    else:
        xt = x.transpose(1, 0, *_spatial_axes(nsp))    # (C, N, *image) view
        sp_axes, batch_axis = range(2, 2 + nsp), 1
    if geo.needs_padding():
        shape = (c,) + geo.padded + (n,) if batch_inner else (c, n) + geo.padded
        padded = np.zeros(shape, x.dtype)
        inner = geo.interior()
        padded[(slice(None),) + inner if batch_inner else (slice(None), slice(None)) + inner] = xt
        xt = padded
    st = xt.strides
    sp = [st[a] for a in sp_axes]
    win_strides = tuple(s * d for s, d in zip(sp, geo.dilation))
    pos_strides = tuple(s * k for s, k in zip(sp, geo.stride))
    if batch_inner:
        shape = (c,) + geo.kernel + geo.cols + (n,)
        strides = (st[0],) + win_strides + pos_strides + (st[batch_axis],)
    else:
        shape = (c,) + geo.kernel + (n,) + geo.cols
        strides = (st[0],) + win_strides + (st[batch_axis],) + pos_strides
    view = as_strided(xt, shape=shape, strides=strides, writeable=False)
    if out is None:
        out = np.empty((c * geo.kernel_size, n * geo.col_size), x.dtype)
    np.copyto(out.reshape(shape), view)
    return out


def col2im(col: np.ndarray, geo: ConvGeometry, n: int, c: int, batch_inner: bool) -> np.ndarray:
    """Column buffer -> ``(N, C, *image)`` view of a fresh array, summing overlapping
    windows; what falls into the padding is dropped."""
    nsp = len(geo.image)
    every = slice(None)
    if batch_inner:
        colv = col.reshape((c,) + geo.kernel + geo.cols + (n,))
        acc = np.zeros((c,) + geo.padded + (n,), col.dtype)
        for offset in itertools.product(*(range(k) for k in geo.kernel)):
            acc[(every,) + geo.offset_slices(offset)] += colv[(every,) + offset]
        inner = acc[(every,) + geo.interior()]
        return inner.transpose(nsp + 1, 0, *range(1, nsp + 1))
    colv = col.reshape((c,) + geo.kernel + (n,) + geo.cols)
    acc = np.zeros((c, n) + geo.padded, col.dtype)
    for offset in itertools.product(*(range(k) for k in geo.kernel)):
        acc[(every, every) + geo.offset_slices(offset)] += colv[(every,) + offset]
    return acc[(every, every) + geo.interior()].transpose(1, 0, *_spatial_axes(nsp))


# ------------------------------------------------------------------------- scratch memory
class _Scratch(threading.local):
    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}


_scratch = _Scratch()


def scratch(slot: str, shape, dtype) -> np.ndarray:
    """A reusable work array (contents undefined) for temporaries inside one layer call.

    Big fresh allocations cost page faults on every call; column buffers are therefore kept
    per thread and slot and reused. Never return a scratch array to a caller or keep it.
    """
    dtype = np.dtype(dtype)
    nbytes = _prod(shape) * dtype.itemsize
    buf = _scratch.buffers.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 1), np.uint8)
        _scratch.buffers[slot] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch() -> None:
    """Free the work arrays of this thread."""
    _scratch.buffers.clear()
