"""Deep products computed the way the BLAS sums them: depth block by depth block.

OpenBLAS's packed single-precision GEMM does not sum a long depth in one run. It splits the
depth into blocks (``BLOCK_DEPTH`` at a time while twice that remains, then the rest in two
halves, the first rounded up to a multiple of ``BLOCK_UNROLL``: 800 -> 400 + 400), sums each
block from zero and adds the block sums into the result one after the other. Multiplying the
blocks separately and adding their products in that order therefore gives the same bits, and
each block, being shallow, can go in narrow column panels that run on the small-matrix
kernels, which skip the packing that dominates a product with few result rows
(``blocked_product``). The convolution's forward uses this for its deep, short products.

The block rule is this build's (OpenBLAS 0.3 on AVX-512); another BLAS may sum otherwise.
So before a shape is computed this way, ``agrees`` checks once, on random operands, that the
blocked product has the plain product's bits on the BLAS actually loaded; where it does not,
callers keep the plain product.
"""

from __future__ import annotations

import threading

import numpy as np

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


def blocked_product(a: np.ndarray, b: np.ndarray, out: np.ndarray, width: int, count: int) -> None:
    """``out = a @ b``: the first ``count`` panels of ``width`` columns depth block by depth
    block (one stacked matmul per block, the blocks' products added in order), the remaining
    columns as one plain product. ``b``'s rows must be contiguous runs."""
    split = count * width
    if split:
        rows = a.shape[0]
        block_sum = None
        for k0, k1 in depth_blocks(a.shape[1]):
            panels = b[k0:k1, :split].reshape(k1 - k0, count, width).transpose(1, 0, 2)
            target = out[:, :split] if block_sum is None else scratch("depth_block", (rows, split), out.dtype)
            np.matmul(a[:, k0:k1], panels, out=target.reshape(rows, count, width).transpose(1, 0, 2))
            if block_sum is None:
                block_sum = out[:, :split]
            else:
                np.add(block_sum, target, out=block_sum)
    if split < b.shape[1]:
        np.matmul(a, b[:, split:], out=out[:, split:])


_agreed: dict[tuple, bool] = {}
_agreed_lock = threading.Lock()


def agrees(rows: int, depth: int, width: int, tail: int, dtype=np.float32) -> bool:
    """Whether ``blocked_product`` gives the plain product's bits for ``rows x depth``
    operands, ``width``-column panels and a last product of ``tail`` columns, on this BLAS on
    one thread (as layers run it): checked once per shape on random operands (any other order
    of summation shows in some of the results) and remembered."""
    key = (rows, depth, width, tail, np.dtype(dtype).str)
    with _agreed_lock:
        known = _agreed.get(key)
    if known is None:
        rng = np.random.default_rng(depth * 131 + rows)
        a = rng.standard_normal((rows, depth)).astype(dtype)
        b = rng.standard_normal((depth, 2 * width + tail)).astype(dtype)
        with parallel.blas_single_threaded():    # as the layers run (a threaded BLAS may differ)
            plain = np.matmul(a, b)
            blocked = np.empty_like(plain)
            blocked_product(a, b, blocked, width, 2)
        known = bool(np.array_equal(plain.view(np.uint8), blocked.view(np.uint8)))
        with _agreed_lock:
            _agreed[key] = known
    return known
