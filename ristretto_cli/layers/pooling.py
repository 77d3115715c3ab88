"""Pooling (MAX, AVE, STOCHASTIC) over 4-D blobs, vectorised with one strided slice per
kernel offset (``kernel_h * kernel_w`` whole-array operations, no per-pixel loops).

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
from dataclasses import dataclass

import numpy as np

from ristretto_cli.layers.base import TRAIN, Layer
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

    def plane_index(self, k1: np.ndarray) -> np.ndarray:
        """Winning offsets (1-based, 0 = none) -> Caffe's ``h * W + w`` in the plane, or -1."""
        kw = self.kernel[1]
        k = k1.astype(np.int64) - 1
        hs = (np.arange(self.pooled[0]) * self.stride[0] - self.pad[0])[:, None]
        ws = (np.arange(self.pooled[1]) * self.stride[1] - self.pad[1])[None, :]
        idx = (hs + k // kw) * self.size[1] + ws + k % kw
        return np.where(k < 0, -1, idx)

    def offset_dtype(self):
        """Smallest integer type for 1-based offset indices (narrow types stream faster)."""
        n = self.kernel[0] * self.kernel[1]
        return np.uint8 if n < 255 else np.uint16 if n < 65535 else np.int64


def ave_pool_forward(x: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    if geo.whole_plane:
        # cumsum adds sequentially in row-major order, exactly as Caffe's loop does
        flat = x.reshape(x.shape[:-2] + (-1,))
        if not flat.shape[-1]:
            flat = np.zeros(flat.shape[:-1] + (1,), x.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.cumsum(flat, axis=-1)[..., -1:] / x.dtype.type(geo.size[0] * geo.size[1])
        return mean.reshape(x.shape[:-2] + (1, 1))
    xp = geo.pad_array(x, 0)
    acc = np.zeros(x.shape[:-2] + geo.pooled, x.dtype)
    for _, offset in geo.offsets():
        acc += geo.window(xp, offset)
    with np.errstate(divide="ignore", invalid="ignore"):   # empty CEIL windows, as in Caffe
        acc /= geo.ave_divisor(x.dtype)
    return acc


def ave_pool_backward(dy: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        g = dy / geo.ave_divisor(dy.dtype)
    if geo.whole_plane:
        return np.broadcast_to(g, dy.shape[:-2] + geo.size)
    acc = np.zeros(dy.shape[:-2] + geo.padded, dy.dtype)
    for _, offset in geo.offsets(reverse=True):
        geo.window(acc, offset)[...] += g
    return geo.crop(acc)


def route_backward(dy: np.ndarray, k1: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    """Each output's gradient added to the cell its 1-based offset index names (0: nowhere)."""
    acc = np.zeros(dy.shape[:-2] + geo.padded, dy.dtype)
    tmp = np.empty_like(dy)
    for o, offset in geo.offsets(reverse=True):
        np.multiply(dy, k1 == o + 1, out=tmp)
        geo.window(acc, offset)[...] += tmp
    return geo.crop(acc)


def max_pool_forward(x: np.ndarray, geo: PoolGeometry) -> tuple[np.ndarray, np.ndarray]:
    """Maxima and the winners' 1-based offset indices (0 where no value beats -FLT_MAX)."""
    out_shape = x.shape[:-2] + geo.pooled
    if geo.whole_plane:
        # Global pooling: one window = the whole plane; argmax keeps the first maximum.
        flat = x.reshape(x.shape[:-2] + (-1,))
        nan = np.isnan(flat)
        if nan.any():
            flat = np.where(nan, -np.inf, flat)
        k = np.argmax(flat, axis=-1)[..., None]
        best = np.take_along_axis(flat, k, axis=-1)
        empty = ~(best > -FLT_MAX)
        best[empty] = -FLT_MAX
        k1 = np.where(empty, 0, k + 1)
        return best.reshape(out_shape), k1.reshape(out_shape)
    # Branch-free updates (data-dependent masked copies are several times slower):
    # ``fmax`` ignores NaN, and the -inf padding never beats the -FLT_MAX start, so the
    # values equal Caffe's strict ">" scan (up to the sign of a zero maximum when +0 and -0
    # tie); offsets grow, so the winner is the last offset
    # that was strictly greater: k1 = max(k1, (v > best) * (o + 1)).
    xp = geo.pad_array(x, -np.inf)
    best = np.full(out_shape, -FLT_MAX, x.dtype)
    kdt = geo.offset_dtype()
    k1 = np.zeros(out_shape, kdt)
    greater = np.empty(out_shape, bool)
    tmp = np.empty(out_shape, kdt)
    for o, offset in geo.offsets():
        v = geo.window(xp, offset)
        np.greater(v, best, out=greater)
        np.fmax(best, v, out=best)
        np.multiply(greater, kdt(o + 1), out=tmp)
        np.maximum(k1, tmp, out=k1)
    return best, k1


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

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes, corresponding to (num, channels, height, "
                             f"width); got {len(shape)}")
        size = (int(shape[2]), int(shape[3]))
        if self.global_pooling:
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
        self._k1 = None     # winners (MAX, STOCHASTIC TRAIN): 1-based offset index, 0 = none
        if self.pool == MAX:
            y, self._k1 = max_pool_forward(x, geo)
            if len(top) > 1:
                top[1].data[...] = geo.plane_index(self._k1)
        elif self.pool == AVE:
            y = ave_pool_forward(x, geo)
        elif self.phase == TRAIN:
            y, self._k1 = self._stochastic_train(x, geo)
        else:
            y = self._stochastic_test(x, geo)
        top[0].data[...] = y

    def _stochastic_train(self, x, geo):
        win = _windows(x, geo)
        running = np.cumsum(win, axis=-1)       # sequential, as the GPU kernel accumulates
        u = (1.0 - self.rng.random(running.shape[:-1])).astype(x.dtype)   # (0, 1]
        threshold = u * running[..., -1]
        k = np.argmax(running >= threshold[..., None], axis=-1)[..., None]
        y = np.take_along_axis(win, k, axis=-1)[..., 0]
        k1 = (k[..., 0] + 1).astype(geo.offset_dtype())
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
        if self.pool == AVE:
            dx = ave_pool_backward(dy, geo)
        elif self._k1 is not None:
            if geo.whole_plane and self.pool == MAX:
                dx = np.zeros(bottom[0].shape, dy.dtype)
                flat = dx.reshape(dx.shape[:2] + (-1,))
                k1 = self._k1.reshape(flat.shape[:2] + (1,)).astype(np.int64)
                np.put_along_axis(flat, np.maximum(k1 - 1, 0), np.where(k1 > 0, dy.reshape(k1.shape), 0),
                                  axis=-1)
            else:
                dx = route_backward(dy, self._k1, geo)
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
