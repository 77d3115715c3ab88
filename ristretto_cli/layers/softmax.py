"""Softmax over one axis, and the helpers the softmax-based loss layers share with it."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import canonical_axis, count
from ristretto_cli.errors import RistrettoError
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register


def exact_exp(x: np.ndarray) -> np.ndarray:
    """``exp`` correctly rounded to ``x``'s dtype (as C's expf), new array."""
    if x.dtype == np.float64:
        return np.exp(x)
    return np.exp(x, dtype=np.float64).astype(x.dtype)


def exact_log(x: np.ndarray) -> np.ndarray:
    """``log`` correctly rounded to ``x``'s dtype (as C's logf), new array."""
    if x.dtype == np.float64:
        return np.log(x)
    return np.log(x, dtype=np.float64).astype(x.dtype)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of an (outer, C, inner) array, in its dtype, as Caffe computes it:
    subtract the channel max, exponentiate, divide by the channel sum."""
    e = exact_exp(x - x.max(axis=1, keepdims=True))
    return np.divide(e, e.sum(axis=1, keepdims=True), out=e)


def split_axis(layer: Layer, shape, axis: int, what: str) -> tuple[int, int, int, int]:
    """(axis, outer, C, inner) for ``shape`` split at the (possibly negative) ``axis``."""
    try:
        axis = canonical_axis(axis, len(shape), what)
    except RistrettoError as exc:
        raise exc.located(layer=layer.name) from None
    return axis, count(shape, 0, axis), int(shape[axis]), count(shape, axis + 1)


@register("Softmax")
class SoftmaxLayer(Layer):
    """y = exp(x - max) / sum(exp(x - max)) over ``softmax_param.axis``."""
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        _, self._outer, self._channels, self._inner = split_axis(
            self, shape, self.param.softmax_param.axis, "softmax axis")
        top[0].reshape(shape)

    def _view(self, a: np.ndarray) -> np.ndarray:
        return a.reshape(self._outer, self._channels, self._inner)

    def forward_cpu(self, bottom, top):
        y = softmax(self._view(bottom[0].data))
        if top[0] is bottom[0]:
            bottom[0].data[...] = y.reshape(bottom[0].shape)  # in place: aliases must see it
        else:
            top[0].data = y.reshape(bottom[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y = self._view(top[0].data)
        dy = self._view(top[0].diff)
        dx = (dy - np.sum(dy * y, axis=1, keepdims=True)) * y
        bottom[0].diff = dx.reshape(bottom[0].shape)
