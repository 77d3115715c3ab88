"""Blob-manipulation layers that move or alias values without arithmetic."""

from __future__ import annotations

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.blob import Blob, count
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.neuron import each_block, gate_gradient, gate_in_blocks
from ristretto_cli.layers.registry import register


def layer_axis(layer: Layer, axis: int, num_axes: int, what: str = "axis") -> int:
    """Caffe's CanonicalAxisIndex, with the error naming the layer (reshape runs outside setup)."""
    if not -num_axes <= axis < num_axes:
        raise layer.error(f"{what} {axis} out of range for a {num_axes}-D bottom")
    return axis + num_axes if axis < 0 else axis


def write_top(bottom: Blob, top: Blob, value: np.ndarray) -> None:
    """Store a computed result: in place it goes *into* the bottom's array, which other blobs
    (Split tops, Flatten views) may alias; otherwise the top takes the new array."""
    if top is bottom:
        bottom.data[...] = value
    else:
        top.data = value


@register("Split")
class SplitLayer(Layer):
    """Every top aliases the bottom's values (no copy); backward sums the top gradients."""
    exact_bottoms = 1
    min_tops = 1
    inplace_allowed = False
    gates_relu = True

    def layer_setup(self, bottom, top):
        # Caffe forbids any top being the bottom, not only top 0.
        if any(t is bottom[0] for t in top):
            raise self.error("Split layer does not allow in-place computation")

    def reshape(self, bottom, top):
        for t in top:
            t.data = bottom[0].data

    def forward_cpu(self, bottom, top):
        for t in top:
            t.data = bottom[0].data

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if self.gates(0):
            # Through the ReLU that made the bottom, block by block while the sum is in cache
            acc = np.empty_like(top[0].diff)
            if each_block([bottom[0].data, acc] + [t.diff for t in top], _gated_sum):
                bottom[0].diff = acc
                self.gated_bottoms = True
                return
        if len(top) == 1:
            bottom[0].diff = top[0].diff.copy()
            return
        acc = np.add(top[0].diff, top[1].diff)
        for t in top[2:]:
            acc += t.diff
        bottom[0].diff = acc


def _gated_sum(y: np.ndarray, out: np.ndarray, *dys: np.ndarray) -> None:
    """``out`` = the sum of ``dys`` in order, through a ReLU whose output is ``y``."""
    if len(dys) == 1:
        gate_gradient(y, dys[0], out)
        return
    np.add(dys[0], dys[1], out=out)
    for d in dys[2:]:
        out += d
    gate_gradient(y, out, out)


@register("Flatten")
class FlattenLayer(Layer):
    """Collapses axes [axis, end_axis] into one; the top is a view of the bottom."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def reshape(self, bottom, top):
        p = self.param.flatten_param
        shape = bottom[0].shape
        start = layer_axis(self, p.axis, len(shape), "flatten axis")
        end = layer_axis(self, p.end_axis, len(shape), "flatten end_axis")
        # end_axis == axis - 1 is allowed (Caffe's count(axis, axis) = 1 inserts a unit axis).
        if end < start - 1:
            raise self.error(f"flatten end_axis {p.end_axis} comes before axis {p.axis}")
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
                    raise self.error(f"reshape dimension {i} copies bottom axis {start + i}, "
                                     "which does not exist")
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


def _legacy_or_axis(layer: Layer, param, legacy: str, ndim: int) -> int:
    """The axis of Concat/Slice: ``axis`` or the legacy unsigned ``concat_dim``/``slice_dim``."""
    if param.HasField(legacy):
        dim = getattr(param, legacy)
        # The legacy field is unsigned: it never counts from the end.
        if dim >= ndim:
            raise layer.error(f"{legacy} {dim} out of range for a {ndim}-D bottom")
        return dim
    return layer_axis(layer, param.axis, ndim, f"{layer.type.lower()} axis")


def _is_view(a: np.ndarray, view: np.ndarray) -> bool:
    """Whether ``a`` is exactly the array ``view`` (same memory, shape and strides)."""
    return (a.__array_interface__["data"][0] == view.__array_interface__["data"][0]
            and a.shape == view.shape and a.strides == view.strides and a.dtype == view.dtype)


def _min_rows(a: np.ndarray) -> int:
    """Rows (items of the first axis) worth a thread of their own: about 1 MB of ``a``."""
    return max(1, (1 << 20) // max(1, a.nbytes // max(1, a.shape[0])))


@register("Concat")
class ConcatLayer(Layer):
    """Joins the bottoms along one axis; with a single bottom the top aliases it."""
    min_bottoms = 1
    exact_tops = 1
    gates_relu = True

    def layer_setup(self, bottom, top):
        p = self.param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.error("either axis or concat_dim should be specified; not both")
        if len(bottom) > 1 and top[0] is bottom[0]:
            raise self.error("Concat layer with several bottoms cannot run in place")
        self._diffs: dict[int, np.ndarray] = {}   # per bottom, the gradient array made for it

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = _legacy_or_axis(self, self.param.concat_param, "concat_dim", len(shape))
        top_shape = list(shape)
        for i, b in enumerate(bottom[1:], 1):
            if b.num_axes != len(shape):
                raise self.error(f"all Concat inputs must have the same number of axes: bottom 0 "
                                 f"has {len(shape)}, bottom {i} has {b.num_axes}")
            if any(b.shape[j] != shape[j] for j in range(len(shape)) if j != axis):
                raise self.error(f"all Concat inputs must have the same shape except at axis {axis}: "
                                 f"bottom 0 is {shape}, bottom {i} is {b.shape}")
            top_shape[axis] += b.shape[axis]
        self._axis = axis
        if len(bottom) == 1:
            top[0].data = bottom[0].data  # Caffe shares the memory instead of copying
        else:
            top[0].reshape(top_shape)

    def forward_cpu(self, bottom, top):
        if len(bottom) == 1:
            top[0].data = bottom[0].data
            return
        y, axis = top[0].data, self._axis
        if not (y.flags.writeable and y.flags.c_contiguous):
            top[0].data = np.concatenate([b.data for b in bottom], axis=axis)
            return
        slots, aliases = self._slots(bottom, y), self._aliases(bottom)
        # A bottom that is already its slot of the top (see alias_bottoms) holds its values.
        held = [alias and _is_view(b.data, slot) for b, slot, alias in zip(bottom, slots, aliases)]
        todo = [(b.data, slot) for b, slot, h in zip(bottom, slots, held) if not h]
        if axis == 0 or len(todo) < len(bottom):
            def copy(i0: int, i1: int) -> None:
                for x, slot in todo:
                    np.copyto(slot[i0:i1], x[i0:i1])
        else:
            xs = [b.data for b in bottom]

            def copy(i0: int, i1: int) -> None:
                np.concatenate([x[i0:i1] for x in xs], axis=axis, out=y[i0:i1])
        if todo and axis == 0:
            copy(0, y.shape[0])
        elif todo:
            # Items before the axis are independent: shared among the threads.
            parallel.for_ranges(y.shape[0], copy, min_items=_min_rows(y))
        for b, slot, alias, h in zip(bottom, slots, aliases, held):
            if alias and not h:
                b.data = slot       # its producer writes there from the next pass on

    #: Per bottom, whether it may become a view of its slot of the top (set by the Net where
    #: only layers that write their tops in place write it, all before this one, and nothing
    #: after this one writes it or the top; see ``Layer.writes_top_in_place``).
    alias_bottoms: tuple[bool, ...] = ()

    def _aliases(self, bottom) -> tuple[bool, ...]:
        return self.alias_bottoms if len(self.alias_bottoms) == len(bottom) else (False,) * len(bottom)

    def _slots(self, bottom, y: np.ndarray) -> list[np.ndarray]:
        """Each bottom's part of the top ``y``, as a view."""
        lead, start, slots = (slice(None),) * self._axis, 0, []
        for b in bottom:
            end = start + b.shape[self._axis]
            slots.append(y[lead + (slice(start, end),)])
            start = end
        return slots

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].diff
        if len(bottom) == 1:
            if propagate_down[0]:
                bottom[0].diff = dy
            return
        self.gated_bottoms = True
        axis = self._axis
        stops = np.cumsum([b.shape[axis] for b in bottom])[:-1]
        pieces = np.split(dy, stops, axis=axis)
        targets = []
        mine = self._diffs
        for i, (b, down, piece) in enumerate(zip(bottom, propagate_down, pieces)):
            if down:
                # A gradient array of its own, never an alias of another blob's: the one made
                # here last time while the bottom still holds it (fresh memory costs page
                # faults on every pass), else a new one.
                dx = mine.get(i)
                if dx is None or not b.has_diff or b.diff is not dx or dx.dtype != piece.dtype:
                    dx = b.diff = np.empty(piece.shape, piece.dtype)
                mine[i] = dx
                targets.append((piece, dx, b.data if self.gates(i) else None))
        if not targets:
            return
        if axis == 0:
            for piece, dx, gate in targets:
                if gate is None:
                    np.copyto(dx, piece)
                else:
                    gate_in_blocks(gate, piece, dx)
            return

        def copy(i0: int, i1: int) -> None:
            for piece, dx, gate in targets:
                if gate is None:
                    np.copyto(dx[i0:i1], piece[i0:i1])
                else:       # through the ReLU that made this bottom, while in cache
                    gate_gradient(gate[i0:i1], piece[i0:i1], dx[i0:i1])
        parallel.for_ranges(dy.shape[0], copy, min_items=_min_rows(dy))


@register("Slice")
class SliceLayer(Layer):
    """Cuts the bottom along one axis at slice_point (or into equal parts); one top aliases it."""
    exact_bottoms = 1
    min_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.error("either axis or slice_dim should be specified; not both")
        if len(top) > 1 and top[0] is bottom[0]:
            raise self.error("Slice layer with several tops cannot run in place")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis = _legacy_or_axis(self, self.param.slice_param, "slice_dim", len(shape))
        size = shape[axis]
        points = [int(v) for v in self.param.slice_param.slice_point]
        if points:
            if len(points) != len(top) - 1:
                raise self.error(f"slice_point must be given once less than the number of tops "
                                 f"({len(top)}), got {len(points)} values")
            if len(top) > size:
                raise self.error(f"cannot slice axis {axis} of size {size} into {len(top)} tops")
            sizes, prev = [], 0
            for pt in points:
                if pt <= prev:
                    raise self.error(f"slice points must be positive and strictly increasing: {points}")
                sizes.append(pt - prev)
                prev = pt
            if prev > size:
                raise self.error(f"slice point {prev} is beyond axis {axis} of size {size}")
            sizes.append(size - prev)
        else:
            if size % len(top):
                raise self.error(f"the number of tops ({len(top)}) does not evenly divide axis "
                                 f"{axis} of size {size}")
            sizes = [size // len(top)] * len(top)
        self._axis = axis
        self._stops = np.cumsum(sizes)[:-1]
        if len(top) == 1:
            top[0].data = bottom[0].data
            return
        for t, n in zip(top, sizes):
            t.reshape(shape[:axis] + (n,) + shape[axis + 1:])

    def forward_cpu(self, bottom, top):
        if len(top) == 1:
            top[0].data = bottom[0].data
            return
        for t, piece in zip(top, np.split(bottom[0].data, self._stops, axis=self._axis)):
            t.data = piece.copy()  # a copy: later in-place layers must not touch the bottom

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(top) == 1:
            bottom[0].diff = top[0].diff
            return
        bottom[0].diff = np.concatenate([t.diff for t in top], axis=self._axis)


@register("Tile")
class TileLayer(Layer):
    """Repeats the block from ``axis`` on ``tiles`` times per outer index (np.tile along axis)."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def reshape(self, bottom, top):
        p = self.param.tile_param
        shape = bottom[0].shape
        self._axis = layer_axis(self, p.axis, len(shape), "tile axis")
        if not p.HasField("tiles"):
            raise self.error("tile_param.tiles must be specified")
        if p.tiles <= 0:
            raise self.error(f"tile_param.tiles must be positive, got {p.tiles}")
        self._outer = count(shape, 0, self._axis)
        self._inner = count(shape, self._axis)
        top_shape = list(shape)
        top_shape[self._axis] *= p.tiles
        top[0].reshape(top_shape)

    def forward_cpu(self, bottom, top):
        tiles = self.param.tile_param.tiles
        x = bottom[0].data.reshape(self._outer, 1, self._inner)
        top[0].data = np.broadcast_to(x, (self._outer, tiles, self._inner)).reshape(top[0].shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dy = top[0].diff.reshape(self._outer, self.param.tile_param.tiles, self._inner)
            bottom[0].diff = dy.sum(axis=1).reshape(bottom[0].shape)


@register("Crop")
class CropLayer(Layer):
    """Crops bottom 0 to bottom 1's size on every axis from ``axis`` on, at the given offsets."""
    exact_bottoms = 2
    exact_tops = 1
    inplace_allowed = False

    def reshape(self, bottom, top):
        p = self.param.crop_param
        shape, ref = bottom[0].shape, bottom[1].shape
        start = layer_axis(self, p.axis, len(shape), "crop axis")
        # Caffe checks this in LayerSetUp only; here too, for a bottom that gains axes later.
        if len(p.offset) > 1 and start + len(p.offset) != len(shape):
            raise self.error(f"crop_param.offset must have one value or one per axis from axis "
                             f"{start} ({len(shape) - start}), got {len(p.offset)}")
        if len(ref) < len(shape):
            raise self.error(f"the crop reference (bottom 1, shape {ref}) has fewer axes than the "
                             f"cropped blob (bottom 0, shape {shape})")
        slices, top_shape = [], []
        for i, n in enumerate(shape):
            offset, size = 0, n
            if i >= start:
                size = ref[i]
                if len(p.offset) == 1:
                    offset = p.offset[0]
                elif len(p.offset) > 1:
                    offset = p.offset[i - start]
                if n - offset < size:
                    raise self.error(f"the crop for axis {i} is out of bounds: size {size} at "
                                     f"offset {offset} in a dimension of {n}")
            slices.append(slice(offset, offset + size))
            top_shape.append(size)
        self._slices = tuple(slices)
        top[0].reshape(top_shape)

    def forward_cpu(self, bottom, top):
        top[0].data = bottom[0].data[self._slices].copy()

    def backward_cpu(self, top, propagate_down, bottom):
        # Like Caffe, bottom 1 (the size reference) gets no gradient.
        if propagate_down[0]:
            dy = top[0].diff
            dx = np.zeros(bottom[0].shape, dy.dtype)
            dx[self._slices] = dy
            bottom[0].diff = dx
