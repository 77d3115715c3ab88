"""Blob-manipulation layers that move or alias values without arithmetic."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import canonical_axis, count
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register


@register("Split")
class SplitLayer(Layer):
    """Every top aliases the bottom's values (no copy); backward sums the top gradients."""
    exact_bottoms = 1
    min_tops = 1
    inplace_allowed = False

    def reshape(self, bottom, top):
        for t in top:
            t.data = bottom[0].data

    def forward_cpu(self, bottom, top):
        for t in top:
            t.data = bottom[0].data

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(top) == 1:
            bottom[0].diff = top[0].diff.copy()
            return
        acc = np.add(top[0].diff, top[1].diff)
        for t in top[2:]:
            acc += t.diff
        bottom[0].diff = acc


@register("Flatten")
class FlattenLayer(Layer):
    """Collapses axes [axis, end_axis] into one; the top is a view of the bottom."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def reshape(self, bottom, top):
        p = self.param.flatten_param
        shape = bottom[0].shape
        start = canonical_axis(p.axis, len(shape), "flatten axis")
        end = canonical_axis(p.end_axis, len(shape), "flatten end_axis")
        new_shape = shape[:start] + (count(shape, start, end + 1),) + shape[end + 1:]
        top[0].data = bottom[0].data.reshape(new_shape)

    def forward_cpu(self, bottom, top):
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


@register("Reshape")
class ReshapeLayer(Layer):
    """Reinterprets the bottom with a new shape (0 copies a dimension, one -1 is inferred)."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        dims = [int(d) for d in self.param.reshape_param.shape.dim]
        if dims.count(-1) > 1:
            raise self.error("reshape_param.shape may contain at most one -1 (inferred) dimension")
        for d in dims:
            if d < -1:
                raise self.error(f"invalid dimension {d} in reshape_param.shape")
        self._dims = dims

    def _top_shape(self, in_shape):
        p = self.param.reshape_param
        n = len(in_shape)
        start = p.axis
        if start < 0:
            start = n + start + 1
        if not 0 <= start <= n:
            raise self.error(f"reshape axis {p.axis} out of range for a {n}-D bottom")
        if p.num_axes < -1:
            raise self.error("reshape_param.num_axes must be >= -1")
        end = n if p.num_axes == -1 else start + p.num_axes
        if end > n:
            raise self.error(f"reshape axis {p.axis} + num_axes {p.num_axes} exceed the bottom's {n} axes")
        dims = []
        for i, d in enumerate(self._dims):
            if d == 0:
                if start + i >= n:
                    raise self.error(f"reshape dimension {i} copies bottom axis {start + i}, which does not exist")
                dims.append(in_shape[start + i])
            else:
                dims.append(d)
        shape = list(in_shape[:start]) + dims + list(in_shape[end:])
        total = count(in_shape)
        if -1 in shape:
            known = count([d for d in shape if d != -1])
            if known == 0 or total % known:
                raise self.error(f"cannot infer the -1 dimension: {total} elements into {shape}")
            shape[shape.index(-1)] = total // known
        if count(shape) != total:
            raise self.error(f"reshape changes the element count: bottom {tuple(in_shape)} "
                             f"({total}) vs top {tuple(shape)} ({count(shape)})")
        return tuple(shape)

    def reshape(self, bottom, top):
        top[0].data = bottom[0].data.reshape(self._top_shape(bottom[0].shape))

    def forward_cpu(self, bottom, top):
        top[0].data = bottom[0].data.reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff = top[0].diff.reshape(bottom[0].shape)


@register("Silence")
class SilenceLayer(Layer):
    """Consumes blobs so they are not net outputs; gradient zero."""
    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff = np.zeros_like(b.data)
