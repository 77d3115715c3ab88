"""Convolution by shifted rows: im2col over every spatial axis but the first.

A k x k convolution's column buffer repeats each input value k*k times. Along the first
spatial axis, though, with stride 1 the window of output row ``r`` at kernel row ``i`` is
input row ``r + i * dilation``: the same rows for every kernel row, shifted. So the buffer
is built with a kernel of height 1 over *all* padded rows (``row_geometry``; k times fewer
values), and with the batch innermost each kernel row's operand is one contiguous run of
columns of it, starting ``i * dilation`` rows in (``shifted``). A convolution is then the
sum over kernel rows of ``W[:, :, i] @ rows[i]`` (``row_product``: one stacked matmul, then
a sum in kernel-row order), and a weight gradient's kernel row ``i`` is ``rows[i] @ x.T``.

Same products as im2col + one GEMM, summed in another order (float32 rounding only). The
convolution layer's backward pass uses it for the convolution of dy with the flipped kernels
(its input gradient) and for the weight gradient from the same buffer. Its forward pass does
not: Caffe's single GEMM over the whole buffer fixes the order its numbers are summed in, and
training runs follow that order closely (LeNet's 30 reference iterations drift by 2e-3
instead of 2e-5 with the forward by shifted rows).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ristretto_cli.layers.im2col import ConvGeometry, im2col, scratch

#: Kernel-row products shallower than this (input channels per group x the kernel's other
#: axes) run slower than the full buffer's single deep GEMM: a first layer's 3 x 5 stays.
MIN_ROW_DEPTH = 64
#: Fewer kernel rows save too little of the buffer for the split products to win: measured
#: on backward passes, 0.86-0.96x the time on 5x5 layers (CIFAR-10's conv3, CaffeNet's
#: conv2), 1.0-1.14x on 3x3 ones (SqueezeNet's expand layers, CaffeNet's conv3-5).
MIN_KERNEL_ROWS = 5


def row_geometry(geo: ConvGeometry) -> ConvGeometry | None:
    """The geometry of the shifted-rows buffer for ``geo``: kernel 1 and stride 1 along the
    first axis, over every padded row; None where the method does not apply (stride along
    the first axis, a kernel of one row, no spatial axes)."""
    if not geo.kernel or geo.kernel[0] < 2 or geo.stride[0] != 1:
        return None
    return ConvGeometry(geo.image, (geo.padded[0],) + geo.cols[1:], (1,) + geo.kernel[1:],
                        (1,) + geo.stride[1:], geo.pad, (1,) + geo.dilation[1:])


def applies(geo: ConvGeometry, channels_per_group: int) -> bool:
    """Whether a layer of this geometry convolves by shifted rows."""
    return (row_geometry(geo) is not None and geo.kernel[0] >= MIN_KERNEL_ROWS
            and channels_per_group * (geo.kernel_size // geo.kernel[0]) >= MIN_ROW_DEPTH)


def row_weights(w: np.ndarray, groups: int) -> np.ndarray:
    """``(groups, kernel rows, O/g, C/g * rest of kernel)``: per group, each kernel row's
    weights as one contiguous matrix."""
    o, cg, k0 = w.shape[0], w.shape[1], w.shape[2]
    wr = w.reshape((groups, o // groups, cg, k0, -1)).transpose(0, 3, 1, 2, 4)
    return np.ascontiguousarray(wr).reshape(groups, k0, o // groups, -1)


def row_buffer(x: np.ndarray, rgeo: ConvGeometry, out_slot: str = "row_col") -> np.ndarray:
    """The shifted-rows buffer of ``x`` ``(n, C, *image)``, batch innermost:
    ``(C * rest of kernel, padded rows * rest of positions * n)``."""
    n, c = x.shape[:2]
    return im2col(x, rgeo, True, out=scratch(out_slot, (c * rgeo.kernel_size, n * rgeo.col_size), x.dtype))


def shifted(rows: np.ndarray, geo: ConvGeometry, n: int) -> np.ndarray:
    """``(kernel rows, depth, positions * n)``: the read-only views of ``rows`` (a group's rows
    of ``row_buffer``) that each kernel row multiplies, output rows shifted by the row."""
    k0 = geo.kernel[0]
    run = (geo.col_size // geo.cols[0]) * n            # columns per row of positions
    step = geo.dilation[0] * run * rows.itemsize
    return as_strided(rows, shape=(k0, rows.shape[0], geo.cols[0] * run),
                      strides=(step, rows.strides[0], rows.itemsize), writeable=False)


def row_product(wr: np.ndarray, rows: np.ndarray, geo: ConvGeometry, n: int, out: np.ndarray,
                panel: int | None = None, count: int = 0) -> None:
    """``out`` ``(O/g, positions * n)`` = the convolution of one group: ``wr`` ``(kernel rows,
    O/g, depth)`` (``row_weights`` of the group) against ``rows`` ``(depth, padded rows *
    rest * n)`` (the group's rows of ``row_buffer``). Output columns come batch innermost.
    ``panel``, ``count``: each kernel row's first ``count`` panels of ``panel`` columns go
    panel by panel (one stacked matmul all the same), the remaining columns, if any, as one
    product."""
    k0, og, depth = wr.shape
    width = out.shape[1]
    parts = scratch("row_parts", (k0, og, width), out.dtype)
    views = shifted(rows, geo, n)
    if panel and count:
        item = rows.itemsize
        panels = as_strided(rows, shape=(k0, count, depth, panel),
                            strides=(views.strides[0], panel * item, rows.strides[0], item), writeable=False)
        panel_parts = as_strided(parts, shape=(k0, count, og, panel),
                                 strides=(parts.strides[0], panel * item, parts.strides[1], item))
        np.matmul(wr[:, None], panels, out=panel_parts)
        if count * panel < width:
            np.matmul(wr, views[..., count * panel:], out=parts[..., count * panel:])
    else:
        np.matmul(wr, views, out=parts)
    np.add.reduce(parts, axis=0, out=out)
