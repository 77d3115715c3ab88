"""Local response normalisation (Caffe's LRN), both regions, forward and backward.

ACROSS_CHANNELS reproduces Caffe's float arithmetic: the window sum over channels is a
running value (the first channel's window added term by term onto ``k``, then per channel
"add the head, subtract the tail"), which rounds differently from a direct sum. The running
update is inherently sequential over channels, so it is a loop of ``C`` steps, each one
whole-array operation over ``(N, H, W)``.

WITHIN_CHANNEL follows Caffe's internal pipeline (square, AVE pooling with pad ``n // 2``,
power ``(1 + alpha * s) ^ -beta``, product) step by step; ``k`` is ignored there, as in Caffe.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.pooling import PoolGeometry, ave_pool_backward, ave_pool_forward
from ristretto_cli.layers.registry import register
from ristretto_cli.proto import caffe_pb2

ACROSS_CHANNELS = caffe_pb2.LRNParameter.ACROSS_CHANNELS
WITHIN_CHANNEL = caffe_pb2.LRNParameter.WITHIN_CHANNEL


def running_channel_sum(terms: np.ndarray, size: int, start, *, head_first: bool = True,
                        trim=None) -> np.ndarray:
    """For every channel c of ``terms`` ``(N, C, H, W)``: ``start + Σ terms[c-pre .. c+pre]``
    accumulated as Caffe does: channel 0 is ``start`` plus terms 0..pre one at a time, then
    each channel adds its head ``terms[c+pre]`` and subtracts the tail ``terms[c-pre-1]``
    (Caffe's forward adds first, its backward subtracts first: ``head_first``). Out-of-range
    terms are skipped, which is exact since Caffe adds zeros there. ``trim`` (optional) is
    applied to the running value after every addition and subtraction (quantized variants)."""
    c_count = terms.shape[1]
    pre = (size - 1) // 2
    out = np.empty_like(terms)
    acc = np.empty(terms.shape[:1] + terms.shape[2:], terms.dtype)
    acc[...] = start
    for c in range(min(pre + 1, c_count)):
        acc += terms[:, c]
        if trim is not None:
            acc = trim(acc)
    out[:, 0] = acc
    for c in range(1, c_count):
        for add in ((True, False) if head_first else (False, True)):
            if add and c + pre < c_count:
                acc += terms[:, c + pre]
            elif not add and c - pre - 1 >= 0:
                acc -= terms[:, c - pre - 1]
            else:
                continue
            if trim is not None:
                acc = trim(acc)
        out[:, c] = acc
    return out


def powf(a: np.ndarray, exponent) -> np.ndarray:
    """``a ** exponent`` as Caffe's C ``powf`` gives it: computed in double and rounded once
    to float32 (NumPy's own float32 power differs from it in the last bit now and then)."""
    if a.dtype == np.float32:
        return np.power(a, np.float64(exponent), dtype=np.float64).astype(np.float32)
    return np.power(a, a.dtype.type(exponent))


@register("LRN")
class LRNLayer(Layer):
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 != 1 or self.size > 0x7FFFFFFF:   # Caffe's int: negative above
            raise self.error("LRN only supports odd values for local_size")
        if p.norm_region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise self.error("unknown normalization region")
        self.pre_pad = (self.size - 1) // 2
        self.alpha, self.beta, self.k = p.alpha, p.beta, p.k
        self.norm_region = p.norm_region

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error("input must have 4 axes, corresponding to (num, channels, height, "
                             f"width); got {len(shape)}")
        top[0].reshape(shape)
        if self.norm_region == WITHIN_CHANNEL:
            size = (int(shape[2]), int(shape[3]))
            self.pool_geometry = PoolGeometry(size, size, (self.size,) * 2, (1, 1), (self.pre_pad,) * 2)

    def forward_cpu(self, bottom, top):
        if self.norm_region == ACROSS_CHANNELS:
            top[0].data[...] = self._across_forward(bottom[0].data)
        else:
            top[0].data[...] = self._within_forward(bottom[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        if self.norm_region == ACROSS_CHANNELS:
            bottom[0].diff[...] = self._across_backward(x, y, dy, self.scale, self.scale_power)
        else:
            bottom[0].diff[...] = self._within_backward(x, dy)

    # ----------------------------------------------------------------- across channels
    def _across_forward(self, x):
        t = x.dtype.type
        alpha_over_size = t(self.alpha) / t(self.size)
        self.scale = running_channel_sum(alpha_over_size * (x * x), self.size, t(self.k))
        self.scale_power = powf(self.scale, t(-self.beta))   # kept: pow is the costly part
        return self.scale_power * x

    def _across_backward(self, x, y, dy, scale, scale_power=None):
        t = x.dtype.type
        # 2·alpha·beta/n computed in double, then used in the data's type (as Caffe does).
        cache_ratio = t(2.0 * float(self.alpha) * float(self.beta) / self.size)
        if scale_power is None:
            scale_power = powf(scale, t(-self.beta))
        dx = dy * scale_power
        ratio = (dy * y) / scale
        # Caffe's accum_ratio window runs from channel c-pre to c+pre: a running sum of the
        # ratios starting at 0, read after the head of channel c was added.
        accum = running_channel_sum(ratio, self.size, t(0), head_first=False)
        dx -= cache_ratio * (x * accum)
        return dx

    # ----------------------------------------------------------------- within channel
    def _within_forward(self, x):
        t = x.dtype.type
        alpha, power = t(self.alpha), t(-self.beta)
        s = ave_pool_forward(x * x, self.pool_geometry)
        self.pooled = s
        if alpha * power == 0:          # Caffe's Power layer ignores its input: 1^power
            self.power_out = np.ones_like(x)
        else:
            base = alpha * s + t(1)
            self.power_out = base if power == 1 else powf(base, power)
        return x * self.power_out

    def _within_backward(self, x, dy):
        t = x.dtype.type
        alpha, power = t(self.alpha), t(-self.beta)
        diff_scale = power * alpha
        d_power_out = dy * x                  # product layer, gradient to the power output
        if diff_scale == 0 or power == 1:
            d_pooled = np.full_like(x, diff_scale)
        elif power == 2:
            d_pooled = diff_scale * alpha * self.pooled + diff_scale
        else:
            d_pooled = self.power_out / (alpha * self.pooled + t(1)) * diff_scale
        if diff_scale != 0:
            d_pooled = d_power_out * d_pooled
        d_square = ave_pool_backward(d_pooled, self.pool_geometry)
        # Split layer: product-input gradient plus square-input gradient (d_square · 2x).
        return dy * self.power_out + d_square * (t(2) * x)
