"""Layers that pick items (along the first axis) out of their bottoms: BatchReindex gathers
them by index, Filter keeps those a selector marks. The index or selector bottom gets no
gradient: asking for one (``propagate_down``, or a net's ``force_backward``) is an error, as
in Caffe."""

from __future__ import annotations

import numpy as np

from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register


@register("BatchReindex")
class BatchReindexLayer(Layer):
    """``top = data[indices]``: bottom 1 holds item indices into bottom 0's first axis (read as
    floats, truncated to integers), in any order and with repeats; backward adds each top
    item's gradient into the item it came from. Not in place: Caffe's loop would read items it
    already overwrote."""
    exact_bottoms = 2
    exact_tops = 1
    inplace_allowed = False

    def reshape(self, bottom, top):
        data, indices = bottom
        if indices.num_axes != 1:
            raise self.error(f"the index blob (bottom 1) must have 1 axis, got shape {indices.shape}")
        if data.num_axes == 0:
            raise self.error("the data blob (bottom 0) needs a first axis to index")
        top[0].reshape(indices.shape + data.shape[1:])

    def _indices(self, bottom) -> np.ndarray:
        """Bottom 1 as integer item indices, checked against bottom 0's first axis."""
        values, num = bottom[1].data, bottom[0].shape[0]
        if not np.all(values >= 0):        # NaN fails too, as Caffe's comparison does
            raise self.error("index specified for reindex layer was negative")
        if not np.all(values < num):
            raise self.error(f"index specified for reindex layer was greater than batch size ({num})")
        return values.astype(np.intp)

    def forward_cpu(self, bottom, top):
        top[0].data = bottom[0].data[self._indices(bottom)]

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the index blob (bottom 1)")
        if not propagate_down[0]:
            return
        dx = np.zeros(bottom[0].shape, top[0].diff.dtype)
        # Unbuffered, in top order: a repeated item sums its gradients as Caffe's loop does.
        np.add.at(dx, self._indices(bottom), top[0].diff)
        bottom[0].diff = dx


@register("Filter")
class FilterLayer(Layer):
    """Bottoms: K blobs and a selector last; top k = the items of bottom k whose selector value
    is non-zero, in order. The tops' first axis therefore changes with the selector's values at
    every forward; at set-up, before any values are known, it is the full item count.
    Backward copies each top item's gradient back to its item and zeroes the others."""
    min_bottoms = 2
    min_tops = 1

    def layer_setup(self, bottom, top):
        if len(top) != len(bottom) - 1:
            raise self.error(f"Filter layer needs one top per filtered bottom (all bottoms but "
                             f"the selector): {len(bottom) - 1}, got {len(top)}")
        self._first_reshape = True

    def reshape(self, bottom, top):
        selector = bottom[-1]
        if selector.num_axes == 0 or any(d != 1 for d in selector.shape[1:]):
            raise self.error(f"selector blob dimensions must be singletons (1), except the first; "
                             f"got shape {selector.shape}")
        num = selector.shape[0]
        for i, b in enumerate(bottom[:-1]):
            if b.num_axes == 0 or b.shape[0] != num:
                raise self.error(f"each bottom should have the same 0th dimension as the selector "
                                 f"blob ({num}): bottom {i} has shape {b.shape}")
        self._kept = np.flatnonzero(selector.data.reshape(num) != 0)   # NaN counts as non-zero
        kept = num if self._first_reshape else len(self._kept)
        self._first_reshape = False
        for b, t in zip(bottom, top):
            if t is not b:      # in place, forward replaces the values and the shape at once
                t.reshape((kept,) + b.shape[1:])

    def forward_cpu(self, bottom, top):
        for b, t in zip(bottom, top):
            t.data = b.data[self._kept]

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[-1]:
            raise self.error("cannot backpropagate to the selector blob (the last bottom)")
        for b, t, down in zip(bottom, top, propagate_down):
            if not down:
                continue
            if t is b:
                raise self.error("Filter layer computed in place has no backward: its bottom "
                                 "items are gone")
            dx = np.zeros(b.shape, t.diff.dtype)
            dx[self._kept] = t.diff
            b.diff = dx
