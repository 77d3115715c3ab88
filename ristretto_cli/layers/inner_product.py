"""InnerProduct (fully connected): one GEMM over the flattened trailing axes.

As for convolutions, ``forward_weights()`` supplies the arrays the forward GEMM uses and the
backward pass's bottom gradient reuses them (Ristretto's FcRistretto substitutes trimmed
copies); parameter gradients accumulate into ``self.blobs``.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.blob import canonical_axis, count
from ristretto_cli.layers import blas_panels
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.im2col import scratch
from ristretto_cli.layers.registry import register


def _contiguous(blob, what: str) -> np.ndarray:
    """The blob's data or diff, made C-contiguous so that reshaped views write through."""
    arr = getattr(blob, what)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
        setattr(blob, what, arr)
    return arr


#: Rows of a weight gradient computed and added per block: about this many bytes, so that
#: each block's product is added while it is in the cache.
GRADIENT_BLOCK_BYTES = 1 << 18


def _add_product(a: np.ndarray, b: np.ndarray, acc: np.ndarray) -> None:
    """``acc += a @ b`` block by block of rows, the blocks shared among the threads. With a
    short inner dimension (the batch) the product costs less than moving it through memory:
    made whole it would be written out, read back and added (600 MB of traffic for CaffeNet's
    fc6, against 300 MB this way, and no page faults)."""
    rows, cols = acc.shape
    step = max(1, GRADIENT_BLOCK_BYTES // max(1, cols * acc.itemsize))

    def block(r0: int, r1: int) -> None:
        part = scratch("ip_grad", (r1 - r0, cols), acc.dtype)
        np.matmul(a[r0:r1], b, out=part)
        acc[r0:r1] += part
    split = 2 * a.shape[1] * acc.size >= 2 * parallel.SPLIT_MIN_FLOPS
    parallel.for_blocks(rows, step, block, min_blocks=1 if split else max(1, rows))


#: A forward product of large weights against a small batch (at most ROW_PANEL_MAX_BATCH
#: rows, at least ROW_PANEL_MIN_MADDS multiply-adds) goes in panels of ROW_PANEL_ROWS weight
#: rows (``blas_panels.row_panel_product``, the plain product's bits): the packed GEMM copies
#: every weight once more on the way. Measured on an Intel Xeon (AVX-512), batch 10, in the
#: layer: CaffeNet's fc6 (4096 x 9216) 0.77-0.79x the time at 1 thread, 0.76-0.86x at 2; fc7
#: (4096 x 4096) 0.72-0.88x and 0.76-0.93x; but fc8 (1000 x 4096, 16 MB of weights)
#: 1.04-1.10x, hence the least size. Products alone at batch 32: 0.64x and 0.93x; at batch 64
#: slower (1.07-1.20x), hence the bound. Batches of 1-4 take another path in the BLAS, with
#: other bits; the check (``row_panels_agree``) keeps them plain. Panels of 16 or 64 rows
#: ran slower than 32 (fc6 alone: 1.18x and 1.43x the time).
ROW_PANEL_ROWS = 32
ROW_PANEL_MAX_BATCH = 32
ROW_PANEL_MIN_MADDS = 1 << 26


def _in_row_panels(w: np.ndarray, m: int) -> bool:
    """Whether ``w @ x.T`` for ``w`` ``(N, K)`` and ``m`` input rows goes in row panels."""
    n, k = w.shape
    return (w.flags.c_contiguous and 2 <= m <= ROW_PANEL_MAX_BATCH and n > ROW_PANEL_ROWS
            and n * k * m >= ROW_PANEL_MIN_MADDS
            and blas_panels.row_panels_agree(n, k, m, ROW_PANEL_ROWS, w.dtype))


def _row_panels(w: np.ndarray, xt: np.ndarray, out: np.ndarray) -> None:
    """``out = w @ xt`` in row panels (``blas_panels.row_panel_product``), whole panels shared
    among the threads; every element is summed as in one such product."""
    rows, n = ROW_PANEL_ROWS, w.shape[0]

    def share(p0: int, p1: int) -> None:
        r0, r1 = p0 * rows, min(n, p1 * rows)
        blas_panels.row_panel_product(w[r0:r1], xt, out[r0:r1], rows)
    parallel.for_ranges(-(-n // rows), share)


@register("InnerProduct")
class InnerProductLayer(Layer):
    """``y = x·Wᵀ + b`` with ``x`` viewed as ``(M, K)``, ``K = count(axis)``; ``W`` is
    ``[N, K]``, or ``[K, N]`` with ``transpose``."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        p = self.param.inner_product_param
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise self.error("num_output must be > 0")
        self.bias_term = p.bias_term
        self.transpose = p.transpose
        shape = bottom[0].shape
        self.axis = canonical_axis(p.axis, len(shape), "inner product axis")
        self.k = count(shape, self.axis)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        expected = [wshape] + ([(self.num_output,)] if self.bias_term else [])
        if self.blobs:
            # Caffe does not check preloaded blobs here; we accept any blob with the right
            # element count (old files store 4-D (1, 1, N, K) blobs) and refuse the rest.
            if len(self.blobs) != len(expected):
                raise self.error(f"incorrect number of parameter blobs: expected "
                                 f"{len(expected)}, got {len(self.blobs)}")
            for i, (blob, want) in enumerate(zip(self.blobs, expected)):
                if blob.count != count(want):
                    raise self.error(f"incorrect shape of parameter blob {i}: expected "
                                     f"{want}, got {blob.shape}")
                if blob.shape != want:
                    blob.data = blob.data.reshape(want)
                    blob.diff = None
        else:
            self.add_param_blob(wshape, p.weight_filler)
            if self.bias_term:
                self.add_param_blob((self.num_output,), p.bias_filler)
        self._used_weights = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = canonical_axis(self.param.inner_product_param.axis, len(shape), "inner product axis")
        if count(shape, axis) != self.k:
            raise self.error(f"input size incompatible with inner product parameters: the "
                             f"layer was set up for {self.k} inputs per row, the bottom "
                             f"{tuple(shape)} has {count(shape, axis)} from axis {axis}")
        self.axis = axis
        self.m = count(shape, 0, axis)
        top[0].reshape(shape[:axis] + (self.num_output,))

    def forward_weights(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight and bias arrays the forward GEMM uses (Ristretto substitutes trimmed
        copies); the weights are kept for the backward pass's bottom gradient."""
        return self.blobs[0].data, (self.blobs[1].data if self.bias_term else None)

    def forward_cpu(self, bottom, top):
        w, b = self.forward_weights()
        self._used_weights = w
        x = bottom[0].data.reshape(self.m, self.k)
        y = _contiguous(top[0], "data").reshape(self.m, self.num_output)
        w = w.reshape(self.k, self.num_output) if self.transpose else w.reshape(self.num_output, self.k).T
        if self.m < self.num_output:
            # BLAS streams the weights markedly faster with them as the left operand (the
            # long side as the result's rows): compute yᵀ = Wᵀ·xᵀ, then transpose (small).
            yt = scratch("ip", (self.num_output, self.m), y.dtype)
            if _in_row_panels(w.T, self.m):
                _row_panels(w.T, x.T, yt)
            else:
                parallel.matmul(w.T, x.T, yt)
            np.copyto(y, yt.T)
        else:
            parallel.matmul(x, w, y)
        if b is not None:
            y += b.reshape(-1)

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].diff.reshape(self.m, self.num_output)
        x = bottom[0].data.reshape(self.m, self.k)
        ppd = self.param_propagate_down
        if ppd and ppd[0]:
            dw = self.blobs[0].diff
            if not dw.flags.c_contiguous:          # a view of it must write through
                self.blobs[0].diff = dw = np.ascontiguousarray(dw)
            if self.transpose:
                _add_product(x.T, dy, dw.reshape(self.k, self.num_output))
            else:
                _add_product(dy.T, x, dw.reshape(self.num_output, self.k))
        if self.bias_term and len(ppd) > 1 and ppd[1]:
            db = self.blobs[1].diff
            db += dy.sum(axis=0, dtype=dy.dtype).reshape(db.shape)
        if propagate_down[0]:
            w = self._used_weights if self._used_weights is not None else self.forward_weights()[0]
            w = w.reshape(self.k, self.num_output).T if self.transpose else w.reshape(self.num_output, self.k)
            dx = _contiguous(bottom[0], "diff").reshape(self.m, self.k)
            parallel.matmul(dy, w, dx)
