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
no scatter). With a stride in the innermost axis both may go through stride phases instead,
where every slice is contiguous (see "stride phases").
"""

from __future__ import annotations

import functools
import itertools
import threading
import weakref
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

#: Column buffers are limited to about this many elements; larger batches are processed in
#: chunks of items (each chunk is still one GEMM per group).
COL_BUFFER_ELEMENTS = 1 << 25
#: Chunks are preferably smaller, so that the column buffer is still in the cache when the
#: GEMM reads it (about 4 MB of float32; chunking 82 MB buffers this way makes small-channel
#: layers 1.2-1.6x faster), but not so small that the GEMMs get fewer than
#: ``MIN_GEMM_COLUMNS`` columns, below which BLAS loses more than the cache saves.
CACHE_COL_ELEMENTS = 1 << 20
MIN_GEMM_COLUMNS = 1024


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

    def row_block(self, r0: int, r1: int) -> tuple[ConvGeometry, slice]:
        """Output rows ``r0:r1`` (first spatial axis) as a convolution of their own: its
        geometry and the slice of image rows it reads, which it pads at the top as needed
        (rows it reads past the image are zero, as in the whole convolution)."""
        k, s, p, d = self.kernel[0], self.stride[0], self.pad[0], self.dilation[0]
        first = r0 * s - p                         # image row under the block's first window
        end = (r1 - 1) * s - p + d * (k - 1) + 1
        lo = max(0, first)
        hi = max(lo, min(self.image[0], end))
        geo = ConvGeometry((hi - lo,) + self.image[1:], (r1 - r0,) + self.cols[1:], self.kernel,
                           self.stride, (lo - first,) + self.pad[1:], self.dilation)
        return geo, slice(lo, hi)


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
    if out is None:
        out = np.empty((c * geo.kernel_size, n * geo.col_size), x.dtype)
    if _use_phases(geo, batch_inner, accumulate=False):
        return _im2col_phases(x.transpose(1, 0, *_spatial_axes(nsp)), geo, out)
    if batch_inner:
        xt = x.transpose(1, *_spatial_axes(nsp), 0)    # (C, *image, N) view
        sp_axes, batch_axis = range(1, 1 + nsp), 1 + nsp
    else:
        xt = x.transpose(1, 0, *_spatial_axes(nsp))    # (C, N, *image) view
        sp_axes, batch_axis = range(2, 2 + nsp), 1
    padded = None
    if geo.needs_padding():
        shape = (c,) + geo.padded + (n,) if batch_inner else (c, n) + geo.padded
        inner = (slice(None),) + geo.interior() if batch_inner else (slice(None),) * 2 + geo.interior()
        padded, fresh = scratch_with_layout("im2col_pad", shape, x.dtype, inner)
        if fresh:
            padded.fill(0)
        source, xt = xt, padded
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
    if padded is not None:
        padded[inner] = source
    view = as_strided(xt, shape=shape, strides=strides, writeable=False)
    np.copyto(out.reshape(shape), view)
    return out


def col2im(col: np.ndarray, geo: ConvGeometry, n: int, c: int, batch_inner: bool,
           out: np.ndarray | None = None) -> np.ndarray:
    """Column buffer -> ``(N, C, *image)``, summing overlapping windows; what falls into the
    padding is dropped. Written into ``out`` when given, else into a fresh array."""
    nsp = len(geo.image)
    every = slice(None)
    if out is None:
        out = np.empty((n, c) + geo.image, col.dtype)
    if _use_phases(geo, batch_inner, accumulate=True):
        return _col2im_phases(col, geo, n, c, out)
    if batch_inner:
        colv = col.reshape((c,) + geo.kernel + geo.cols + (n,))
        acc = scratch("col2im", (c,) + geo.padded + (n,), col.dtype)
        lead = (every,)
        result = acc[lead + geo.interior()].transpose(nsp + 1, 0, *range(1, nsp + 1))
    else:
        colv = col.reshape((c,) + geo.kernel + (n,) + geo.cols)
        acc = scratch("col2im", (c, n) + geo.padded, col.dtype)
        lead = (every, every)
        result = acc[lead + geo.interior()].transpose(1, 0, *_spatial_axes(nsp))
    acc.fill(0)
    for offset in itertools.product(*(range(k) for k in geo.kernel)):
        acc[lead + geo.offset_slices(offset)] += colv[(every,) + offset]
    np.copyto(out, result)
    return out


# ------------------------------------------------------------------------- stride phases
# A strided window view reads the innermost axis with a stride, where NumPy copies and adds
# are several times slower than on contiguous runs. With the padded image split into
# stride phases, ``phase r[g] = padded[g * s + r]`` per axis, kernel offset k reads phase
# ``(k * d) % s`` shifted by ``(k * d) // s`` cells: an ordinary slice. Splitting costs one
# pass over the (small) image. Both layouts give the same column buffer, and col2im adds
# the same terms in the same order to every cell.
def _use_phases(geo: ConvGeometry, batch_inner: bool, accumulate: bool) -> bool:
    """Measured: col2im gains wherever windows overlap along the strided innermost axis;
    im2col only for kernels of 3 strides or more (the split costs more than it saves with
    few offsets per phase). Batch-inner buffers already copy contiguous runs."""
    if batch_inner or geo.stride[-1] == 1:
        return False
    return geo.kernel[-1] > geo.stride[-1] if accumulate else geo.kernel[-1] >= 3 * geo.stride[-1]


def _phase_grid(geo: ConvGeometry) -> tuple[int, ...]:
    return tuple(o + d * (k - 1) // s for o, k, s, d in
                 zip(geo.cols, geo.kernel, geo.stride, geo.dilation))


def axis_phases(size: int, stride: int, pad: int, grid: int) -> list[tuple[slice, slice]]:
    """Per phase r of one axis: the grid cells holding image values, and those image cells."""
    out = []
    for r in range(stride):
        g0 = max(0, -((r - pad) // stride))              # first cell with image index >= 0
        g1 = max(g0, min(grid, -((r - pad - size) // stride)))   # past the last < size
        start = g0 * stride + r - pad
        out.append((slice(g0, g1), slice(start, start + (g1 - g0 - 1) * stride + 1 if g1 > g0 else start,
                                         stride)))
    return out


@functools.lru_cache(maxsize=256)
def _phase_plan(geo: ConvGeometry):
    """(phase combinations with their grid / image regions, and per kernel offset its phase
    index and grid slices). Cached per geometry: for large kernels planning costs more
    Python time than a small chunk's copies."""
    grid = _phase_grid(geo)
    axes = [axis_phases(*a) for a in zip(geo.image, geo.stride, geo.pad, grid)]
    combos = list(itertools.product(*(range(s) for s in geo.stride)))
    regions = [tuple(axes[a][r] for a, r in enumerate(combo)) for combo in combos]
    index = {combo: i for i, combo in enumerate(combos)}
    offsets = []
    for offset in itertools.product(*(range(k) for k in geo.kernel)):
        reads = [k * d for k, d in zip(offset, geo.dilation)]
        phase = index[tuple(r % s for r, s in zip(reads, geo.stride))]
        offsets.append((phase, tuple(slice(r // s, r // s + o) for r, s, o in
                                     zip(reads, geo.stride, geo.cols))))
    return grid, regions, offsets


def _im2col_phases(xt: np.ndarray, geo: ConvGeometry, out: np.ndarray) -> np.ndarray:
    """im2col of ``xt`` ``(C, N, *image)`` (batch-outer columns) through stride phases."""
    c, n = xt.shape[:2]
    every = (slice(None), slice(None))
    grid, regions, offsets = _phase_plan(geo)
    phases = scratch("phases", (len(regions), c, n) + grid, xt.dtype)
    combos = list(itertools.product(*(range(s) for s in geo.stride)))
    grouped = all(d == 1 for d in geo.dilation)
    for dst, region in zip(phases, regions):
        cells = tuple(g for g, _ in region)
        if any(g.start > 0 or g.stop < q for g, q in zip(cells, grid)):
            dst.fill(0)
        if all(g.stop > g.start for g in cells):
            dst[every + cells] = xt[every + tuple(x for _, x in region)]
    if not grouped:
        colv = out.reshape((c, geo.kernel_size, n) + geo.cols)
        for k, (phase, cells) in enumerate(offsets):
            colv[:, k] = phases[phase][every + cells]
        return out
    # Undilated, the offsets k = a * s + r of one phase r are the cells shifted by a: one
    # strided copy per phase covers all of them.
    colk = out.reshape((c,) + geo.kernel + (n,) + geo.cols)
    for phase, combo in zip(phases, combos):
        dst = colk[(slice(None),) + tuple(slice(r, None, s) for r, s in zip(combo, geo.stride))]
        if dst.size:
            st = phase.strides
            np.copyto(dst, as_strided(phase, shape=dst.shape, writeable=False,
                                      strides=(st[0],) + st[2:] + (st[1],) + st[2:]))
    return out


def _col2im_phases(col: np.ndarray, geo: ConvGeometry, n: int, c: int, out: np.ndarray) -> np.ndarray:
    """col2im (batch-outer columns) through stride phases, written into ``out``
    ``(N, C, *image)``."""
    every = (slice(None), slice(None))
    grid, regions, offsets = _phase_plan(geo)
    acc = scratch("phases", (len(regions), c, n) + grid, col.dtype)
    colv = col.reshape((c, geo.kernel_size, n) + geo.cols)
    ot = out.transpose(1, 0, *_spatial_axes(len(geo.image)))
    acc.fill(0)
    for k, (phase, cells) in enumerate(offsets):
        acc[phase][every + cells] += colv[:, k]
    if sum(_prod(g.stop - g.start for g, _ in region) for region in regions) < geo.image_size:
        out.fill(0)     # image cells that no window reaches
    for src, region in zip(acc, regions):
        cells = tuple(g for g, _ in region)
        if all(g.stop > g.start for g in cells):
            ot[every + tuple(x for _, x in region)] = src[every + cells]
    return out


# ------------------------------------------------------------------------- scratch memory
class _Scratch(threading.local):
    def __init__(self):
        self.buffers: dict[str, np.ndarray] = {}
        #: Per slot, the array and layout whose constant part it holds (``scratch_with_layout``).
        self.layouts: dict[str, tuple] = {}
        #: Per (dtype, value), a flat array holding that value everywhere (``filled``).
        self.constants: dict[tuple, np.ndarray] = {}


_scratch = _Scratch()


def _scratch_array(slot: str, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    nbytes = _prod(shape) * dtype.itemsize
    buf = _scratch.buffers.get(slot)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 1), np.uint8)
        _scratch.buffers[slot] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def scratch(slot: str, shape, dtype) -> np.ndarray:
    """A reusable work array (contents undefined) for temporaries inside one layer call.

    Big fresh allocations cost page faults on every call; column buffers are therefore kept
    per thread and slot and reused. Never return a scratch array to a caller or keep it.
    """
    _scratch.layouts.pop(slot, None)        # the caller may write anywhere in it
    return _scratch_array(slot, shape, dtype)


def scratch_with_layout(slot: str, shape, dtype, layout) -> tuple[np.ndarray, bool]:
    """A work array as ``scratch`` gives, for callers that fill a constant part of it (an
    image's padding) the same way for a given ``layout`` and write only the rest on every
    call. Returns the array and whether the constant part must be written now: not when this
    thread's last request for the slot was for the same array, shape and layout (a plain
    ``scratch`` request for the slot in between forgets it). Layers call this once per
    block or batch chunk; the padding is then written again only when the layout changes."""
    array = _scratch_array(slot, shape, dtype)
    base = _scratch.buffers[slot]
    key = (tuple(shape), array.dtype, layout)
    last = _scratch.layouts.get(slot)
    fresh = last is None or last[0]() is not base or last[1] != key
    _scratch.layouts[slot] = (weakref.ref(base), key)
    return array, fresh


def filled(value, shape, dtype) -> np.ndarray:
    """An array of ``shape`` holding ``value`` everywhere, kept per thread: never write to it.
    NumPy's float ``maximum``, ``minimum``, ``fmax`` and ``fmin`` run their SIMD loops only
    for two array operands; with a scalar they take 3-4x the time (0.37 against 0.14 ns a
    value for ``maximum(x, 0)`` on 256 K float32), with the same results."""
    dtype = np.dtype(dtype)
    key = (dtype.str, dtype.type(value).tobytes())
    n = _prod(shape)
    buf = _scratch.constants.get(key)
    if buf is None or buf.size < n:
        buf = np.full(max(n, 1), value, dtype)
        _scratch.constants[key] = buf
    return buf[:n].reshape(shape)


def release_scratch() -> None:
    """Free the work arrays of this thread."""
    _scratch.buffers.clear()
    _scratch.layouts.clear()
    _scratch.constants.clear()
