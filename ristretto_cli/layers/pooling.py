"""Pooling (MAX, AVE, STOCHASTIC) over 4-D blobs, vectorised with one slice per kernel
offset (``kernel_h * kernel_w`` whole-array operations, no per-pixel loops). MAX and AVE read
the input split into stride phases, where every offset's slice is contiguous (see
``PoolGeometry``, "phase layout"), block by block of planes. MAX's backward instead sends
each output's gradient to its winner's cell in one indexed addition (``route_backward``).

Numerics follow Caffe's CPU code: MAX scans each window row-major and replaces only on a
strictly greater value (ties keep the first element, NaN never wins, padding never wins);
AVE adds the clipped window in row-major order starting from 0 and divides once by the window
size clipped to the *padded* extent. Accumulating offset by offset reproduces that order
exactly, because cells outside the window contribute an exact +0.

STOCHASTIC goes past Caffe, whose CPU build aborts: we implement the GPU kernels' rule on the
CPU. TRAIN samples one cell of the unpadded window with probability proportional to its value
(the first cell whose running sum reaches ``u * sum``, ``u`` uniform in (0, 1] from the
layer's generator) and its backward routes the gradient to that cell; TEST outputs
``sum(x^2) / sum(x)`` (0 when the sum is not positive), and its backward is the exact
derivative of that expression (Caffe has no TEST backward).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.layers.base import TRAIN, Layer
from ristretto_cli.layers.im2col import axis_phases, filled, scratch, scratch_with_layout
from ristretto_cli.layers.neuron import gate_gradient, gate_in_blocks, rectify
from ristretto_cli.layers.registry import register
from ristretto_cli.proto import caffe_pb2

MAX = caffe_pb2.PoolingParameter.MAX
AVE = caffe_pb2.PoolingParameter.AVE
STOCHASTIC = caffe_pb2.PoolingParameter.STOCHASTIC
CEIL = caffe_pb2.PoolingParameter.CEIL
FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool,
                any_pad: bool) -> int:
    """Caffe's pooled size: float32 quotient rounded up (CEIL) or down, plus one; with any
    padding, a last window that would start in the bottom/right padding is dropped."""
    q = np.float32(size + 2 * pad - kernel) / np.float32(stride)
    out = int(np.ceil(q) if ceil_mode else np.floor(q)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolGeometry:
    size: tuple[int, int]      # (H, W)
    pooled: tuple[int, int]    # (PH, PW)
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]

    @property
    def padded(self) -> tuple[int, int]:
        # Covers the padding and, in CEIL mode, windows reaching past it.
        return tuple(max(i + 2 * p, (o - 1) * s + k) for i, o, k, s, p in
                     zip(self.size, self.pooled, self.kernel, self.stride, self.pad))

    def offsets(self, reverse: bool = False):
        """Kernel offsets with their flat index, row-major (Caffe's scan order in a window).

        ``reverse``: for gradient accumulation. Caffe adds into a cell in the row-major order
        of the *outputs*, and the outputs covering a cell see it at decreasing offsets, so
        the reversed offset order reproduces its summation order exactly.
        """
        items = list(enumerate(itertools.product(range(self.kernel[0]), range(self.kernel[1]))))
        return reversed(items) if reverse else items

    def window(self, a: np.ndarray, offset) -> np.ndarray:
        """The ``(..., PH, PW)`` view of padded ``a`` seen by kernel ``offset``."""
        (i, j), (ph, pw), (sh, sw) = offset, self.pooled, self.stride
        return a[..., i:i + (ph - 1) * sh + 1:sh, j:j + (pw - 1) * sw + 1:sw]

    def pad_array(self, x: np.ndarray, fill: float) -> np.ndarray:
        """``x`` placed in a ``fill``-valued array of the padded extent (``x`` itself if none)."""
        if self.padded == self.size:
            return x
        out = np.full(x.shape[:-2] + self.padded, fill, x.dtype)
        out[..., self.pad[0]:self.pad[0] + self.size[0], self.pad[1]:self.pad[1] + self.size[1]] = x
        return out

    # -- phase layout -------------------------------------------------------------------
    # Window views of a strided pooling are strided in the innermost axis, where NumPy is
    # an order of magnitude slower than on contiguous runs. The padded input is therefore
    # split into stride phases, ``phase (a, b)[r, c] = padded[r * sh + a, c * sw + b]`` on a
    # grid of ``(PH + (kh-1)//sh, PW + (kw-1)//sw)`` cells per plane; kernel offset (i, j)
    # then reads phase ``(i % sh, j % sw)`` shifted by ``(i // sh, j // sw)`` cells, which
    # is one contiguous slice of the flattened phase. Results land on the same grid (the
    # cells past PH/PW hold values of no window and are cut off at the end). Everything is
    # done block by block of planes, so that each block's passes run in the cache.
    @property
    def grid(self) -> tuple[int, int]:
        return tuple(o + (k - 1) // s for o, k, s in zip(self.pooled, self.kernel, self.stride))

    @property
    def grid_size(self) -> int:
        return self.grid[0] * self.grid[1]

    def phase_regions(self):
        """Per phase (a, b): its grid cells that hold input values, and those input cells:
        ``(a, b, grid rows, grid cols, input rows, input cols)`` as slices."""
        rows, cols = (axis_phases(*a) for a in zip(self.size, self.stride, self.pad, self.grid))
        return [(a, b, gr, gc, xr, xc) for a, (gr, xr) in enumerate(rows)
                for b, (gc, xc) in enumerate(cols)]

    def flat_offsets(self, reverse: bool = False):
        """``(o, a, b, shift)`` per kernel offset: its flat index, phase, and flat shift."""
        sh, sw = self.stride
        wq = self.grid[1]
        return [(o, i % sh, j % sw, (i // sh) * wq + j // sw)
                for o, (i, j) in self.offsets(reverse)]

    def flat_length(self) -> int:
        """The largest flat shift: the last cells of a plane's grid that no window starts
        at (all past PH/PW), and that shifted slices of the plane may not reach past."""
        (kh, kw), (sh, sw), wq = self.kernel, self.stride, self.grid[1]
        return ((kh - 1) // sh) * wq + (kw - 1) // sw

    def planes(self, a: np.ndarray, pooled: bool = False) -> int:
        per = _prod(self.pooled if pooled else self.size)
        return a.size // per if per else 0

    def phases_are_input(self, x: np.ndarray) -> bool:
        """Stride 1, no padding, no overhang: the input itself is the only phase."""
        return (self.stride == (1, 1) and self.grid == self.size and self.pad == (0, 0)
                and x.flags.c_contiguous)

    def fill_phases(self, x3: np.ndarray, q: np.ndarray, fill: float | None) -> None:
        """Phases ``q`` ``(sh, sw, M, hq, wq)`` of the planes ``x3`` ``(M, H, W)``; the cells
        outside the input get ``fill``, or keep what they hold where it is None."""
        hq, wq = self.grid
        for a, b, gr, gc, xr, xc in self.phase_regions():
            dst = q[a, b]
            if fill is not None and (gr.stop - gr.start < hq or gc.stop - gc.start < wq):
                dst[:, :gr.start] = fill
                dst[:, gr.stop:] = fill
                dst[:, gr, :gc.start] = fill
                dst[:, gr, gc.stop:] = fill
            if gr.stop > gr.start and gc.stop > gc.start:
                dst[:, gr, gc] = x3[:, xr, xc]

    def drain_phases(self, q: np.ndarray, o3: np.ndarray) -> None:
        """The input cells of phases ``q`` ``(sh, sw, M, hq, wq)`` into the planes ``o3``
        ``(M, H, W)``; padding cells are dropped, cells that no window reaches get 0."""
        regions = self.phase_regions()
        covered = sum((gr.stop - gr.start) * (gc.stop - gc.start) for _, _, gr, gc, _, _ in regions)
        if covered < self.size[0] * self.size[1]:
            o3[...] = 0     # stride > kernel, FLOOR mode
        for a, b, gr, gc, xr, xc in regions:
            if gr.stop > gr.start and gc.stop > gc.start:
                o3[:, xr, xc] = q[a, b, :, gr, gc]

    def put_on_grid(self, a3: np.ndarray, g: np.ndarray) -> None:
        """The planes ``a3`` ``(M, PH, PW)`` onto the grid ``g`` ``(M, hq, wq)``, zeros
        elsewhere."""
        ph, pw = self.pooled
        g[:, ph:] = 0
        g[:, :ph, pw:] = 0
        g[:, :ph, :pw] = a3

    def off_grid(self, g: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
        """The ``(*lead, PH, PW)`` view of the results held on a grid."""
        hq, wq = self.grid
        return g.reshape(lead + (hq, wq))[..., :self.pooled[0], :self.pooled[1]]

    def run_blocks(self, m: int, plane_bytes: int, work, block_bytes: int = 0) -> None:
        """``work(b0, b1)`` for consecutive blocks of planes of at most ``block_bytes``
        (PHASE_BLOCK_BYTES unless given), shared among the threads when there is enough work
        (blocks are independent). Shared, the blocks are as even as possible and their count
        a multiple of the thread count, so that every thread gets the same amount."""
        step = max(1, (block_bytes or PHASE_BLOCK_BYTES) // max(1, plane_bytes))
        parallel.for_even_blocks(m, step, work, m * plane_bytes >= PARALLEL_MIN_BYTES)

    @property
    def whole_plane(self) -> bool:
        """One window covering the whole unpadded plane (global pooling)."""
        return self.pooled == (1, 1) and self.kernel == self.size and self.pad == (0, 0)

    def crop(self, a: np.ndarray) -> np.ndarray:
        return a[..., self.pad[0]:self.pad[0] + self.size[0], self.pad[1]:self.pad[1] + self.size[1]]

    def ave_divisor(self, dtype) -> np.ndarray:
        """AVE window sizes ``(PH, PW)``: each window clipped to the padded extent."""
        sizes = []
        for n, k, s, p, o in zip(self.size, self.kernel, self.stride, self.pad, self.pooled):
            start = np.arange(o) * s - p
            sizes.append(np.minimum(start + k, n + p) - start)
        return np.multiply.outer(sizes[0], sizes[1]).astype(dtype)

    # -- winners ------------------------------------------------------------------------
    # A window's winner is recorded as a code: 1 + its flat shift from the window's origin in
    # the input plane, ``i * W + j`` for kernel offset (i, j); 0 where nothing won. The target
    # cell of the gradient is then the window's origin plus the code minus 1, with no lookup.
    # For the offsets of a window that fall inside the image the codes grow with the offset
    # (row-major), so the last offset that beat the running maximum has the largest code.
    def origins(self) -> np.ndarray:
        """``(PH, PW)``: each window's origin ``hs * W + ws`` in the input plane (negative
        parts where it starts in the padding)."""
        hs = (np.arange(self.pooled[0]) * self.stride[0] - self.pad[0])[:, None]
        ws = (np.arange(self.pooled[1]) * self.stride[1] - self.pad[1])[None, :]
        return hs * self.size[1] + ws

    def winner_codes(self) -> list[int]:
        """The code of each kernel offset, row-major (see above)."""
        return [i * self.size[1] + j + 1 for i, j in
                itertools.product(range(self.kernel[0]), range(self.kernel[1]))]

    def plane_index(self, k1: np.ndarray) -> np.ndarray:
        """Winner codes -> Caffe's ``h * W + w`` in the plane, or -1 where nothing won."""
        k = k1.astype(np.int64)
        return np.where(k == 0, -1, self.origins() + k - 1)

    def code_dtype(self):
        """Smallest integer type for the winner codes (narrow types stream faster)."""
        n = (self.kernel[0] - 1) * self.size[1] + self.kernel[1]
        return np.uint8 if n < 255 else np.uint16 if n < 65535 else np.int64


#: Planes are pooled in blocks of about this many input bytes, so that every pass of a
#: block (phase split, one per kernel offset, output) runs in the cache.
PHASE_BLOCK_BYTES = 1 << 21
#: Global average pooling transposes blocks of planes of about this size (in L2; smaller
#: blocks make the per-row reduction calls too short).
GLOBAL_BLOCK_BYTES = 1 << 18
#: Max pooling's gradient is routed in blocks of planes of about this many input bytes.
ROUTE_BLOCK_BYTES = 1 << 21
#: Inputs smaller than this are pooled by one thread: splitting would cost more than it saves.
PARALLEL_MIN_BYTES = 1 << 19


def _lead(a: np.ndarray) -> tuple[int, ...]:
    return a.shape[:-2]


def _prod(values) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n


def _planes_view(a: np.ndarray, m: int, plane: tuple[int, int]) -> np.ndarray | None:
    """``a`` as an ``(M, *plane)`` view that writes through, or None if it has no such view."""
    v = a.view()
    try:
        v.shape = (m,) + plane
    except AttributeError:
        return None
    return v


def _block_phases(x: np.ndarray, geo: PoolGeometry, b0: int, b1: int, fill: float) -> np.ndarray:
    """The phases of planes ``b0:b1`` of ``x``, flattened per phase: ``(sh, sw, planes *
    grid cells)``. The input itself where it is its only phase, else a copy in this thread's
    block-sized work array (a whole-input array would send every block's phases out of the
    cache to memory and back)."""
    size = geo.grid_size
    if geo.phases_are_input(x):
        return x.reshape(1, 1, -1)[:, :, b0 * size:b1 * size]
    # The cells outside the input are filled when the layout changes, not for every block.
    q, fresh = scratch_with_layout("pool_phases", (geo.stride[0], geo.stride[1], b1 - b0) + geo.grid,
                                   x.dtype, (geo, fill))
    geo.fill_phases(x.reshape((-1,) + geo.size)[b0:b1], q, fill if fresh else None)
    return q.reshape(geo.stride[0], geo.stride[1], -1)


def ave_pool_forward(x: np.ndarray, geo: PoolGeometry, out: np.ndarray | None = None,
                     epilogue: Callable[[np.ndarray], None] | None = None) -> np.ndarray:
    """Averages; ``epilogue`` (e.g. a fused ReLU) runs on every block of results while it
    is in cache."""
    if out is None:
        out = np.empty(_lead(x) + geo.pooled, x.dtype)
    if geo.whole_plane:
        # Caffe's loop adds a plane's values one by one in row-major order. Block by block of
        # planes (in the cache, shared among the threads), the block is transposed to
        # (positions, planes) and reduced over its outer axis: NumPy then adds row after row,
        # the same sequence per plane (pairwise summation only runs along a contiguous inner
        # axis). A block of one plane would be that inner axis, so it goes through cumsum,
        # sequential by definition (and several times slower).
        flat = x.reshape(-1, geo.size[0] * geo.size[1])
        if not flat.shape[-1]:
            flat = np.zeros(flat.shape[:-1] + (1,), x.dtype)
        if not out.flags.c_contiguous:
            np.copyto(out, ave_pool_forward(x, geo, epilogue=epilogue))
            return out
        dest = out.reshape(-1)
        divisor = x.dtype.type(geo.size[0] * geo.size[1])
        plane_bytes = flat.shape[1] * x.dtype.itemsize

        def work(b0: int, b1: int) -> None:
            block = flat[b0:b1]
            if b1 - b0 == 1:
                total = np.cumsum(block, axis=-1, out=scratch("pool_sums", block.shape, x.dtype))[:, -1]
            else:
                rows = scratch("pool_sums", block.shape[::-1], x.dtype)
                np.copyto(rows, block.T)
                total = np.add.reduce(rows, axis=0, out=scratch("pool_total", (b1 - b0,), x.dtype))
            with np.errstate(divide="ignore", invalid="ignore"):
                np.divide(total, divisor, out=dest[b0:b1])
            if epilogue is not None:
                epilogue(dest[b0:b1])
        geo.run_blocks(flat.shape[0], plane_bytes, work, GLOBAL_BLOCK_BYTES)
        return out
    if not x.size:
        return out
    m, size, fl = geo.planes(x), geo.grid_size, geo.flat_length()
    divisor = geo.ave_divisor(x.dtype)
    o3 = _planes_view(out, m, geo.pooled)
    if o3 is None:      # a non-contiguous top: go through a contiguous copy
        np.copyto(out, ave_pool_forward(x, geo, epilogue=epilogue))
        return out

    offsets = geo.flat_offsets()
    zero = x.dtype.type(0)

    def work(b0: int, b1: int) -> None:
        flat = _block_phases(x, geo, b0, b1, 0)
        cells = (b1 - b0) * size
        acc = scratch("pool_grid", (cells,), x.dtype)
        head = acc[:cells - fl]     # the cells past it are past PH/PW: never read
        # Sums start at +0 as in Caffe (so that -0 + +0 gives +0), with the first offset
        _, a, b, shift = offsets[0]
        np.add(flat[a, b, shift:shift + cells - fl], zero, out=head)
        for _, a, b, shift in offsets[1:]:
            head += flat[a, b, shift:shift + cells - fl]
        with np.errstate(divide="ignore", invalid="ignore"):   # empty CEIL windows, as in Caffe
            np.divide(geo.off_grid(acc, (b1 - b0,)), divisor, out=o3[b0:b1])
        if epilogue is not None:
            epilogue(o3[b0:b1])
    geo.run_blocks(m, _prod(geo.size) * x.itemsize, work)
    return out


def ave_pool_backward(dy: np.ndarray, geo: PoolGeometry, out: np.ndarray | None = None,
                      gate: np.ndarray | None = None) -> np.ndarray:
    """The averages' gradient; through a ReLU whose output is ``gate`` where given (block by
    block in cache, see ``neuron.gate_gradient``)."""
    if out is None:
        out = np.empty(_lead(dy) + geo.size, dy.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = dy / geo.ave_divisor(dy.dtype)
    if geo.whole_plane:
        np.copyto(out, np.broadcast_to(g, dy.shape[:-2] + geo.size))
        if gate is not None:
            gate_in_blocks(gate, out, out)
        return out
    if not dy.size:
        out.fill(0)
        return out
    return _spread(g, geo, out, gate)


def route_backward(dy: np.ndarray, k1: np.ndarray, geo: PoolGeometry,
                   out: np.ndarray | None = None, gate: np.ndarray | None = None) -> np.ndarray:
    """Each output's gradient added to the cell its winner code names (0: nowhere), outputs
    in row-major order per plane: Caffe's loop, hence its summation order. ``k1`` is
    ``(..., PH, PW)`` or, as ``max_pool_forward`` leaves it, a flat grid. Through a ReLU
    whose output is ``gate`` where given (block by block in cache)."""
    if out is None:
        out = np.empty(_lead(dy) + geo.size, dy.dtype)
    if not dy.size:
        out.fill(0)
        return out
    m, (h, w) = geo.planes(dy, pooled=True), geo.size
    o3 = _planes_view(out, m, geo.size)
    x3 = None if gate is None else _planes_view(gate, m, geo.size)
    if o3 is None or not o3.flags.c_contiguous or (gate is not None and x3 is None):
        np.copyto(out, route_backward(dy, k1, geo))     # through a contiguous copy
        if gate is not None:
            gate_in_blocks(gate, out, out)
        return out
    dy3 = dy.reshape((m,) + geo.pooled)
    k3 = geo.off_grid(k1, (m,)) if k1.ndim == 1 else k1.reshape((m,) + geo.pooled)
    # An output's target cell: its window's origin in its plane of the block, plus its code - 1
    step = max(1, ROUTE_BLOCK_BYTES // max(1, h * w * dy.itemsize))
    starts = (np.arange(min(step, m)) * (h * w))[:, None, None] + (geo.origins() - 1)

    def work(b0: int, b1: int) -> None:
        ob, kb, d = o3[b0:b1].reshape(-1), k3[b0:b1], dy3[b0:b1]
        ob.fill(0)
        target = scratch("pool_target", kb.shape, np.intp)
        np.add(kb, starts[:b1 - b0], out=target)
        if not kb.all():
            # Outputs with no winner add +0 to their plane's first cell: a no-op, since sums
            # that start at +0 never hold -0 (and Caffe would write out of bounds).
            none = kb == 0
            d = np.where(none, 0, d)
            target[none] = np.nonzero(none)[0] * (h * w)
        np.add.at(ob, target.reshape(-1), d.reshape(-1))
        if x3 is not None:
            gate_gradient(x3[b0:b1], o3[b0:b1], o3[b0:b1])
    geo.run_blocks(m, h * w * dy.itemsize, work, ROUTE_BLOCK_BYTES)
    return out


def _spread(dy: np.ndarray, geo: PoolGeometry, out: np.ndarray,
            gate: np.ndarray | None = None) -> np.ndarray:
    """Adds every output's gradient to each input cell of its window, in Caffe's order
    (reversed offsets, see ``offsets``); through a ReLU whose output is ``gate`` where
    given."""
    m, size, fl = geo.planes(dy, pooled=True), geo.grid_size, geo.flat_length()
    hq, wq = geo.grid
    dy3 = dy.reshape((m,) + geo.pooled)
    o3 = _planes_view(out, m, geo.size)
    x3 = None if gate is None else _planes_view(gate, m, geo.size)
    if o3 is None or (gate is not None and x3 is None):     # through a contiguous copy
        np.copyto(out, _spread(dy, geo, np.empty(out.shape, out.dtype)))
        if gate is not None:
            gate_in_blocks(gate, out, out)
        return out

    def work(b0: int, b1: int) -> None:
        hi = (b1 - b0) * size - fl
        g = scratch("pool_grid", (b1 - b0, hq, wq), dy.dtype)
        geo.put_on_grid(dy3[b0:b1], g)
        gf = g.reshape(-1)
        acc = scratch("pool_phases", (geo.stride[0], geo.stride[1], b1 - b0, hq, wq), dy.dtype)
        acc.fill(0)
        accf = acc.reshape(geo.stride[0], geo.stride[1], -1)
        # Empty CEIL windows divide by zero or less (see ave_divisor); their infinities
        # meet as Caffe's do, silently (and per thread: NumPy's error state is the thread's).
        with np.errstate(invalid="ignore", over="ignore"):
            for _, a, b, shift in geo.flat_offsets(reverse=True):
                accf[a, b, shift:hi + shift] += gf[:hi]
        geo.drain_phases(acc, o3[b0:b1])
        if x3 is not None:
            gate_gradient(x3[b0:b1], o3[b0:b1], o3[b0:b1])
    geo.run_blocks(m, _prod(geo.size) * dy.itemsize, work)
    return out


def max_pool_forward(x: np.ndarray, geo: PoolGeometry, out: np.ndarray | None = None,
                     k1_grid: np.ndarray | None = None, indices: bool = True,
                     epilogue: Callable[[np.ndarray], None] | None = None,
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Maxima and the winners' codes (``PoolGeometry.winner_codes``; 0 where no value beats
    -FLT_MAX); ``epilogue`` (e.g. a fused ReLU) runs on every block of maxima while it is in
    cache.

    The codes come as a flat grid (see ``PoolGeometry.grid``; ``off_grid`` gives the
    ``(..., PH, PW)`` view), written into ``k1_grid`` when it has the right size and type.
    Global pooling returns them as ``(..., 1, 1)``. With ``indices=False`` (no backward to
    come) only the maxima are computed, the same values, and None stands for the codes."""
    out_shape = x.shape[:-2] + geo.pooled
    if out is None:
        out = np.empty(out_shape, x.dtype)
    if geo.whole_plane:
        # Global pooling: one window = the whole plane; argmax keeps the first maximum.
        flat = x.reshape(x.shape[:-2] + (geo.size[0] * geo.size[1],))   # -1: not for 0 planes
        nan = np.isnan(flat)
        if nan.any():
            flat = np.where(nan, -np.inf, flat)
        k = np.argmax(flat, axis=-1)[..., None]
        best = np.take_along_axis(flat, k, axis=-1)
        empty = ~(best > -FLT_MAX)
        best[empty] = -FLT_MAX
        k1 = np.where(empty, 0, k + 1)
        out[...] = best.reshape(out_shape)
        if epilogue is not None:
            epilogue(out)
        return out, k1.reshape(out_shape)
    # Branch-free updates (data-dependent masked copies are several times slower):
    # ``fmax`` ignores NaN, and the -inf padding never beats the -FLT_MAX start, so the
    # values equal Caffe's strict ">" scan (up to the sign of a zero maximum when +0 and -0
    # tie); the codes of the offsets inside the image grow, so the winner is the last
    # offset that was strictly greater: k1 = max(k1, (v > best) * code).
    kdt = geo.code_dtype()
    if not x.size:
        return out, np.zeros(0, kdt)
    m, size, fl = geo.planes(x), geo.grid_size, geo.flat_length()
    if not indices:
        k1_grid = None
    elif k1_grid is None or k1_grid.shape != (m * size,) or k1_grid.dtype != kdt:
        k1_grid = np.empty(m * size, kdt)
    o3 = _planes_view(out, m, geo.pooled)
    if o3 is None:      # a non-contiguous top: go through a contiguous copy
        y, k1_grid = max_pool_forward(x, geo, k1_grid=k1_grid, indices=indices, epilogue=epilogue)
        np.copyto(out, y)
        return out, k1_grid

    offsets = geo.flat_offsets()
    codes = [kdt(c) for c in geo.winner_codes()]
    floor = x.dtype.type(-FLT_MAX)

    def work(b0: int, b1: int) -> None:
        flat = _block_phases(x, geo, b0, b1, -np.inf)
        cells = (b1 - b0) * size
        hi = cells - fl         # the cells past it are past PH/PW: never read
        best = scratch("pool_grid", (cells,), x.dtype)
        bv = best[:hi]
        _, a, b, shift = offsets[0]
        first = flat[a, b, shift:shift + hi]
        # The first offset against the -FLT_MAX start, as the loop below would do it
        np.fmax(first, filled(floor, bv.shape, x.dtype), out=bv)
        if k1_grid is None:     # the maxima only: one pass per offset instead of four
            for _, a, b, shift in offsets[1:]:
                np.fmax(flat[a, b, shift:shift + hi], bv, out=bv)
            np.copyto(o3[b0:b1], geo.off_grid(best, (b1 - b0,)))
            if epilogue is not None:
                epilogue(o3[b0:b1])
            return
        kb = k1_grid[b0 * size:b1 * size]
        kb[hi:] = 0
        kv = kb[:hi]
        gv = scratch("pool_hit", (hi,), bool)
        hits = gv.view(np.uint8)    # as bytes, the products by codes need no cast from bool
        np.greater(first, floor, out=gv)
        np.multiply(hits, codes[0], out=kv)
        tv = scratch("pool_tmp", (hi,), kdt)
        for o, a, b, shift in offsets[1:]:
            v = flat[a, b, shift:shift + hi]
            np.greater(v, bv, out=gv)
            np.fmax(v, bv, out=bv)      # on ties the first winner stays, as in Caffe
            np.multiply(hits, codes[o], out=tv)
            np.maximum(kv, tv, out=kv)
        np.copyto(o3[b0:b1], geo.off_grid(best, (b1 - b0,)))
        if epilogue is not None:
            epilogue(o3[b0:b1])
    geo.run_blocks(m, _prod(geo.size) * x.itemsize, work)
    return out, k1_grid


def _rectify_in_place(a: np.ndarray) -> None:
    rectify(a, a)


def _windows(x: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    """``(..., PH, PW, kh*kw)`` copy of every (zero-extended, unpadded) window."""
    xp = geo.pad_array(x, 0)
    st = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, shape=xp.shape[:-2] + geo.pooled + geo.kernel,
        strides=st[:-2] + (st[-2] * geo.stride[0], st[-1] * geo.stride[1]) + st[-2:],
        writeable=False)
    return view.reshape(xp.shape[:-2] + geo.pooled + (-1,))


@register("Pooling")
class PoolingLayer(Layer):
    """MAX / AVE / STOCHASTIC pooling; MAX may have a second top with the argmax indices."""
    exact_bottoms = 1
    min_tops = 1
    inplace_allowed = False
    fuses_relu = True       # MAX and AVE rectify their results block by block
    gates_relu = True       # and pass gradients through a ReLU below them the same way

    def __init__(self, param, **kwargs):
        super().__init__(param, **kwargs)
        self.max_tops = 2 if self.param.pooling_param.pool == MAX else 1

    def layer_setup(self, bottom, top):
        p = self.param.pooling_param
        if p.pool not in (MAX, AVE, STOCHASTIC):
            raise self.error("unknown pooling method")
        has_k, has_kh, has_kw = p.HasField("kernel_size"), p.HasField("kernel_h"), p.HasField("kernel_w")
        self.global_pooling = p.global_pooling
        if self.global_pooling:
            if has_k or has_kh or has_kw:
                raise self.error("with global_pooling: true, filter size cannot be specified")
        else:
            # Caffe's test: exactly one of kernel_size and (kernel_h and kernel_w)
            if has_k and has_kh and has_kw:
                raise self.error("filter size is kernel_size OR kernel_h and kernel_w; not both")
            if not has_k and not (has_kh and has_kw):
                raise self.error("kernel_size, or both kernel_h and kernel_w, are required")
        if not ((not p.HasField("pad") and p.HasField("pad_h") and p.HasField("pad_w"))
                or (not p.HasField("pad_h") and not p.HasField("pad_w"))):
            raise self.error("pad is pad OR pad_h and pad_w are required")
        if not ((not p.HasField("stride") and p.HasField("stride_h") and p.HasField("stride_w"))
                or (not p.HasField("stride_h") and not p.HasField("stride_w"))):
            raise self.error("stride is stride OR stride_h and stride_w are required")
        if not self.global_pooling:
            self.kernel = ((p.kernel_size, p.kernel_size) if has_k else (p.kernel_h, p.kernel_w))
            if self.kernel[0] <= 0 or self.kernel[1] <= 0:
                raise self.error("filter dimensions cannot be zero")
        self.pad = (p.pad, p.pad) if not p.HasField("pad_h") else (p.pad_h, p.pad_w)
        self.stride = (p.stride, p.stride) if not p.HasField("stride_h") else (p.stride_h, p.stride_w)
        if self.stride[0] <= 0 or self.stride[1] <= 0:
            raise self.error("stride must be > 0")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise self.error("with global_pooling: true, only pad = 0 and stride = 1 are allowed")
        if self.pad != (0, 0):
            if p.pool not in (MAX, AVE):
                raise self.error("padding implemented only for average and max pooling")
            if not self.global_pooling and (self.pad[0] >= self.kernel[0] or self.pad[1] >= self.kernel[1]):
                raise self.error("pad must be smaller than the kernel")
        self.pool = p.pool
        self.ceil_mode = p.round_mode == CEIL
        self._k1_buffer = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes, corresponding to (num, channels, height, "
                             f"width); got {len(shape)}")
        size = (int(shape[2]), int(shape[3]))
        if self.global_pooling:
            if 0 in size:       # Caffe's CHECK_GT on the kernel, taken from the bottom
                raise self.error(f"filter dimensions cannot be zero (global pooling of a "
                                 f"{size[0]}x{size[1]} input)")
            self.kernel = size
        any_pad = self.pad != (0, 0)
        pooled = tuple(pooled_size(n, k, s, p, self.ceil_mode, any_pad) for n, k, s, p in
                       zip(size, self.kernel, self.stride, self.pad))
        if pooled[0] < 0 or pooled[1] < 0:
            raise self.error(f"kernel {self.kernel} larger than the padded input {size}")
        self.geometry = PoolGeometry(size, pooled, self.kernel, self.stride, self.pad)
        for t in top:
            t.reshape(tuple(shape[:2]) + pooled)

    def forward_cpu(self, bottom, top):
        x, geo = bottom[0].data, self.geometry
        self._k1 = None     # winners (MAX, STOCHASTIC TRAIN): their codes, 0 = none
        epilogue = None
        if self.rectify_top and self.pool != STOCHASTIC:
            epilogue = _rectify_in_place
            self.rectified_top = True
        if self.pool == MAX:
            # The winners' grid is kept for the backward; its memory is reused. A layer with
            # no backward to come and no mask top skips it (backward would recompute it).
            indices = self.backward_state_needed or len(top) > 1
            _, self._k1 = max_pool_forward(x, geo, out=top[0].data, k1_grid=self._k1_buffer,
                                           indices=indices, epilogue=epilogue)
            if self._k1 is not None and self._k1.ndim == 1:
                self._k1_buffer = self._k1
            if len(top) > 1:
                top[1].data[...] = geo.plane_index(self._k1 if geo.whole_plane
                                                   else geo.off_grid(self._k1, x.shape[:-2]))
        elif self.pool == AVE:
            ave_pool_forward(x, geo, out=top[0].data, epilogue=epilogue)
        elif self.phase == TRAIN:
            y, self._k1 = self._stochastic_train(x, geo)
            top[0].data[...] = y
        else:
            top[0].data[...] = self._stochastic_test(x, geo)

    def _stochastic_train(self, x, geo):
        win = _windows(x, geo)
        running = np.cumsum(win, axis=-1)       # sequential, as the GPU kernel accumulates
        u = (1.0 - self.rng.random(running.shape[:-1])).astype(x.dtype)   # (0, 1]
        threshold = u * running[..., -1]
        k = np.argmax(running >= threshold[..., None], axis=-1)[..., None]
        y = np.take_along_axis(win, k, axis=-1)[..., 0]
        row, col = np.divmod(k[..., 0], geo.kernel[1])      # the winner's kernel offset
        k1 = (row * geo.size[1] + col + 1).astype(geo.code_dtype())
        empty = self._empty_windows()
        if empty is not None:
            y[..., empty] = 0
            k1[..., empty] = 0
        return y, k1

    def _stochastic_test(self, x, geo):
        win = _windows(x, geo)
        squares = np.cumsum(win * win, axis=-1)[..., -1]
        win[..., 0] += FLT_MIN                  # the GPU kernel starts its sum at FLT_MIN
        total = np.cumsum(win, axis=-1)[..., -1]
        positive = total > 0
        y = np.where(positive, squares / np.where(positive, total, 1), 0).astype(x.dtype)
        self._test_total = total
        return y

    def _empty_windows(self):
        """``(PH, PW)`` mask of windows starting past the input (CEIL mode without pad)."""
        geo = self.geometry
        hs = np.arange(geo.pooled[0]) * geo.stride[0] >= geo.size[0]
        ws = np.arange(geo.pooled[1]) * geo.stride[1] >= geo.size[1]
        empty = hs[:, None] | ws[None, :]
        return empty if empty.any() else None

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, geo = top[0].diff, self.geometry
        gate = bottom[0].data if self.gates(0) else None
        if self.pool == AVE:
            ave_pool_backward(dy, geo, out=bottom[0].diff, gate=gate)
            self.gated_bottoms = gate is not None
            return
        if self.pool == MAX and self._k1 is None:   # forward skipped the winners: find them
            _, self._k1 = max_pool_forward(bottom[0].data, geo, out=scratch("pool_redo", top[0].shape,
                                                                            dy.dtype),
                                           k1_grid=self._k1_buffer)
        if self._k1 is not None and not (geo.whole_plane and self.pool == MAX):
            route_backward(dy, self._k1, geo, out=bottom[0].diff, gate=gate)
            self.gated_bottoms = gate is not None
            return
        if self._k1 is not None:
            dx = np.zeros(bottom[0].shape, dy.dtype)
            flat = dx.reshape(dx.shape[:2] + (geo.size[0] * geo.size[1],))
            k1 = self._k1.reshape(flat.shape[:2] + (1,)).astype(np.int64)
            np.put_along_axis(flat, np.maximum(k1 - 1, 0), np.where(k1 > 0, dy.reshape(k1.shape), 0),
                              axis=-1)
        else:
            dx = self._stochastic_test_backward(bottom[0].data, top[0].data, dy, geo)
        bottom[0].diff[...] = dx

    def _stochastic_test_backward(self, x, y, dy, geo):
        # d/dx_i (S2 / S) = (2 x_i - y) / S with S = FLT_MIN + sum(x); 0 where S <= 0.
        total = self._test_total
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(total > 0, dy / np.where(total > 0, total, 1), 0)
        xp = geo.pad_array(x, 0)
        acc = np.zeros(xp.shape, dy.dtype)
        for _, offset in geo.offsets():
            geo.window(acc, offset)[...] += g * (2 * geo.window(xp, offset) - y)
        return geo.crop(acc)
