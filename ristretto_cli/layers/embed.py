"""Embed: a lookup table (one-hot InnerProduct) from integer indices to learned vectors."""

from __future__ import annotations

import numpy as np

from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register


@register("Embed")
class EmbedLayer(Layer):
    """``y[..., :] = W[int(x[...])] (+ b)`` with W of shape [input_dim, num_output]."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        p = self.param.embed_param
        if p.num_output <= 0:
            raise self.error("embed_param.num_output must be positive")
        if p.input_dim <= 0:
            raise self.error("embed_param.input_dim must be positive")
        shapes = [(p.input_dim, p.num_output)] + ([(p.num_output,)] if p.bias_term else [])
        if not self.check_param_shapes(shapes):
            self.add_param_blob(shapes[0], p.weight_filler)
            if p.bias_term:
                self.add_param_blob(shapes[1], p.bias_filler)

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape + (self.param.embed_param.num_output,))

    def _indices(self, x: np.ndarray) -> np.ndarray:
        # C's static_cast<int>: truncation toward zero. Caffe does not check the range in
        # release builds (out-of-range reads are undefined); we refuse them.
        k = self.param.embed_param.input_dim
        with np.errstate(invalid="ignore"):
            bad = ~((x > -1) & (x < k))  # also catches NaN
        if bad.any():
            v = x[bad].flat[0]
            raise self.error(f"Embed input {v:g} is not an index in [0, {k})")
        return x.astype(np.int64)

    def forward_cpu(self, bottom, top):
        idx = self._indices(bottom[0].data)
        y = self.blobs[0].data[idx]
        if self.param.embed_param.bias_term:
            y += self.blobs[1].data
        top[0].data = y

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            raise self.error("cannot backpropagate to the Embed layer's input (indices)")
        n = self.param.embed_param.num_output
        dy = top[0].diff.reshape(-1, n)
        if self.param_propagate_down[0]:
            idx = self._indices(bottom[0].data).ravel()
            np.add.at(self.blobs[0].diff, idx, dy)  # unbuffered: repeated indices accumulate
        if self.param.embed_param.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
