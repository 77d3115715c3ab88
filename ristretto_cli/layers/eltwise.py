"""Element-wise combination of blobs (Eltwise) and tail reduction to a lower rank (Reduction)."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import count
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.manipulation import layer_axis, write_top
from ristretto_cli.layers.neuron import each_block
from ristretto_cli.layers.registry import register
from ristretto_cli.proto import caffe_pb2

_ELT = caffe_pb2.EltwiseParameter
_RED = caffe_pb2.ReductionParameter
_FLT_MAX = float(np.finfo(np.float32).max)


def _add_all(out: np.ndarray, *xs: np.ndarray) -> None:
    np.add(xs[0], xs[1], out=out)
    for x in xs[2:]:
        out += x


@register("Eltwise")
class EltwiseLayer(Layer):
    """PROD, SUM (with coefficients) or MAX of equally shaped bottoms."""
    min_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.eltwise_param
        if len(p.coeff) and len(p.coeff) != len(bottom):
            raise self.error(f"Eltwise layer takes one coefficient per bottom blob ({len(bottom)}), "
                             f"got {len(p.coeff)}")
        if p.operation == _ELT.PROD and len(p.coeff):
            raise self.error("Eltwise layer only takes coefficients for summation")
        if p.operation not in (_ELT.PROD, _ELT.SUM, _ELT.MAX):
            raise self.error(f"unknown Eltwise operation {p.operation}")
        self._coeffs = list(p.coeff) if len(p.coeff) else [1.0] * len(bottom)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != shape:
                raise self.error(f"Eltwise bottoms must have the same shape: bottom 0 is {shape}, "
                                 f"bottom {i} is {b.shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(shape)

    def forward_cpu(self, bottom, top):
        op = self.param.eltwise_param.operation
        xs = [b.data for b in bottom]
        dt = xs[0].dtype
        if op == _ELT.PROD:
            y = xs[0] * xs[1]
            for x in xs[2:]:
                y *= x
        elif op == _ELT.SUM and top[0] is not bottom[0] and all(c == 1 for c in self._coeffs):
            # Plain sums (residual nets): x0 + x1 + ... block by block on the threads, the same
            # additions in the same order as below.
            y = np.empty_like(xs[0], order="C")
            if not each_block([y] + xs, _add_all):      # layouts without blocks: all at once
                _add_all(y, *xs)
        elif op == _ELT.SUM:
            if top[0] is bottom[0]:
                # Caffe clears the top before adding the bottoms: in place, bottom 0 counts as 0.
                xs[0] = np.zeros_like(xs[0])
            y = dt.type(self._coeffs[0]) * xs[0]
            for c, x in zip(self._coeffs[1:], xs[1:]):
                y += dt.type(c) * x
        else:
            if top[0] is bottom[0]:
                # Caffe fills the top with -FLT_MAX before comparing: in place, that is bottom 0.
                xs[0] = np.full_like(xs[0], -_FLT_MAX)
            # `a > b ? a : b`: a tie between the first two goes to bottom 1, later bottoms
            # must be strictly greater to win.
            first = xs[0] > xs[1]
            y = np.where(first, xs[0], xs[1])
            idx = np.where(first, 0, 1).astype(np.int32)
            for i, x in enumerate(xs[2:], 2):
                greater = x > y
                y = np.where(greater, x, y)
                idx[greater] = i
            self._max_idx = idx
        write_top(bottom[0], top[0], y)

    def backward_cpu(self, top, propagate_down, bottom):
        p = self.param.eltwise_param
        for i, b in enumerate(bottom):
            if not propagate_down[i]:
                continue
            # Read the top afresh for every bottom: in place, bottom 0's diff *is* the top diff,
            # and Caffe sees it overwritten for the later bottoms too.
            dy = top[0].diff
            dt = dy.dtype
            if p.operation == _ELT.PROD:
                if p.stable_prod_grad:
                    others = [bj.data for j, bj in enumerate(bottom) if j != i]
                    g = others[0].copy()
                    for x in others[1:]:
                        g *= x
                else:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        g = top[0].data / b.data
                b.diff = g * dy
            elif p.operation == _ELT.SUM:
                c = self._coeffs[i]
                b.diff = dy.copy() if c == 1 else dt.type(c) * dy
            else:
                b.diff = np.where(self._max_idx == i, dy, dt.type(0))


@register("Reduction")
class ReductionLayer(Layer):
    """SUM, ASUM, SUMSQ or MEAN over all axes from ``axis`` on, times ``coeff``."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        op = self.param.reduction_param.operation
        if op not in (_RED.SUM, _RED.ASUM, _RED.SUMSQ, _RED.MEAN):
            raise self.error(f"unknown Reduction operation {op}")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = layer_axis(self, self.param.reduction_param.axis, len(shape), "reduction axis")
        self._num = count(shape, 0, axis)
        self._dim = count(shape, axis)
        top[0].reshape(shape[:axis])

    def _coeff(self, dt):
        p = self.param.reduction_param
        coeff = dt.type(p.coeff)
        if p.operation == _RED.MEAN:
            coeff = coeff / dt.type(self._dim)  # Caffe folds 1/dim into the coefficient
        return coeff

    def forward_cpu(self, bottom, top):
        op = self.param.reduction_param.operation
        x = bottom[0].data.reshape(self._num, self._dim)
        if op == _RED.ASUM:
            y = np.abs(x).sum(axis=1)
        elif op == _RED.SUMSQ:
            y = np.einsum("ij,ij->i", x, x)
        else:
            y = x.sum(axis=1)
        coeff = self._coeff(x.dtype)
        if coeff != 1:
            y = y * coeff
        top[0].data = y.reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        op = self.param.reduction_param.operation
        x = bottom[0].data.reshape(self._num, self._dim)
        dy = top[0].diff.reshape(self._num, 1)
        g = dy * self._coeff(dy.dtype)
        if op == _RED.ASUM:
            sign = (x > 0).astype(dy.dtype) - (x < 0).astype(dy.dtype)  # sign(0) = 0
            dx = sign * g
        elif op == _RED.SUMSQ:
            dx = (2 * g) * x
        else:
            dx = np.broadcast_to(g, (self._num, self._dim)).copy()
        bottom[0].diff = dx.reshape(bottom[0].shape)
