"""Convolution and Deconvolution (Caffe's BaseConvolutionLayer family), N spatial axes.

Both run batched: the column buffer of a chunk of batch items goes through one GEMM per
group. Chunks are sized for the cache (see ``im2col.CACHE_COL_ELEMENTS``), so that the GEMM
reads a column buffer that was just written; a single item too large for that is convolved
in blocks of output rows (forward). 1x1 / stride 1 / no-pad kernels skip im2col: the input
itself is the column buffer. The backward pass of kernels of five rows or more at stride 1
builds dy's buffer over the other axes only and multiplies shifted views of it (``row_shift``);
the forward keeps Caffe's single GEMM over the whole buffer, whose summation order its
numbers follow (products with few rows go in column panels, deep ones in the BLAS's own
depth blocks: the same bits, see ``blas_panels``).

The weights a forward pass multiplies with come from ``forward_weights()`` and are kept for
the backward pass's bottom gradient; Ristretto's quantized layers override that method to
substitute trimmed copies (straight-through estimator), while parameter gradients always
accumulate into ``self.blobs``.
"""

from __future__ import annotations

import time

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.blob import canonical_axis, count
from ristretto_cli.layers import blas_panels, row_shift
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.im2col import (
    CACHE_COL_ELEMENTS,
    COL_BUFFER_ELEMENTS,
    MIN_GEMM_COLUMNS,
    ConvGeometry,
    batch_inner_for,
    col2im,
    conv_out_size,
    deconv_out_size,
    from_cols,
    im2col,
    scratch,
    to_cols,
)
from ristretto_cli.layers.neuron import gate_gradient, rectify
from ristretto_cli.layers.registry import register

#: Elements of a chunk's top (or bottom) that the per-chunk hooks find still in cache.
HOOKED_CHUNK_ELEMENTS = 1 << 19
#: The input gradient as a convolution of dy with the flipped kernels (``_flipped_geometry``)
#: produces every input position; it is taken only where those are at most this many times
#: the output positions. An unpadded layer's input is larger than its output, and the
#: flipped convolution then multiplies zeros of dy's padding: LeNet's ``conv2`` (12 x 12 ->
#: 8 x 8) did 2.25x the multiply-adds that way, and went 0.80x the time forward+backward (the
#: whole net, 1 thread; 0.74x at 2) through the column gradient and col2im instead.
FLIPPED_MAX_EXTRA = 1.25
#: A forward chunk in the batch-inner layout keeps its GEMM result within this many bytes.
#: Storing the result into the top reads it with a stride of the chunk's item count, and
#: once it outgrows the L2 cache (2 MB a core on the Intel Xeon measured, 1 MB on AMD's Zen
#: 4) that copy slows several times: LeNet's ``conv1`` in one chunk of 64 items (a 2.8 MB
#: result) stored in 3.9 ms, in chunks of 32 in 2 x 0.57 ms.
BATCH_INNER_RESULT_BYTES = 1 << 20
#: Bytes of weight-gradient products that the chunks of one backward wave may hold.
WGRAD_PARTS_BYTES = 1 << 23
#: Items whose column buffer exceeds this many elements (about 4 MB) are convolved in
#: blocks of output rows of about ROW_BLOCK_ELEMENTS (SqueezeNet's first layer forward 0.89-0.98x
#: the time with blocks of 2 MB rather than 4; CaffeNet's unchanged), and of at least
#: BLOCK_MIN_COLUMNS positions: the chunks' floor (MIN_GEMM_COLUMNS), since products over
#: fewer columns lose more than the cache saves. CaffeNet's ``conv2`` (27 x 27 positions,
#: depth 1 200 per group) in two blocks of 378 columns took 1.14x the time of whole items.
BLOCK_COL_ELEMENTS = 1 << 20
ROW_BLOCK_ELEMENTS = 1 << 19
BLOCK_MIN_COLUMNS = MIN_GEMM_COLUMNS
#: OpenBLAS runs products of at most this many multiply-adds on its small-matrix kernels,
#: which do not pack their operands. A product with few rows and a short depth over many
#: columns spends more on packing than on multiplying, so it goes in panels of that size
#: (``blas_panels``, with the plain product's bits): CIFAR-10's and SqueezeNet's first layers
#: (32 x 75 and 96 x 147 weights) 1.2-1.6x the GEMM rate, SqueezeNet's 1x1 layers up to 2.2x,
#: deep ones in the BLAS's depth blocks (32 x 800) 1.14x.
PANEL_MADDS = 1_000_000
#: Narrower panels run slower than the packed product (16 and 48 columns: 0.4-0.8x).
PANEL_MIN_COLUMNS = 64
#: Item-by-item products (1x1 layers) shallower than this gain nothing from panels: their
#: last columns, a packed product above PANEL_MADDS, are a third of each item (SqueezeNet's 1x1
#: expand layers, 16-48 deep: 0.98-1.2x the time; its 96-256 deep squeeze layers 0.89-0.94x).
PANEL_MIN_ITEM_DEPTH = 64
#: Up to this depth, with two rows or more and panels of whole multiples of 16 columns, the
#: small-matrix kernels give the packed GEMM's bits (it sums such a depth in one block, as
#: they do; measured equal up to 416 on OpenBLAS's AVX-512 build, unequal from 512), except
#: on the last columns of a width that is not a multiple of 16. The backward pass's products
#: by shifted rows that shallow go in panels of up to SHALLOW_PANEL_COLUMNS wherever they fall
#: in a chunk (``_panel_cover``): 1.25x the GEMM rate on CIFAR-10's 32 x 160 input-gradient
#: products, the same bits whatever the chunking and the threads.
PANEL_MAX_DEPTH = 384
SHALLOW_PANEL_COLUMNS = 256
SHALLOW_PANEL_MIN_COLUMNS = 32
#: Forward products with at most SWAP_MAX_ROWS rows (output channels per group) and a depth
#: of at least SWAP_DEPTH_PER_ROW times that may run with the BLAS's rows and columns swapped
#: (``blas_panels.swapped_product``, the same bits). Which is faster depends on the core: on
#: an Intel Xeon with AVX-512 (measured with the store into the top) 32 x 800 (CIFAR-10's
#: ``conv2``) took 0.78-0.80x the time swapped, 64 x 800 0.87x, 50 x 500 (LeNet's ``conv2``)
#: 0.83x, 32 x 400 0.76x, but 64 x 400 1.03x, 128 x 288 or more rows 1.09-1.22x and the
#: shallow first layers 1.06-1.4x, hence the rule; on AMD's Zen 4 the swapped 32 x 800 product
#: gained nothing. So each shape is also timed once both ways (``_swap_pays``).
SWAP_MAX_ROWS = 64
SWAP_DEPTH_PER_ROW = 8
#: The swapped product is taken where it ran in at most this fraction of the usual one's time
#: (the store from its transpose costs a little more).
SWAP_MAX_TIME_RATIO = 0.95
SWAP_TIMINGS = 9


_swap_timed: dict[tuple, bool] = {}


def _c_int(value: int) -> int:
    """A uint32 proto field as Caffe's ``int`` holds it (above INT_MAX: negative)."""
    value = int(value)
    return value - (1 << 32) if value > 0x7FFFFFFF else value


def _spatial_param(layer: Layer, name: str, values, h, w, has_hw: bool, default: int | None,
                   nsp: int) -> tuple[int, ...]:
    """One ConvolutionParameter setting per spatial axis: ``name_h``/``name_w`` (2-D only), or
    the repeated field given once or once per axis (absent: ``default``, if there is one)."""
    if has_hw:
        if nsp != 2:
            raise layer.error(f"{name}_h & {name}_w can only be used for 2D convolution")
        if len(values):
            raise layer.error(f"either {name} or {name}_h/w should be specified; not both")
        return (int(h), int(w))
    if len(values) == 0 and default is not None:
        return (default,) * nsp
    if len(values) != 1 and len(values) != nsp:
        field = "kernel_size" if name == "kernel" else name
        raise layer.error(f"{field} must be specified once, or once per spatial dimension "
                          f"({field} specified {len(values)} times; {nsp} spatial dims)")
    return tuple(int(values[0 if len(values) == 1 else i]) for i in range(nsp))


def spatial_params(layer: Layer, p, nsp: int) -> tuple[tuple[int, ...], ...]:
    """``(kernel, stride, pad, dilation)`` per spatial axis from a ConvolutionParameter, with
    Caffe's checks (kernels and strides positive); shared by Convolution, Deconvolution and
    Im2col, which read these fields the same way."""
    kernel = _spatial_param(layer, "kernel", p.kernel_size, p.kernel_h, p.kernel_w,
                            p.HasField("kernel_h") or p.HasField("kernel_w"), None, nsp)
    if any(_c_int(k) <= 0 for k in kernel):
        raise layer.error("filter dimensions must be nonzero")
    stride = _spatial_param(layer, "stride", p.stride, p.stride_h, p.stride_w,
                            p.HasField("stride_h") or p.HasField("stride_w"), 1, nsp)
    if any(_c_int(s) <= 0 for s in stride):
        raise layer.error("stride dimensions must be nonzero")
    pad = _spatial_param(layer, "pad", p.pad, p.pad_h, p.pad_w,
                         p.HasField("pad_h") or p.HasField("pad_w"), 0, nsp)
    dilation = _spatial_param(layer, "dilation", p.dilation, 0, 0, False, 1, nsp)
    return kernel, stride, pad, dilation


def _swap_pays(rows: int, depth: int, columns: int, dtype) -> bool:
    """Whether the swapped product beats ``_product`` on one thread for this shape by
    SWAP_MAX_TIME_RATIO: both timed on random operands, alternately, the best of SWAP_TIMINGS,
    once per shape (the bits are the same either way, only the speed depends on this)."""
    key = (rows, depth, columns, np.dtype(dtype).str)
    known = _swap_timed.get(key)
    if known is None:
        rng = np.random.default_rng(depth * 139 + rows)
        a = rng.standard_normal((rows, depth)).astype(dtype)
        b = rng.standard_normal((depth, columns)).astype(dtype)
        out, out_t = np.empty((rows, columns), dtype), np.empty((columns, rows), dtype)
        runs = (lambda: _product(a, b, out), lambda: blas_panels.swapped_product(a, b, out_t))
        best = [float("inf"), float("inf")]
        for rep in range(SWAP_TIMINGS + 1):
            for i in ((0, 1) if rep % 2 else (1, 0)):
                t0 = time.perf_counter()
                runs[i]()
                if rep:         # the first round warms the buffers up
                    best[i] = min(best[i], time.perf_counter() - t0)
        known = _swap_timed[key] = best[1] <= SWAP_MAX_TIME_RATIO * best[0]
    return known


def _swaps(rows: int, depth: int, columns: int, dtype) -> bool:
    """Whether a forward product of ``rows x depth`` weights over ``columns`` columns goes
    through ``blas_panels.swapped_product`` (see SWAP_MAX_ROWS): only where the threads are
    already shared out, this BLAS gives the plain product's bits and it pays here."""
    return (rows <= SWAP_MAX_ROWS and depth >= SWAP_DEPTH_PER_ROW * rows
            and parallel.usable_threads() == 1 and blas_panels.swap_agrees(rows, depth, columns, dtype)
            and _swap_pays(rows, depth, columns, dtype))


def shallow_panel(rows: int, depth: int) -> int | None:
    """Panel width for a shallow product of ``rows x depth`` weights (see PANEL_MAX_DEPTH), or
    None where the product is too deep, a single row, or its panels would be too narrow."""
    if depth > PANEL_MAX_DEPTH or rows < 2:
        return None
    width = min(SHALLOW_PANEL_COLUMNS, PANEL_MADDS // max(1, rows * depth)) // 16 * 16
    return width if width >= SHALLOW_PANEL_MIN_COLUMNS else None


def _packed_columns(rows: int, depth: int) -> int:
    """The fewest columns of ``rows x depth`` weights that take a product above PANEL_MADDS,
    onto the packed kernels."""
    return PANEL_MADDS // max(1, rows * depth) + 1


def _widest_divisor(n: int, widest: int, least: int) -> int | None:
    """The widest multiple of 16 from ``widest`` down to ``least`` that divides ``n``; None
    where there is none."""
    return next((w for w in range(widest // 16 * 16, least - 1, -16) if n % w == 0), None)


def _whole_panels(rows: int, depth: int, columns: int, width: int) -> int:
    """How many panels of ``width`` come before one last product of the remaining columns,
    which is kept above PANEL_MADDS (see PANEL_MAX_DEPTH)."""
    return max(0, (columns - _packed_columns(rows, depth)) // width)


def _panel_cover(rows: int, depth: int, columns: int, width: int, least: int) -> tuple[int, int]:
    """``(width, count)`` of the panels for ``columns`` columns, at most ``width`` wide. A
    whole multiple of 16 columns goes entirely in panels, of the widest multiple of 16 down
    to ``least`` that divides it: the plain product sums every such column as the panels do,
    so no last product on the packed kernels is needed (CIFAR-10's second layer forward:
    0.95-0.97x the time). Other counts of columns keep their last columns in one product
    above PANEL_MADDS (``_whole_panels``)."""
    whole = _widest_divisor(columns, width, least)
    if whole is not None:
        return whole, columns // whole
    return width, _whole_panels(rows, depth, columns, width)


def _panels(a: np.ndarray, columns: int, per_item: bool = False) -> tuple[int, int] | None:
    """``(width, count)`` for ``a @ b`` over ``columns`` columns (of each item, ``per_item``)
    in ``count`` panels of ``width`` (a multiple of 16 within PANEL_MADDS for the deepest of
    the BLAS's depth blocks): all of them where ``_panel_cover`` allows, else with the last
    columns in one product above PANEL_MADDS, as the plain product runs them. None where
    panels would be narrower than PANEL_MIN_COLUMNS, there is no room for one, an item's
    product is shallower than PANEL_MIN_ITEM_DEPTH, or this BLAS would give other bits
    (``blas_panels.agrees``)."""
    rows, depth = a.shape
    if rows < 2 or (per_item and depth < PANEL_MIN_ITEM_DEPTH):
        return None
    width = PANEL_MADDS // (rows * blas_panels.deepest_block(depth)) // 16 * 16
    if width < PANEL_MIN_COLUMNS:
        return None
    width, count = _panel_cover(rows, depth, columns, width, PANEL_MIN_COLUMNS)
    if count < 1 or not blas_panels.agrees(rows, depth, width, _packed_columns(rows, depth), a.dtype):
        return None
    return width, count


def _product(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a @ b`` for weights ``a`` and column buffers ``b`` ``(..., depth, columns)``:
    in panels (``_panels``) where the threads are already shared out, else as one product
    shared among them; the same bits either way."""
    if parallel.usable_threads() == 1:
        plan = _panels(a, b.shape[-1], b.ndim > 2)
        if plan is not None:
            blas_panels.panel_product(a, b, out, *plan)
            return
    parallel.matmul(a, b, out)


#: Groups whose products take fewer multiply-adds than this each go as one batched matmul.
GROUP_BATCH_MADDS = 1 << 20


def _batches_groups(groups: int, rows: int, depth: int, columns: int) -> bool:
    """Whether ``_group_products`` runs these groups' products as one batched matmul."""
    return groups > 1 and rows * depth * columns < GROUP_BATCH_MADDS


def _group_products(a: np.ndarray, b: np.ndarray, out: np.ndarray, product=_product) -> None:
    """``out[g] = a[g] @ b[g]`` for every group: ``a`` ``(groups, rows, depth)``, ``b``
    ``(groups, depth, columns)``, each group's product by ``product``. Many small groups
    (depthwise convolutions: 9-deep rows) go as one batched ``matmul`` instead, in ranges of
    groups on the threads: NumPy makes the same BLAS call for each group as a loop would
    (the same bits; such products are never split by columns, see ``parallel.matmul``),
    without a Python call per group, which took longer than the product itself."""
    groups, rows, depth = a.shape
    columns = b.shape[-1]
    if not _batches_groups(groups, rows, depth, columns):
        for g in range(groups):
            product(a[g], b[g], out[g])
        return

    def share(g0: int, g1: int) -> None:
        np.matmul(a[g0:g1], b[g0:g1], out=out[g0:g1])
    parallel.for_ranges(groups, share,
                        min_items=-(-parallel.SPLIT_MIN_FLOPS // max(1, 2 * rows * depth * columns)))


def _group_ranges(groups: int, rows: int, depth: int, columns: int, buffer_rows: int):
    """``(g0, g1)`` ranges covering the groups, for a backward whose column buffer holds
    ``buffer_rows`` rows of ``columns`` per group: batched groups (``_batches_groups``) a
    range at a time, so that the range's buffer stays within ROW_BLOCK_ELEMENTS (in the
    cache); other layers all at once. Each group's products are the same either way."""
    span = groups
    if _batches_groups(groups, rows, depth, columns):
        span = max(1, min(groups, ROW_BLOCK_ELEMENTS // max(1, buffer_rows * columns)))
    return [(g0, min(groups, g0 + span)) for g0 in range(0, groups, span)]


def _column_gradient(wt: np.ndarray, dy: np.ndarray, col: np.ndarray) -> None:
    """``col[g] = wt[g] @ dy[g]``, the column gradient for col2im. Products of depth one (one
    output per group: depthwise layers) as element-wise multiplications: each element the one
    rounded product the BLAS computes too, at a tenth of its time. Only the sign of a zero
    may differ (the BLAS's own varies with the column), and col2im's sums start from +0,
    which drops it."""
    if wt.shape[2] == 1:
        np.multiply(wt, dy, out=col)
    else:
        _group_products(wt, dy, col)


#: Bias gradients over at least this many elements per thread are summed on the threads.
PARALLEL_SUM_ELEMENTS = 1 << 19


def channel_sums(dy: np.ndarray) -> np.ndarray:
    """``dy`` ``(N, C, ...)`` summed over every axis but the channels: a bias gradient. Big
    ones go in ranges of channels on the threads, each channel's terms summed as in one
    ``sum`` over the whole array (the same bits). Ranges keep two channels or more: with
    one, NumPy drops the channel axis and may merge the batch axis with the others, which
    sums the same terms in another order."""
    axes = (0,) + tuple(range(2, dy.ndim))
    c = dy.shape[1]
    out = np.empty(c, dy.dtype)

    def share(c0: int, c1: int) -> None:
        np.sum(dy[:, c0:c1], axis=axes, dtype=dy.dtype, out=out[c0:c1])
    parallel.for_ranges(c, share, min_items=max(2, -(-PARALLEL_SUM_ELEMENTS * c // max(1, dy.size))))
    return out


def _writable(blob, what: str, shape) -> np.ndarray:
    """The blob's data or diff as a ``shape`` view that writes through: the array itself where
    it has such a view (a Concat's slice has one), else a C-contiguous copy that replaces it."""
    arr = getattr(blob, what)
    if arr.flags.writeable:
        view = arr.view()
        try:
            view.shape = shape
            return view
        except AttributeError:      # no view of that shape without a copy
            pass
    arr = np.ascontiguousarray(arr)
    setattr(blob, what, arr)
    return arr.reshape(shape)


def _cols(a: np.ndarray, batch_inner: bool, slot: str) -> np.ndarray:
    """``(n, C, *spatial)`` in column layout ``(C, columns)``; a view when no copy is needed."""
    if a.shape[0] == 1:
        return a.reshape(a.shape[1], -1)
    out = scratch(slot, (a.shape[1], a.size // a.shape[1]), a.dtype)
    return to_cols(a, batch_inner, out)


def _positions_first(a: np.ndarray, slot: str) -> np.ndarray:
    """``(n, C, *spatial)`` as ``(columns, C)``: the transpose of the batch-inner column
    layout (``_cols(a, True, ...)``), copied into a work array."""
    n, c = a.shape[:2]
    out = scratch(slot, (a.size // max(1, c), c), a.dtype)
    np.copyto(out.reshape(a.shape[2:] + (n, c)), a.transpose(*range(2, a.ndim), 0, 1))
    return out


#: Long reductions (``a @ b`` with a depth of several thousand, few rows and columns) go in
#: depth panels of at least this many within PANEL_MADDS, on the small-matrix kernels.
DEPTH_PANEL_MIN = 64


def _depth_panel_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for ``a`` ``(..., m, K)`` and ``b`` ``(K, n)`` with a long depth K: in depth
    panels of a width that divides K, a multiple of 16 within PANEL_MADDS, each on the
    small-matrix kernels (no packing: 1.2x the GEMM rate for CIFAR-10's 160 x 32 weight-
    gradient rows), the panels' products then summed in order. The sums run in another
    order than one GEMM's: for products whose rounding is ours to choose (gradients), the
    same bits for the same operands. The plain product where no such width exists."""
    m, depth = a.shape[-2:]
    n = b.shape[1]
    width = _widest_divisor(depth, min(depth // 2, PANEL_MADDS // max(1, m * n)), DEPTH_PANEL_MIN)
    if width is None or not b.flags.c_contiguous:
        return np.matmul(a, b)
    count = depth // width
    lead = a.shape[:-2]
    panels = a.reshape(lead + (m, count, width)).swapaxes(-3, -2)
    parts = np.matmul(panels, b.reshape(count, width, n),
                      out=scratch("depth_panels", lead + (count, m, n), a.dtype))
    return np.add.reduce(parts, axis=-3)


class _WeightGradient:
    """Sums ``a @ b.T`` ``(groups, m, k)`` per group over the chunks of a batch, then adds the
    sum to the weight gradient ``dw``: an array of that shape, or any view of the gradient
    that the sum reshapes to (the flipped-kernel products add into a reversed, permuted one).

    Chunks run in waves of up to ``slots`` at a time, possibly on several threads; each
    writes its products into its own slot, and ``collect`` adds the slots in chunk order, so
    the sum is the same whatever the number of threads. BLAS runs these products (a long
    reduction over the columns) markedly faster when the larger of ``m`` and ``k`` is the
    result's row count, so a short ``m`` (few output channels) is computed as ``(b @ a.T)``
    and added transposed at the end, once."""

    def __init__(self, dw: np.ndarray, slots: int, shape: tuple[int, int, int] | None = None):
        self.dw = dw
        g, m, k = shape or dw.shape
        self.transposed = m < k
        shape = (g, k, m) if self.transposed else (g, m, k)
        self.acc = scratch("wgrad", shape, dw.dtype)
        self.parts = scratch("wgrad_parts", (slots,) + shape, dw.dtype)
        self.fresh = True

    def add(self, slot: int, g: int, a: np.ndarray, b: np.ndarray) -> None:
        lhs, rhs = (b, a) if self.transposed else (a, b)
        parallel.matmul(lhs, rhs.T, self.parts[slot, g])

    def add_groups(self, slot: int, a: np.ndarray, b: np.ndarray, first: int = 0) -> None:
        """``add`` for consecutive groups from ``first`` at once: ``a`` ``(groups, m, P)``,
        ``b`` ``(groups, k, P)``."""
        lhs, rhs = (b, a) if self.transposed else (a, b)
        _group_products(lhs, rhs.transpose(0, 2, 1), self.parts[slot, first:first + len(a)], parallel.matmul)

    def add_items(self, slot: int, g: int, a: np.ndarray, b: np.ndarray) -> None:
        """As ``add`` with ``a`` ``(n, m, P)`` and ``b`` ``(n, k, P)``: the sum over the n
        items of ``a[i] @ b[i].T``, one GEMM per item, no transposing copies."""
        lhs, rhs = (b, a) if self.transposed else (a, b)
        np.add.reduce(np.matmul(lhs, rhs.transpose(0, 2, 1)), axis=0, out=self.parts[slot, g])

    def add_shifted(self, slot: int, g: int, a: np.ndarray, bt: np.ndarray, og: int) -> None:
        """As ``add`` with ``a`` given by kernel rows (``row_shift.shifted``) and ``b`` as its
        transpose ``bt`` ``(P, k)``: ``a[i]`` ``(O/g * rest, P)`` holds the rows ``(o, i,
        rest)`` of ``a @ b.T`` for kernel row ``i``. One stacked product ``a @ bt`` (BLAS runs
        these long reductions fastest with both operands' columns contiguous: 1.1x against
        ``bt`` as a transposed view), reordered into the slot."""
        k0, rows, _ = a.shape
        rest, kc = rows // og, bt.shape[1]
        part = self.parts[slot, g]
        prod = _depth_panel_product(a, bt)                           # (k0, O/g * rest, k)
        if self.transposed:
            np.copyto(part.reshape(kc, og, k0, rest), prod.reshape(k0, og, rest, kc).transpose(3, 1, 0, 2))
        else:
            np.copyto(part.reshape(og, k0, rest, kc), prod.reshape(k0, og, rest, kc).transpose(1, 0, 2, 3))

    def collect(self, slots: int) -> None:
        """Adds the products of a wave's ``slots`` chunks, in chunk order."""
        for part in self.parts[:slots]:
            if self.fresh:
                np.copyto(self.acc, part)
                self.fresh = False
            else:
                self.acc += part

    def finish(self) -> None:
        if not self.fresh:
            total = self.acc.transpose(0, 2, 1) if self.transposed else self.acc
            self.dw += total.reshape(self.dw.shape)


class BaseConvolutionLayer(Layer):
    min_bottoms = 1
    min_tops = 1
    equal_bottom_top = True
    inplace_allowed = False
    writes_top_in_place = True
    #: True for Deconvolution: the layer's bottom is the convolution's output side.
    reverse = False

    # ----------------------------------------------------------------- setup
    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        shape = bottom[0].shape
        self.channel_axis = canonical_axis(p.axis, len(shape), "convolution axis")
        nsp = len(shape) - self.channel_axis - 1
        self.num_spatial_axes = nsp
        self.kernel, self.stride, self.pad, self.dilation = spatial_params(self, p, nsp)
        self.channels = int(shape[self.channel_axis])
        self.num_output = _c_int(p.num_output)
        if self.num_output <= 0:
            raise self.error("num_output must be > 0")
        self.group = _c_int(p.group)
        if self.group <= 0:
            raise self.error("group must be > 0")
        if self.channels % self.group:
            raise self.error(f"number of input channels ({self.channels}) must be a multiple "
                             f"of group ({self.group})")
        if self.num_output % self.group:
            raise self.error(f"number of outputs ({self.num_output}) should be a multiple of "
                             f"group ({self.group})")
        self.bias_term = p.bias_term
        if self.reverse:
            wshape = (self.channels, self.num_output // self.group) + self.kernel
        else:
            wshape = (self.num_output, self.channels // self.group) + self.kernel
        expected = [wshape] + ([(self.num_output,)] if self.bias_term else [])
        if not self.check_param_shapes(expected):
            self.add_param_blob(wshape, p.weight_filler)
            if self.bias_term:
                self.add_param_blob((self.num_output,), p.bias_filler)
        self._used_weights = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = self.channel_axis
        if len(shape) != axis + 1 + self.num_spatial_axes:
            raise self.error(f"bottom num_axes may not change (was "
                             f"{axis + 1 + self.num_spatial_axes}, now {len(shape)})")
        if shape[axis] != self.channels:
            raise self.error(f"input size incompatible with convolution kernel: bottom has "
                             f"{shape[axis]} channels, the layer was set up for {self.channels}")
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error(f"all bottoms must have the same shape: bottom[0] is "
                                 f"{shape}, bottom[{i}] is {b.shape}")
        self.num = count(shape, 0, axis)
        in_sp = tuple(int(s) for s in shape[axis + 1:])
        size = deconv_out_size if self.reverse else conv_out_size
        out_sp = tuple(size(i, k, s, p, d) for i, k, s, p, d in
                       zip(in_sp, self.kernel, self.stride, self.pad, self.dilation))
        if any(o < 0 for o in out_sp):
            raise self.error(f"kernel extent exceeds the padded input: output size {out_sp} "
                             f"for input {in_sp}")
        self.in_spatial, self.out_spatial = in_sp, out_sp
        # The convolution's image side is the top for a deconvolution.
        image, cols = (out_sp, in_sp) if self.reverse else (in_sp, out_sp)
        self.geometry = ConvGeometry(image, cols, self.kernel, self.stride, self.pad, self.dilation)
        top_shape = shape[:axis] + (self.num_output,) + out_sp
        for t in top:
            t.reshape(top_shape)

    # ----------------------------------------------------------------- hooks
    #: Per-chunk hooks, called on each batch chunk while it is in cache: ``chunk_input(xc)``
    #: on the bottom before it is used, ``chunk_output(yc)`` on the top after the bias. None
    #: in plain layers; Ristretto's layers trim activations through them.
    chunk_input = None
    chunk_output = None

    def forward_weights(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight and bias arrays the forward GEMMs use (Ristretto substitutes trimmed
        copies); the weights are kept for the backward pass's bottom gradient."""
        return self.blobs[0].data, (self.blobs[1].data if self.bias_term else None)

    def _chunk(self, rows: int, positions: int) -> int:
        """Batch items per GEMM: the work buffers (``rows`` x items*positions: the column
        buffer, the GEMM result) within CACHE_COL_ELEMENTS unless that leaves fewer than
        MIN_GEMM_COLUMNS columns, and always within COL_BUFFER_ELEMENTS."""
        per_item = max(1, rows * positions)
        cached = max(CACHE_COL_ELEMENTS // per_item, -(-MIN_GEMM_COLUMNS // max(1, positions)))
        return max(1, min(cached, COL_BUFFER_ELEMENTS // per_item))

    @staticmethod
    def _hooked_chunk(per_item: int, positions: int) -> int:
        """Batch items per chunk when hooks read the chunk's bottom and top again: both stay
        within HOOKED_CHUNK_ELEMENTS (cache), down to MIN_GEMM_COLUMNS columns per GEMM."""
        return max(HOOKED_CHUNK_ELEMENTS // max(1, per_item), -(-MIN_GEMM_COLUMNS // max(1, positions)), 1)

    def _chunk_bounds(self, step: int, least: int = 1) -> list[int]:
        """Boundaries of the batch chunks of at most ``step`` items (and at least ``least``,
        see ``even_bounds``), as even as possible. With several threads and enough work
        their number is a multiple of the thread count, so that the threads get equal
        shares."""
        n = self.num
        shared = n > step or self._gemm_flops() >= parallel.usable_threads() * parallel.SPLIT_MIN_FLOPS
        return parallel.even_bounds(n, step, shared, least)

    def _gemm_flops(self) -> int:
        """Multiply-adds x 2 of the layer's forward GEMMs."""
        geo = self.geometry
        return 2 * self.num * self.num_output * (self.channels // self.group) * geo.kernel_size * geo.col_size

    @staticmethod
    def _each_unit(units: list[tuple], work) -> None:
        """``work(*unit)`` for every unit, the units shared among the threads in order, each
        unit's GEMMs then on one BLAS thread (the results are the same)."""
        def share(i0: int, i1: int) -> None:
            for unit in units[i0:i1]:
                work(*unit)
        parallel.for_ranges(len(units), share)

    def _row_blocks(self, rows: int) -> list[tuple[int, int]] | None:
        """Output-row blocks (first spatial axis) for items whose column buffer (``rows`` x
        positions) exceeds BLOCK_COL_ELEMENTS: each block's buffer is then built and multiplied
        in the cache (SqueezeNet's first layer: its GEMMs 1.3x faster). Blocks keep at least
        BLOCK_MIN_COLUMNS columns. None where an item fits."""
        geo = self.geometry
        p = geo.col_size
        if not p or rows * p <= BLOCK_COL_ELEMENTS:
            return None
        height = geo.cols[0]
        rest = p // height
        per = max(1, ROW_BLOCK_ELEMENTS // (rows * rest), -(-BLOCK_MIN_COLUMNS // rest))
        blocks = -(-height // per)
        if blocks < 2:
            return None
        return [(height * i // blocks, height * (i + 1) // blocks) for i in range(blocks)]

    @staticmethod
    def _each_chunk_summed(bounds: list[int], work, dwg: _WeightGradient | None) -> None:
        """As ``parallel.for_bounds`` for backward chunks ``work(slot, n0, n1)`` that put their
        weight-gradient products into ``slot`` of ``dwg``: the chunks run in waves of one
        per slot, each wave's products summed in chunk order."""
        if dwg is None:
            BaseConvolutionLayer._each_unit([(0, n0, n1) for n0, n1 in zip(bounds, bounds[1:])], work)
            return
        chunks, slots = len(bounds) - 1, dwg.parts.shape[0]
        for w0 in range(0, chunks, slots):
            w1 = min(chunks, w0 + slots)
            BaseConvolutionLayer._each_unit(
                [(i - w0, bounds[i], bounds[i + 1]) for i in range(w0, w1)], work)
            dwg.collect(w1 - w0)

    def _weight_gradient(self, dw: np.ndarray | None, shape, chunks: int,
                         target: np.ndarray | None = None) -> _WeightGradient | None:
        """Slots for as many chunks as WGRAD_PARTS_BYTES allows (whole multiples of the
        thread count, at least one per thread): each wave ends with the threads waiting for
        each other, so fewer, longer waves keep them busy. The products are ``shape``; their
        sum goes to ``target`` (a view of ``dw``) if given, else to ``dw`` in that shape."""
        if dw is None:
            return None
        threads = max(1, min(parallel.usable_threads(), chunks))
        per_wave = max(1, WGRAD_PARTS_BYTES // max(1, dw.nbytes * threads))
        if target is None:
            return _WeightGradient(dw.reshape(shape), min(chunks, threads * per_wave))
        return _WeightGradient(target, min(chunks, threads * per_wave), shape)

    # ----------------------------------------------------------------- forward / backward
    def forward_cpu(self, bottom, top):
        w, b = self.forward_weights()
        self._used_weights = w
        c, o = self.channels, self.num_output
        bias = None if b is None else b.reshape(o, 1)
        for bb, tb in zip(bottom, top):
            x = bb.data.reshape((self.num, c) + self.in_spatial)
            y = _writable(tb, "data", (self.num, o, count(self.out_spatial)))
            if self.num:
                self._forward(x, w, bias, y)

    @staticmethod
    def _store(y, result, bias):
        """``y = result (+ bias)``: the GEMM result copied into the top, bias fused in."""
        if bias is None:
            np.copyto(y, result)
        else:
            np.add(result, bias, out=y)

    @classmethod
    def _store_result(cls, y, res, view, bias, transposed: bool = False):
        """``y = view (+ bias)`` where ``view`` ``(n, channels, positions)`` is a view of the
        GEMM result ``res`` ``(channels, columns)``, or ``(columns, channels)`` if
        ``transposed``, and ``bias`` is ``(channels, 1)``. Where the view reorders the result
        (several items), the bias is added in ``res`` itself, contiguous and in cache, and
        the sums then copied into the top: the same sums, and NumPy's broadcast add on the
        way into the top's layout took 1.8x the time of both (CIFAR-10's ``conv1``; its
        forward 0.95x the time at 1 thread, 0.97x at 2). A view in the result's own order
        (one item: CaffeNet, SqueezeNet) takes the add straight into the top, one pass."""
        if bias is not None and not view.flags.c_contiguous:
            np.add(res, bias.T if transposed else bias, out=res)
            bias = None
        cls._store(y, view, bias)

    @classmethod
    def _store_swapped(cls, y, results, n, spatial, batch_inner, bias):
        """``_store_result`` for the groups' swapped products ``results`` (``(groups,
        columns, rows)``): each group's transpose written into its channels of the top."""
        groups, _, og = results.shape
        yg = y.reshape((n, groups, og) + y.shape[2:])
        for g in range(groups):
            rows = from_cols(results[g].T, n, spatial, batch_inner)
            cls._store_result(yg[:, g], results[g], rows,
                              None if bias is None else bias[g * og:(g + 1) * og], transposed=True)

    def backward_cpu(self, top, propagate_down, bottom):
        w = self._used_weights if self._used_weights is not None else self.forward_weights()[0]
        ppd = self.param_propagate_down
        need_w = bool(ppd and ppd[0])
        need_b = self.bias_term and len(ppd) > 1 and ppd[1]
        c, o = self.channels, self.num_output
        for i, (bb, tb) in enumerate(zip(bottom, top)):
            dy = tb.diff.reshape((self.num, o) + self.out_spatial)
            if need_b:
                self.blobs[1].diff += channel_sums(dy)
            need_x = bool(propagate_down[i])
            if not (need_w or need_x) or self.num == 0:
                if need_x:
                    bb.diff[...] = 0
                continue
            x = bb.data.reshape((self.num, c) + self.in_spatial)
            dx = _writable(bb, "diff", (self.num, c) + self.in_spatial) if need_x else None
            dw = self.blobs[0].diff if need_w else None
            self._backward(x, dy, w, dw, dx, need_x and self.gates(i))
        self.gated_bottoms = self.gates_relu


@register("Convolution")
class ConvolutionLayer(BaseConvolutionLayer):
    """Cross-correlation with zero padding, stride, dilation and groups (Caffe's Convolution)."""
    fuses_relu = True
    gates_relu = True

    def _forward(self, x, w, bias, y):
        geo, g_ = self.geometry, self.group
        c, o, p = self.channels, self.num_output, geo.col_size
        cg, og, kg = c // g_, o // g_, (c // g_) * geo.kernel_size
        wg = w.reshape(g_, og, kg)
        step = self._chunk(max(c * geo.kernel_size, o), p)
        if batch_inner_for(min(step, self.num), geo.cols, x.dtype.itemsize):   # the chunks' layout
            step = min(step, max(1, BATCH_INNER_RESULT_BYTES // max(1, o * p * x.dtype.itemsize)))
        chunk_input, chunk_output = self.chunk_input, self.chunk_output
        if chunk_input is not None or chunk_output is not None:
            step = min(step, self._hooked_chunk(max(c, o) * p, p))
        rectified = self.rectify_top
        row_blocks = None if geo.pointwise else self._row_blocks(c * geo.kernel_size)
        if row_blocks is not None and chunk_input is not None:
            chunk_input(x)      # blocks overlap in their input rows: trim the bottom once
            chunk_input = None

        def forward_chunk(n0: int, n1: int, rows=None) -> None:
            xc, yc = x[n0:n1], y[n0:n1]
            n = n1 - n0
            if chunk_input is not None:
                chunk_input(xc)
            if geo.pointwise:
                # The input is the column buffer: a batched GEMM straight into the top.
                xc = xc.reshape(n, c, p)
                for g in range(g_):
                    _product(wg[g], xc[:, g * cg:(g + 1) * cg], yc[:, g * og:(g + 1) * og])
                if bias is not None:
                    yc += bias
            elif rows is not None:
                # A block of output rows of one item: its column buffer stays in cache.
                sub, image_rows = geo.row_block(*rows)
                m = n * sub.col_size
                col = im2col(xc[:, :, image_rows], sub, False,
                             out=scratch("col", (c * geo.kernel_size, m), x.dtype))
                res = scratch("gemm", (o, m), x.dtype)
                _group_products(wg, col.reshape(g_, kg, m), res.reshape(g_, og, m))
                per_row = sub.col_size // (rows[1] - rows[0])
                yc = yc[:, :, rows[0] * per_row:rows[1] * per_row]
                self._store_result(yc, res, from_cols(res, n, (sub.col_size,), False), bias)
            else:
                bi = batch_inner_for(n, geo.cols, x.dtype.itemsize)
                col = im2col(xc, geo, bi, out=scratch("col", (c * geo.kernel_size, n * p), x.dtype))
                if not _batches_groups(g_, og, kg, n * p) and _swaps(og, kg, n * p, x.dtype):
                    res = scratch("gemm", (g_, n * p, og), x.dtype)
                    for g in range(g_):
                        blas_panels.swapped_product(wg[g], col[g * kg:(g + 1) * kg], res[g])
                    self._store_swapped(yc, res, n, (p,), bi, bias)
                else:
                    res = scratch("gemm", (o, n * p), x.dtype)
                    _group_products(wg, col.reshape(g_, kg, n * p), res.reshape(g_, og, n * p))
                    self._store_result(yc, res, from_cols(res, n, (p,), bi), bias)
            if chunk_output is not None:
                chunk_output(yc)
            if rectified:       # the fused in-place ReLU, while the chunk is in cache
                rectify(yc, yc)
        if row_blocks is None:
            parallel.for_bounds(self._chunk_bounds(step), forward_chunk)
        else:
            self._each_unit([(i, i + 1, r) for i in range(self.num) for r in row_blocks], forward_chunk)
        self.rectified_top = rectified

    def _backward(self, x, dy, w, dw, dx, gate: bool = False):
        """dW and dx; with ``gate``, dx passes through the ReLU that made ``x`` (see
        ``gates_relu``), chunk by chunk while it is in cache."""
        geo, g_ = self.geometry, self.group
        c, o, p = self.channels, self.num_output, geo.col_size
        cg, og, kg = c // g_, o // g_, (c // g_) * geo.kernel_size
        wg = w.reshape(g_, og, kg)
        # The column gradients' weights, transposed once into contiguous arrays: the panels
        # are checked (``blas_panels.agrees``) for plain, not transposed, operands.
        wgt = np.ascontiguousarray(wg.transpose(0, 2, 1)) if dx is not None else None
        dy = dy.reshape(self.num, o, p)
        flipped = self._flipped_geometry() if dx is not None else None
        least, frows = 1, None
        if flipped is not None:
            fgeo, wf = flipped, self._flipped_weights(w)
            fk = og * geo.kernel_size
            step = self._chunk(max(c, o) * geo.kernel_size, max(p, geo.image_size))
            if row_shift.applies(fgeo, og):
                # By shifted rows, dy's rows buffer serving dx and dW. The least chunk keeps
                # every chunk's products above PANEL_MADDS: OpenBLAS runs smaller ones on other
                # kernels, which need not give the same bits, and chunks follow the threads.
                frows = row_shift.row_weights(wf.reshape((c, og) + self.kernel), g_)
                frgeo = row_shift.row_geometry(fgeo)
                fdepth = frows.shape[3]
                panel = shallow_panel(cg, fdepth)
                least = PANEL_MADDS // max(1, cg * fdepth * geo.image_size) + 1
        else:
            step = self._chunk(max(c * geo.kernel_size, o), p)
        bounds = self._chunk_bounds(step, least)

        def put_dx(n0: int, n1: int, values: np.ndarray | None = None) -> None:
            """``dx[n0:n1] = values`` (None: already there), through the ReLU below where
            gated."""
            if gate:
                gate_gradient(x[n0:n1], dx[n0:n1] if values is None else values, dx[n0:n1])
            elif values is not None:
                np.copyto(dx[n0:n1], values)
        if flipped is not None and dw is not None:
            # The weight gradient from the flipped columns: see _flipped_weight_target.
            dwg = self._weight_gradient(dw, (g_, fk, cg), len(bounds) - 1, self._flipped_weight_target(dw))
        else:
            dwg = self._weight_gradient(dw, (g_, og, kg), len(bounds) - 1)

        def backward_chunk(slot: int, n0: int, n1: int) -> None:
            xc, dyc = x[n0:n1], dy[n0:n1]
            n = n1 - n0
            bi = batch_inner_for(n, geo.cols, x.dtype.itemsize)
            if frows is not None:
                rows = row_shift.row_buffer(dyc.reshape((n, o) + geo.cols), frgeo, "col")
                width, count = (_panel_cover(cg, fdepth, n * geo.image_size, panel, SHALLOW_PANEL_MIN_COLUMNS)
                                if panel else (None, 0))
                xt = _positions_first(xc, "cols_in") if dwg is not None else None
                res = scratch("gemm", (c, n * geo.image_size), x.dtype)
                for g in range(g_):
                    rows_g, xg = rows[g * fdepth:(g + 1) * fdepth], slice(g * cg, (g + 1) * cg)
                    if xt is not None:
                        dwg.add_shifted(slot, g, row_shift.shifted(rows_g, fgeo, n), xt[:, xg], og)
                    row_shift.row_product(frows[g], rows_g, fgeo, n, res[xg], width, count)
                put_dx(n0, n1, from_cols(res, n, geo.image, True))
                return
            if flipped is not None:
                # dx is the full correlation of dy with the flipped kernels
                fbi = batch_inner_for(n, geo.image, x.dtype.itemsize)
                m = n * geo.image_size
                xt = _cols(xc, fbi, "cols_in").reshape(g_, cg, m) if dwg is not None else None
                res = scratch("gemm", (c, m), x.dtype).reshape(g_, cg, m)
                dy_maps = dyc.reshape((n, o) + geo.cols)
                for g0, g1 in _group_ranges(g_, cg, fk, m, fk):
                    fcol = im2col(dy_maps[:, g0 * og:g1 * og], fgeo, fbi,
                                  out=scratch("col", ((g1 - g0) * fk, m), x.dtype)).reshape(g1 - g0, fk, m)
                    if xt is not None:
                        dwg.add_groups(slot, fcol, xt[g0:g1], g0)
                    _group_products(wf[g0:g1], fcol, res[g0:g1], parallel.matmul)
                put_dx(n0, n1, from_cols(res.reshape(c, m), n, geo.image, fbi))
                return
            if geo.pointwise:
                if dwg is not None:   # per item: the inputs are already column buffers
                    xi = xc.reshape(n, c, p)
                    for g in range(g_):
                        dwg.add_items(slot, g, dyc[:, g * og:(g + 1) * og], xi[:, g * cg:(g + 1) * cg])
                if dx is not None:
                    dxc = dx[n0:n1].reshape(n, c, p)
                    for g in range(g_):
                        _product(wgt[g], dyc[:, g * og:(g + 1) * og], dxc[:, g * cg:(g + 1) * cg])
                    put_dx(n0, n1)
                return
            m = n * p
            dyt = _cols(dyc, bi, "gemm").reshape(g_, og, m)
            for g0, g1 in _group_ranges(g_, og, kg, m, kg):    # col2im channel range by range
                channels = slice(g0 * cg, g1 * cg)
                col = scratch("col", (g1 - g0, kg, m), x.dtype)
                if dwg is not None:
                    im2col(xc[:, channels], geo, bi, out=col.reshape((g1 - g0) * kg, m))
                    dwg.add_groups(slot, dyt[g0:g1], col, g0)
                if dx is not None:
                    # the column buffer is reused for the column gradient
                    _column_gradient(wgt[g0:g1], dyt[g0:g1], col)
                    col2im(col.reshape((g1 - g0) * kg, m), geo, n, (g1 - g0) * cg, bi,
                           out=dx[n0:n1, channels])
            if dx is not None:
                put_dx(n0, n1)
        self._each_chunk_summed(bounds, backward_chunk, dwg)
        if dwg is not None:
            dwg.finish()

    def _flipped_geometry(self) -> ConvGeometry | None:
        """For stride 1 with at least as many input as output channels per group, the input
        gradient is computed as a convolution of dy with the flipped, transposed kernels
        (im2col of dy, one GEMM per group): faster than the column gradient's GEMM plus
        col2im there (e.g. 1.4x for CIFAR-10's 32 -> 32 5x5 layer). With fewer inputs than
        outputs only by shifted rows (``row_shift``), and where the inputs per group times
        the kernel's other axes reach its MIN_ROW_DEPTH (CIFAR-10's 32 -> 64 5x5 layer: 0.86-0.9x
        the backward time; a first layer's 3 channels stay). Not where the input has many
        more positions than the output (FLIPPED_MAX_EXTRA). The summation order differs
        from col2im's (float32 rounding only). None where it does not apply."""
        geo = self.geometry
        if (geo.pointwise
                or any(s != 1 for s in geo.stride) or any(d != 1 for d in geo.dilation)
                or any(p > k - 1 for p, k in zip(geo.pad, geo.kernel))):
            return None
        if geo.image_size > FLIPPED_MAX_EXTRA * geo.col_size:
            return None
        fgeo = ConvGeometry(geo.cols, geo.image, geo.kernel, geo.stride,
                            tuple(k - 1 - p for p, k in zip(geo.pad, geo.kernel)), geo.dilation)
        if self.channels < self.num_output and not (row_shift.applies(fgeo, self.num_output // self.group)
                                                    and row_shift.applies(geo, self.channels // self.group)):
            return None
        return fgeo

    def _flipped_weight_target(self, dw: np.ndarray) -> np.ndarray:
        """The view of ``dw`` that the flipped path's weight-gradient products add into.

        Row ``(o, k')`` of the flipped column buffer holds dy shifted by the flipped offset
        ``k' = kernel - 1 - k``, over the same (item, input position) columns as x's own
        column layout. So ``fcol @ xᵀ`` gives ``dW[o, c, k]`` at ``[(o, kernel - 1 - k), c]``:
        the same products as ``dy @ im2col(x)ᵀ``, without building im2col(x) (the terms of
        each sum come in the same order; only the GEMM's blocking of them may differ). As
        ``(groups, O/g, *kernel, C/g)``: dw per group, kernels reversed, channels last."""
        g_, nsp = self.group, self.num_spatial_axes
        og, cg = self.num_output // g_, self.channels // g_
        view = dw.reshape((g_, og, cg) + self.kernel)[(slice(None),) * 3 + (slice(None, None, -1),) * nsp]
        return view.transpose(0, 1, *range(3, 3 + nsp), 2)

    def _flipped_weights(self, w: np.ndarray) -> np.ndarray:
        """``(groups, C/g, O/g * prod(kernel))``: per group, W with its kernels flipped in every
        spatial axis and the channel axes swapped (rows: input channels)."""
        g_, nsp = self.group, self.num_spatial_axes
        og, cg = self.num_output // g_, self.channels // g_
        flip = (slice(None), slice(None)) + (slice(None, None, -1),) * nsp
        wg = w.reshape((g_, og, cg) + self.kernel)[(slice(None),) + flip]
        return np.ascontiguousarray(wg.swapaxes(1, 2)).reshape(g_, cg, og * count(self.kernel))


@register("Deconvolution")
class DeconvolutionLayer(BaseConvolutionLayer):
    """Transposed convolution: forward is a convolution's input gradient (col2im of Wᵀ·x)."""
    reverse = True

    def _forward(self, x, w, bias, y):
        geo, g_ = self.geometry, self.group
        c, o, p = self.channels, self.num_output, geo.col_size   # p: bottom positions
        cg, og, kg = c // g_, o // g_, (o // g_) * geo.kernel_size
        wg = w.reshape(g_, cg, kg)
        step = self._chunk(max(o * geo.kernel_size, c), p)
        chunk_input, chunk_output = self.chunk_input, self.chunk_output

        def forward_chunk(n0: int, n1: int) -> None:
            xc, yc = x[n0:n1], y[n0:n1]
            n = n1 - n0
            if chunk_input is not None:
                chunk_input(xc)
            if geo.pointwise:
                xc = xc.reshape(n, c, p)
                for g in range(g_):
                    parallel.matmul(wg[g].T, xc[:, g * cg:(g + 1) * cg], yc[:, g * og:(g + 1) * og])
                if bias is not None:
                    yc += bias
            else:
                bi = batch_inner_for(n, geo.cols, x.dtype.itemsize)
                xt = _cols(xc, bi, "gemm")
                col = scratch("col", (o * geo.kernel_size, n * p), x.dtype)
                for g in range(g_):
                    parallel.matmul(wg[g].T, xt[g * cg:(g + 1) * cg], col[g * kg:(g + 1) * kg])
                self._store(yc.reshape((n, o) + geo.image), col2im(col, geo, n, o, bi),
                            None if bias is None else bias.reshape((o,) + (1,) * len(geo.image)))
            if chunk_output is not None:
                chunk_output(yc)
        parallel.for_bounds(self._chunk_bounds(step), forward_chunk)

    def _backward(self, x, dy, w, dw, dx, gate: bool = False):
        # ``gate`` is never set: Deconvolution does not gate a ReLU (``gates_relu`` False).
        geo, g_ = self.geometry, self.group
        c, o, p = self.channels, self.num_output, geo.col_size
        cg, og, kg = c // g_, o // g_, (o // g_) * geo.kernel_size
        wg = w.reshape(g_, cg, kg)
        step = self._chunk(max(o * geo.kernel_size, c), p)
        bounds = self._chunk_bounds(step)
        dwg = self._weight_gradient(dw, (g_, cg, kg), len(bounds) - 1)

        def backward_chunk(slot: int, n0: int, n1: int) -> None:
            xc, dyc = x[n0:n1], dy[n0:n1]
            n = n1 - n0
            bi = batch_inner_for(n, geo.cols, x.dtype.itemsize)
            if geo.pointwise:
                dyc = dyc.reshape(n, o, p)
                if dwg is not None:
                    xt = _cols(xc.reshape(n, c, p), bi, "gemm")
                    dyt = _cols(dyc, bi, "col")
                    for g in range(g_):
                        dwg.add(slot, g, xt[g * cg:(g + 1) * cg], dyt[g * og:(g + 1) * og])
                if dx is not None:
                    dxc = dx[n0:n1].reshape(n, c, p)
                    for g in range(g_):
                        parallel.matmul(wg[g], dyc[:, g * og:(g + 1) * og], dxc[:, g * cg:(g + 1) * cg])
                return
            col = im2col(dyc, geo, bi, out=scratch("col", (o * geo.kernel_size, n * p), x.dtype))
            if dwg is not None:
                xt = _cols(xc, bi, "gemm")
                for g in range(g_):
                    dwg.add(slot, g, xt[g * cg:(g + 1) * cg], col[g * kg:(g + 1) * kg])
            if dx is not None:
                res = scratch("gemm", (c, n * p), x.dtype)
                for g in range(g_):
                    parallel.matmul(wg[g], col[g * kg:(g + 1) * kg], res[g * cg:(g + 1) * cg])
                np.copyto(dx[n0:n1], from_cols(res, n, geo.cols, bi))
        self._each_chunk_summed(bounds, backward_chunk, dwg)
        if dwg is not None:
            dwg.finish()
