"""Products in column panels on the BLAS's small-matrix kernels, with the plain product's bits.

OpenBLAS runs a product of few multiply-adds on small-matrix kernels that do not pack their
operands; a larger one packs both first. A convolution's product with few rows and a short
depth over many columns spends more on that packing than on multiplying, so cutting its
columns into panels small enough for those kernels makes it faster (``panel_product``).

The bits stay the plain product's where the kernels sum in the same order. A shallow depth
both sum in one run. A deep one the packed GEMM does not: it splits the depth into blocks
(``BLOCK_DEPTH`` at a time while twice that remains, then the rest in two halves, the first
rounded up to a multiple of ``BLOCK_UNROLL``: 800 -> 400 + 400), sums each from zero and adds
the block sums into the result one after the other (``depth_blocks``). The panels follow
those blocks and add their products in the same order.

The same holds for a product whose *left* operand is the long one: a fully connected layer's
weights against a small batch (``row_panel_product``). The packed GEMM copies every weight
once more on the way; panels of weight rows, depth block by depth block, read them in place.

These are facts about one BLAS build (OpenBLAS 0.3 on its AVX-512 kernels). So before a shape
goes in panels, ``agrees`` (``row_panels_agree``) checks once, on random operands, that the
panels give the plain product's bits on the BLAS actually loaded; where they do not, callers
keep the plain product.
"""

from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ristretto_cli import parallel
from ristretto_cli.layers.im2col import scratch

#: OpenBLAS's depth block for single-precision GEMM (its GEMM_Q) on the AVX-512 kernels.
BLOCK_DEPTH = 448
#: A split remainder's first half is rounded up to a multiple of this (its GEMM_UNROLL_M).
BLOCK_UNROLL = 16


def depth_blocks(depth: int) -> list[tuple[int, int]]:
    """The ``(start, stop)`` depth ranges the BLAS sums separately, in order."""
    blocks, start = [], 0
    while start < depth:
        rest = depth - start
        if rest >= 2 * BLOCK_DEPTH:
            step = BLOCK_DEPTH
        elif rest > BLOCK_DEPTH:
            step = -(-(rest // 2) // BLOCK_UNROLL) * BLOCK_UNROLL
        else:
            step = rest
        blocks.append((start, start + step))
        start += step
    return blocks


def deepest_block(depth: int) -> int:
    """The longest of ``depth_blocks(depth)``: what a panel's multiply-adds are sized by."""
    return max(k1 - k0 for k0, k1 in depth_blocks(depth))


def _sum_over_depth_blocks(depth: int, out: np.ndarray, multiply, slot: str) -> None:
    """``out`` = the sum of ``multiply(k0, k1, target)`` (a product over the depth range
    ``k0:k1``, written into ``target``) over ``depth_blocks(depth)``, added in the BLAS's
    order: the first block's product straight into ``out``, each later one into this
    thread's work array ``slot`` and then added."""
    for i, (k0, k1) in enumerate(depth_blocks(depth)):
        target = out if i == 0 else scratch(slot, out.shape, out.dtype)
        multiply(k0, k1, target)
        if i:
            np.add(out, target, out=out)


def panel_product(a: np.ndarray, b: np.ndarray, out: np.ndarray, width: int, count: int) -> None:
    """``out = a @ b`` for ``a`` ``(rows, depth)``, ``b`` ``(..., depth, columns)`` (rows of
    contiguous runs) and ``out`` ``(..., rows, columns)``: the first ``count`` panels of
    ``width`` columns depth block by depth block (one stacked matmul per block, the blocks'
    products added in order), the remaining columns as one plain product."""
    split = count * width
    if split:
        rows, lead = a.shape[0], b.shape[:-2]

        def multiply(k0: int, k1: int, target: np.ndarray) -> None:
            panels = b[..., k0:k1, :split].reshape(lead + (k1 - k0, count, width)).swapaxes(-3, -2)
            np.matmul(a[:, k0:k1], panels, out=target.reshape(lead + (rows, count, width)).swapaxes(-3, -2))
        _sum_over_depth_blocks(a.shape[1], out[..., :split], multiply, "depth_block")
    if split < b.shape[-1]:
        np.matmul(a, b[..., split:], out=out[..., split:])


#: Bytes of per-block products a group of row panels holds before they are summed.
ROW_GROUP_BYTES = 1 << 19


def _equal_block_runs(depth: int) -> list[tuple[int, int, int]]:
    """``depth_blocks(depth)`` as runs of consecutive blocks of one width: ``(start, count,
    width)``, so that each run is one stacked product."""
    runs: list[list[int]] = []
    for k0, k1 in depth_blocks(depth):
        if runs and runs[-1][2] == k1 - k0:
            runs[-1][1] += 1
        else:
            runs.append([k0, 1, k1 - k0])
    return [(k0, count, width) for k0, count, width in runs]


def row_panel_product(a: np.ndarray, b: np.ndarray, out: np.ndarray, rows: int) -> None:
    """``out = a @ b`` for ``a`` ``(n, depth)`` with contiguous rows and a narrow ``b``
    ``(depth, m)``: ``a``'s rows in panels of ``rows``, each panel's product small enough for
    the kernels that read their operands in place, depth block by depth block of the BLAS,
    the blocks' products added in order. Whole panels go a group at a time, every depth block
    of a panel before the next panel, so that ``a`` is read as a few long streams (fc6's
    weights from memory: 0.76-0.79x the time of all panels block by block); the last rows
    (fewer than ``rows``) as one panel."""
    n, depth = a.shape
    m = out.shape[1]
    whole = n - n % rows
    runs = _equal_block_runs(depth)
    blocks = sum(count for _, count, _ in runs)
    if whole:
        item = a.itemsize
        per_run = [np.ascontiguousarray(b[k0:k0 + count * width]).reshape(count, width, m)
                   for k0, count, width in runs]
        panels = whole // rows
        group = max(1, min(panels, ROW_GROUP_BYTES // max(1, blocks * rows * m * out.itemsize)))
        lead = out[:whole].reshape(panels, rows, m)
        for p0 in range(0, panels, group):
            g = min(group, panels - p0)
            parts = scratch("row_panel_parts", (g, blocks, rows, m), out.dtype)
            j = 0
            for (k0, count, width), bk in zip(runs, per_run):
                strips = as_strided(a[p0 * rows:, k0:], shape=(g, count, rows, width),
                                    strides=(rows * a.strides[0], width * item, a.strides[0], item),
                                    writeable=False)
                np.matmul(strips, bk, out=parts[:, j:j + count])
                j += count
            # The blocks' products summed one after the other, as the BLAS adds them.
            np.add.reduce(parts, axis=1, out=lead[p0:p0 + g])
    if whole < n:
        def multiply(k0: int, k1: int, target: np.ndarray) -> None:
            np.matmul(a[whole:, k0:k1], np.ascontiguousarray(b[k0:k1]), out=target)
        _sum_over_depth_blocks(depth, out[whole:], multiply, "row_panel_block")


_agreed: dict[tuple, bool] = {}
_swap_agreed: dict[tuple, bool] = {}
_row_agreed: dict[tuple, bool] = {}
_agreed_lock = threading.Lock()


def _same_bits_as_plain(memory: dict, key: tuple, seed: int, shape_a: tuple[int, int],
                        shape_b: tuple[int, int], product, dtype, transposed_b: bool = False) -> bool:
    """Whether ``product(a, b)`` gives ``a @ b``'s bits on random operands of these shapes,
    both on one BLAS thread (as the layers run it; a threaded BLAS may differ): any other
    order of summation shows in some of the results. With ``transposed_b`` the plain product
    is ``a @ b.T``. Checked once per ``key`` and remembered in ``memory``."""
    with _agreed_lock:
        known = memory.get(key)
    if known is None:
        rng = np.random.default_rng(seed)
        a = rng.standard_normal(shape_a).astype(dtype)
        b = rng.standard_normal(shape_b).astype(dtype)
        with parallel.blas_single_threaded():
            plain = np.matmul(a, b.T if transposed_b else b)
            other = product(a, b)
        known = bool(np.array_equal(plain.view(np.uint8), np.ascontiguousarray(other).view(np.uint8)))
        with _agreed_lock:
            memory[key] = known
    return known


def agrees(rows: int, depth: int, width: int, tail: int, dtype=np.float32) -> bool:
    """Whether ``panel_product`` gives the plain product's bits for ``rows x depth``
    operands, ``width``-column panels and a last product of ``tail`` columns, on this BLAS on
    one thread (as layers run it): checked once per shape and remembered."""
    def in_panels(a, b):
        panels = np.empty((rows, b.shape[1]), dtype)
        panel_product(a, b, panels, width, 2)
        return panels
    return _same_bits_as_plain(_agreed, (rows, depth, width, tail, np.dtype(dtype).str), depth * 131 + rows,
                               (rows, depth), (depth, 2 * width + tail), in_panels, dtype)


def swapped_product(a: np.ndarray, b: np.ndarray, out_t: np.ndarray) -> None:
    """``out_t = (a @ b).T`` computed as ``b.T @ a.T``: the BLAS then runs ``a``'s rows as its
    columns, which packs the long operand differently (see ``swap_agrees``)."""
    np.matmul(b.T, a.T, out=out_t)


def swap_agrees(rows: int, depth: int, columns: int, dtype=np.float32) -> bool:
    """Whether ``swapped_product`` gives the plain product's bits for ``rows x depth`` weights
    over ``columns`` columns on this BLAS on one thread: each element is the same sum with
    the roles of rows and columns exchanged, which a BLAS that splits the depth alike in both
    orientations sums in the same order. Checked once per shape and remembered, as ``agrees``
    does for panels."""
    def swapped(a, b):
        out_t = np.empty((columns, rows), dtype)
        swapped_product(a, b, out_t)
        return out_t.T
    return _same_bits_as_plain(_swap_agreed, (rows, depth, columns, np.dtype(dtype).str), depth * 137 + rows,
                               (rows, depth), (depth, columns), swapped, dtype)


#: The fewest multiply-adds of a row-panel bits check: enough that the plain product it
#: compares with runs on the packed GEMM, as the layer's much larger product does.
ROW_CHECK_MADDS = 4_000_000


def row_panels_agree(n: int, depth: int, columns: int, rows: int, dtype=np.float32) -> bool:
    """Whether ``row_panel_product`` in panels of ``rows`` gives the bits of ``a @ bt.T`` (the
    right operand a transposed view, as a fully connected layer passes its input) for ``a``
    ``(n, depth)`` and ``columns`` columns, on this BLAS on one thread. Checked once per shape
    on fewer rows than ``n`` (whole panels enough for ROW_CHECK_MADDS, and ``n``'s remainder):
    each element's sum does not depend on the other rows. Remembered."""
    panels = max(2, -(-ROW_CHECK_MADDS // max(1, rows * depth * columns)))
    check_rows = min(n, panels * rows + n % rows)

    def in_panels(a, bt):
        out = np.empty((a.shape[0], columns), dtype)
        row_panel_product(a, bt.T, out, rows)
        return out
    return _same_bits_as_plain(_row_agreed, (n, depth, columns, rows, np.dtype(dtype).str),
                               depth * 149 + columns, (check_rows, depth), (columns, depth),
                               in_panels, dtype, transposed_b=True)
