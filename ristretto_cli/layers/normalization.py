"""Normalisation layers: BatchNorm, MVN, and the affine Scale and Bias that follow them."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import Blob, count
from ristretto_cli.layers.base import TEST, Layer
from ristretto_cli.layers.im2col import scratch
from ristretto_cli.layers.manipulation import layer_axis, write_top
from ristretto_cli.layers.neuron import BLOCK_ELEMENTS, run_blocks
from ristretto_cli.layers.registry import register
from ristretto_cli.proto import caffe_pb2


def _by_rows(rows: int, length: int, work) -> None:
    """``work(r0, r1)`` over ranges of ``rows`` rows of ``length`` elements: blocks of about
    BLOCK_ELEMENTS, each block's passes in the cache, shared among the threads where the
    array is big enough (every element computed as in one pass over the whole array)."""
    run_blocks(rows, max(1, BLOCK_ELEMENTS // max(1, length)), rows * length, work)


def _per_row(values: np.ndarray, repeats: int) -> np.ndarray:
    """Per-channel ``values`` as a column for the ``(repeats * channels, length)`` row view."""
    return np.tile(values, repeats)[:, None]


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Per-channel normalisation by batch statistics or by the running averages in its blobs.

    Blobs: [0] running mean sum, [1] running variance sum, [2] normalisation factor; the
    averages are blob0/blob2 and blob1/blob2. They are never learned (lr_mult 0).
    """
    writes_blobs_in_forward = True
    exact_bottoms = 1
    exact_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else self.phase == TEST)
        shape = bottom[0].shape
        if not shape:
            raise self.error("BatchNorm needs a bottom with at least one axis")
        self._channels = 1 if len(shape) == 1 else shape[1]
        c = self._channels
        if not self.blobs:
            self.blobs = [Blob(data=np.zeros((c,), np.float32)), Blob(data=np.zeros((c,), np.float32)),
                          Blob(data=np.zeros((1,), np.float32))]
        # Preloaded blobs: Caffe reads them unchecked (past their end if short); sizes by count,
        # so legacy (1, C, 1, 1) shapes pass.
        counts = [blob.count for blob in self.blobs]
        if counts != [c, c, 1]:
            raise self.error(f"BatchNorm needs 3 blobs of {c}, {c} and 1 values for {c} channels, "
                             f"got {len(counts)} blob(s) of {counts} values")
        # The Net decides learnability from these ParamSpecs after setup: mask the statistics.
        for i in range(len(self.blobs)):
            if len(self.param.param) == i:
                self.param.param.add().lr_mult = 0.0
            elif self.param.param[i].lr_mult != 0:
                raise self.error("Cannot configure batch normalization statistics as layer parameters.")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        channels = 1 if len(shape) == 1 else shape[1] if shape else None
        if channels != self._channels:
            raise self.error(f"BatchNorm was set up for {self._channels} channels, the bottom has "
                             f"shape {shape}")
        if top[0] is not bottom[0]:
            top[0].reshape(shape)

    def _view(self, a: np.ndarray) -> np.ndarray:
        n, c = a.shape[0], self._channels
        return a.reshape(n, c, count(a.shape) // (n * c) if n * c else 0)

    def forward_cpu(self, bottom, top):
        p = self.param.batch_norm_param
        x = self._view(bottom[0].data)
        dt = x.dtype
        n, c, s = x.shape
        if x.size == 0:  # nothing to normalise (Caffe would divide by a zero count)
            self._x_norm, self._std = x.copy(), np.ones(c, dt)
            write_top(bottom[0], top[0], bottom[0].data.copy())
            return
        in_place = top[0] is bottom[0]
        # In place, the results go straight into the bottom's array where ``x`` is a view of it.
        into_x = in_place and bottom[0].data.flags.c_contiguous
        rows = n * c
        x2 = x.reshape(rows, s)
        y2 = x2 if into_x else np.empty((rows, s), dt)
        if self.use_global_stats:
            norm = self.blobs[2].data.reshape(-1)[0]
            factor = dt.type(0) if norm == 0 else dt.type(1) / dt.type(norm)
            mean = factor * self.blobs[0].data.reshape(c).astype(dt)
            var = factor * self.blobs[1].data.reshape(c).astype(dt)
            std = np.sqrt(var + dt.type(p.eps))
            mean_r, std_r = _per_row(mean, n), _per_row(std, n)

            def normalise(r0: int, r1: int) -> None:
                np.subtract(x2[r0:r1], mean_r[r0:r1], out=y2[r0:r1])
                np.divide(y2[r0:r1], std_r[r0:r1], out=y2[r0:r1])
            # Backward needs only std here: y goes straight into the top.
            _by_rows(rows, s, normalise)
            self._x_norm, self._std = None, std
            if not into_x:
                write_top(bottom[0], top[0], y2.reshape(bottom[0].shape))
            return
        inv_m = dt.type(1.0 / (n * s))
        row_sums = np.empty(rows, dt)
        _by_rows(rows, s, lambda r0, r1: np.sum(x2[r0:r1], axis=1, out=row_sums[r0:r1]))
        mean = (row_sums.reshape(n, c) * inv_m).sum(axis=0)
        mean_r = _per_row(mean, n)
        centred = np.empty((rows, s), dt)

        def centre(r0: int, r1: int) -> None:
            block = np.subtract(x2[r0:r1], mean_r[r0:r1], out=centred[r0:r1])
            squares = np.multiply(block, block, out=scratch("bn_squares", block.shape, dt))
            np.sum(squares, axis=1, out=row_sums[r0:r1])
        _by_rows(rows, s, centre)
        var = (row_sums.reshape(n, c) * inv_m).sum(axis=0)
        # Running averages, written into the blobs' arrays (the solver and test nets share them).
        frac = self.blobs[0].data.dtype.type(p.moving_average_fraction)
        b0, b1, b2 = (self.blobs[k].data for k in range(3))
        b2 *= frac
        b2 += 1
        b0[...] = mean.reshape(b0.shape) + frac * b0
        m = count(bottom[0].shape) // c
        correction = dt.type(m) / dt.type(m - 1) if m > 1 else dt.type(1)
        b1[...] = (correction * var).reshape(b1.shape) + frac * b1
        std = np.sqrt(var + dt.type(p.eps))
        std_r = _per_row(std, n)

        def normalise_centred(r0: int, r1: int) -> None:
            np.divide(centred[r0:r1], std_r[r0:r1], out=centred[r0:r1])
            np.copyto(y2[r0:r1], centred[r0:r1])
        _by_rows(rows, s, normalise_centred)
        # Kept for backward apart from the top: a later in-place layer may overwrite the top.
        self._x_norm = centred.reshape(n, c, s)
        self._std = std
        if not into_x:
            write_top(bottom[0], top[0], y2.reshape(bottom[0].shape))

    def backward_cpu(self, top, propagate_down, bottom):
        # The bottom's gradient whenever the net runs this backward, propagate_down or not,
        # as Caffe's layer writes it.
        dy = self._view(top[0].diff)
        dt = dy.dtype
        n, c, s = dy.shape
        rows = n * c
        dy2 = dy.reshape(rows, s)
        # In place, dx goes into the shared gradient (dy's own array), block by block.
        in_place = top[0] is bottom[0] and top[0].diff.flags.c_contiguous and dy.flags.writeable
        dx2 = dy2 if in_place else np.empty((rows, s), dt)
        std_r = _per_row(self._std, n)
        if self.use_global_stats:
            _by_rows(rows, s, lambda r0, r1: np.divide(dy2[r0:r1], std_r[r0:r1], out=dx2[r0:r1]))
        else:
            y2 = self._x_norm.reshape(rows, s)
            dy_y_sums, dy_sums = np.empty(rows, dt), np.empty(rows, dt)

            def sums(r0: int, r1: int) -> None:
                dy_y = np.multiply(dy2[r0:r1], y2[r0:r1], out=scratch("bn_products", (r1 - r0, s), dt))
                np.sum(dy_y, axis=1, out=dy_y_sums[r0:r1])
                np.sum(dy2[r0:r1], axis=1, out=dy_sums[r0:r1])
            _by_rows(rows, s, sums)
            sum_dy_y = _per_row(dy_y_sums.reshape(n, c).sum(axis=0), n)
            sum_dy = _per_row(dy_sums.reshape(n, c).sum(axis=0), n)
            k = dt.type(-1.0 / max(n * s, 1))

            def gradient(r0: int, r1: int) -> None:
                # dx = (dy - (y * sum_dy_y + sum_dy) / m) / std
                t = np.multiply(y2[r0:r1], sum_dy_y[r0:r1], out=scratch("bn_products", (r1 - r0, s), dt))
                t += sum_dy[r0:r1]
                t *= k
                np.add(t, dy2[r0:r1], out=dx2[r0:r1])
                dx2[r0:r1] /= std_r[r0:r1]
            _by_rows(rows, s, gradient)
        if not in_place:
            bottom[0].diff = dx2.reshape(bottom[0].shape)


@register("MVN")
class MVNLayer(Layer):
    """Mean (and variance) normalisation per (n, c) or per n (across_channels) of the 4-D view."""
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) > 4:
            raise self.error(f"MVN works on blobs of at most 4 axes, got shape {shape}")
        # Caffe gives the top the legacy 4-D shape (num, channels, height, width), in place too.
        shape4 = tuple(shape) + (1,) * (4 - len(shape))
        if top[0] is not bottom[0]:
            top[0].reshape(shape4)
        elif shape != shape4:
            bottom[0].data = bottom[0].data.reshape(shape4)  # trailing 1s: a view, never a copy

    def _rows(self, shape) -> tuple[int, int]:
        # Caffe's legacy num()/channels(): missing axes count as 1.
        num = shape[0] if len(shape) > 0 else 1
        channels = shape[1] if len(shape) > 1 else 1
        rows = num if self.param.mvn_param.across_channels else num * channels
        return rows, (count(shape) // rows if rows else 0)

    def forward_cpu(self, bottom, top):
        p = self.param.mvn_param
        rows, dim = self._rows(bottom[0].shape)
        x = bottom[0].data.reshape(rows, dim)
        dt = x.dtype
        inv_dim = dt.type(1.0 / dim) if dim else dt.type(0)
        y = x - (x.sum(axis=1) * inv_dim)[:, None]
        if p.normalize_variance:
            var = (y * y).sum(axis=1) * inv_dim
            self._sd = np.sqrt(var) + dt.type(p.eps)  # eps is added to the standard deviation
            y = y / self._sd[:, None]
        write_top(bottom[0], top[0], y.reshape(top[0].shape))

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        rows, dim = self._rows(bottom[0].shape)
        dy = top[0].diff.reshape(rows, dim)
        dt = dy.dtype
        if self.param.mvn_param.normalize_variance:
            # Caffe reads y back from the top, as later in-place layers left it.
            y = top[0].data.reshape(rows, dim)
            t = y * (y * dy).sum(axis=1)[:, None] + dy.sum(axis=1)[:, None]
            dx = (dy + dt.type(-1.0 / max(dim, 1)) * t) / self._sd[:, None]
        else:
            inv_dim = dt.type(1.0 / dim) if dim else dt.type(0)
            dx = dy - (dy.sum(axis=1) * inv_dim)[:, None]
        bottom[0].diff = dx.reshape(bottom[0].shape)


def _param_shape(layer: Layer, bottom: Blob, axis: int, num_axes: int, what: str) -> tuple[int, ...]:
    """Shape of a learned factor/bias: bottom dims [axis, axis+num_axes) (-1: to the end)."""
    start = layer_axis(layer, axis, bottom.num_axes, f"{what} axis")
    if num_axes < -1:
        raise layer.error(f"{what} num_axes must be non-negative, or -1 to extend to the end of bottom 0")
    if num_axes >= 0 and bottom.num_axes < start + num_axes:
        raise layer.error(f"the {what} blob's shape extends past bottom 0's shape {bottom.shape} "
                          f"when applied from axis {start}")
    return bottom.shape[start:] if num_axes == -1 else bottom.shape[start:start + num_axes]


def _broadcast_dims(layer: Layer, bottom: Blob, operand: np.ndarray, axis: int,
                    what: str) -> tuple[int, int, int]:
    """(outer, dim, inner) for applying ``operand`` along bottom axes from ``axis``."""
    shape = bottom.shape
    # A scalar operand applies everywhere: Caffe ignores the axis then.
    start = 0 if operand.ndim == 0 else layer_axis(layer, axis, len(shape), f"{what} axis")
    if len(shape) < start + operand.ndim:
        raise layer.error(f"the {what} blob's shape {operand.shape} extends past bottom 0's shape "
                          f"{shape} when applied from axis {start}")
    if shape[start:start + operand.ndim] != operand.shape:
        raise layer.error(f"dimension mismatch between bottom 0 {shape} from axis {start} and the "
                          f"{what} blob {operand.shape}")
    return count(shape, 0, start), operand.size, count(shape, start + operand.ndim)


def _sum_outer_inner(a: np.ndarray, dims: tuple[int, int, int]) -> np.ndarray:
    """Sums over the inner axis, then over the outer one (as the row-block paths do)."""
    return a.reshape(dims).sum(axis=2).sum(axis=0)


@register("Scale")
class ScaleLayer(Layer):
    """``y = x * s`` broadcast along axes [axis, axis+num_axes) (+ a bias when bias_term).

    The factor is a learned blob (one bottom) or bottom 1. Blobs: [scale] (+ [bias]) with one
    bottom, [bias] with two bottoms and bias_term.
    """
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.scale_param
        if len(bottom) == 1 and not self.blobs:
            shape = _param_shape(self, bottom[0], p.axis, p.num_axes, "scale")
            filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant",
                                                                                      value=1.0)
            self.add_param_blob(shape, filler)
        self._bias_index = None
        if p.bias_term:
            if len(self.blobs) + len(bottom) < 3:
                # The bias spans the factor's axes: with two bottoms, bottom 1's axes.
                num_axes = bottom[1].num_axes if len(bottom) > 1 else p.num_axes
                shape = _param_shape(self, bottom[0], p.axis, num_axes, "bias")
                self.add_param_blob(shape, p.bias_filler)
            self._bias_index = len(self.blobs) - 1

    def _factor(self, bottom) -> np.ndarray:
        return bottom[1].data if len(bottom) > 1 else self.blobs[0].data

    def reshape(self, bottom, top):
        axis = self.param.scale_param.axis
        self._dims = _broadcast_dims(self, bottom[0], self._factor(bottom), axis, "scale")
        if self._bias_index is not None:
            self._bias_dims = _broadcast_dims(self, bottom[0], self.blobs[self._bias_index].data,
                                              axis, "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        in_place = top[0] is bottom[0]
        if in_place:
            # Backward needs the input, about to be overwritten: kept in an array of the layer's
            # own, reused from pass to pass.
            if getattr(self, "_x", None) is None or self._x.shape != x.shape or self._x is x:
                self._x = np.empty_like(x)
        else:
            self._x = x
        outer, dim, inner = self._dims
        s = self._factor(bottom).reshape(dim).astype(x.dtype, copy=False)
        b = None
        if self._bias_index is not None:
            b = self.blobs[self._bias_index].data.reshape(-1).astype(x.dtype, copy=False)
        if x.flags.c_contiguous and (b is None or self._bias_dims == self._dims):
            # y = x * s (+ b) row by row of the (outer * dim, inner) view, in blocks on the
            # threads; in place straight into the bottom's array.
            x2 = x.reshape(outer * dim, inner)
            y2 = x2 if in_place else np.empty_like(x2)
            kept = self._x.reshape(x2.shape) if in_place else None
            s_r = _per_row(s, outer)
            b_r = None if b is None else _per_row(b, outer)

            def scale(r0: int, r1: int) -> None:
                if kept is not None:
                    np.copyto(kept[r0:r1], x2[r0:r1])
                np.multiply(x2[r0:r1], s_r[r0:r1], out=y2[r0:r1])
                if b_r is not None:
                    y2[r0:r1] += b_r[r0:r1]
            _by_rows(outer * dim, inner, scale)
            if not in_place:
                top[0].data = y2.reshape(x.shape)
            return
        if in_place:
            np.copyto(self._x, x)
        y = x.reshape(self._dims) * s.reshape(1, dim, 1)
        if b is not None:
            yb = y.reshape(self._bias_dims)
            yb += b.reshape(1, b.size, 1)
        write_top(bottom[0], top[0], y.reshape(x.shape))

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].diff
        learned = len(bottom) == 1
        need_bias = self._bias_index is not None and self.param_propagate_down[self._bias_index]
        need_factor = (learned and self.param_propagate_down[0]) or (not learned and propagate_down[1])
        need_x = bool(propagate_down[0])
        outer, dim, inner = self._dims
        s = self._factor(bottom).reshape(dim).astype(dy.dtype, copy=False)
        if not (dy.flags.c_contiguous and self._x.flags.c_contiguous
                and (self._bias_index is None or self._bias_dims == self._dims)):
            self._backward_whole(top, bottom, dy, s, need_bias, need_factor, need_x)
            return
        # Row by row of the (outer * dim, inner) view, in blocks on the threads: each row's
        # sums, then those summed over ``outer`` (as Caffe sums over the inner axis first).
        rows = outer * dim
        dy2, x2 = dy.reshape(rows, inner), self._x.reshape(rows, inner)
        in_place = top[0] is bottom[0] and dy.flags.writeable     # dx into the shared gradient
        dx2 = (dy2 if in_place else np.empty_like(dy2)) if need_x else None
        bias_sums = np.empty(rows, dy.dtype) if need_bias else None
        factor_sums = np.empty(rows, dy.dtype) if need_factor else None
        s_r = _per_row(s, outer)

        def gradients(r0: int, r1: int) -> None:
            if bias_sums is not None:
                np.sum(dy2[r0:r1], axis=1, out=bias_sums[r0:r1])
            if factor_sums is not None:
                products = np.multiply(dy2[r0:r1], x2[r0:r1], out=scratch("scale_products", (r1 - r0, inner),
                                                                          dy.dtype))
                np.sum(products, axis=1, out=factor_sums[r0:r1])
            if dx2 is not None:
                np.multiply(dy2[r0:r1], s_r[r0:r1], out=dx2[r0:r1])
        _by_rows(rows, inner, gradients)
        if bias_sums is not None:
            blob = self.blobs[self._bias_index]
            blob.diff += bias_sums.reshape(outer, dim).sum(axis=0).reshape(blob.shape)
        if factor_sums is not None:
            self._add_factor_gradient(bottom, factor_sums.reshape(outer, dim).sum(axis=0), learned)
        if dx2 is not None and not in_place:
            bottom[0].diff = dx2.reshape(bottom[0].shape)

    def _add_factor_gradient(self, bottom, ds: np.ndarray, learned: bool) -> None:
        if learned:
            self.blobs[0].diff += ds.reshape(self.blobs[0].shape)
        else:
            bottom[1].diff = ds.reshape(bottom[1].shape)

    def _backward_whole(self, top, bottom, dy, s, need_bias, need_factor, need_x) -> None:
        """The backward over whole arrays, for layouts without a row view."""
        if need_bias:
            blob = self.blobs[self._bias_index]
            blob.diff += _sum_outer_inner(dy, self._bias_dims).reshape(blob.shape)
        if need_factor:
            self._add_factor_gradient(bottom, _sum_outer_inner(dy * self._x, self._dims), len(bottom) == 1)
        if need_x:
            bottom[0].diff = (dy.reshape(self._dims) * s.reshape(1, -1, 1)).reshape(bottom[0].shape)


@register("Bias")
class BiasLayer(Layer):
    """``y = x + b`` broadcast along axes [axis, axis+num_axes); b learned or bottom 1."""
    min_bottoms = 1
    max_bottoms = 2
    exact_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.bias_param
        if len(bottom) == 1 and not self.blobs:
            self.add_param_blob(_param_shape(self, bottom[0], p.axis, p.num_axes, "bias"), p.filler)

    def _bias(self, bottom) -> np.ndarray:
        return bottom[1].data if len(bottom) > 1 else self.blobs[0].data

    def reshape(self, bottom, top):
        self._dims = _broadcast_dims(self, bottom[0], self._bias(bottom), self.param.bias_param.axis,
                                     "bias")
        if top[0] is not bottom[0]:
            top[0].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        b = self._bias(bottom).reshape(-1).astype(x.dtype, copy=False)
        if x.flags.c_contiguous:
            # row by row of the (outer * dim, inner) view, in blocks on the threads
            outer, dim, inner = self._dims
            x2 = x.reshape(outer * dim, inner)
            y2 = x2 if top[0] is bottom[0] else np.empty_like(x2)
            b_r = _per_row(b, outer)
            _by_rows(outer * dim, inner, lambda r0, r1: np.add(x2[r0:r1], b_r[r0:r1], out=y2[r0:r1]))
            if top[0] is not bottom[0]:
                top[0].data = y2.reshape(x.shape)
            return
        y = x.reshape(self._dims) + b.reshape(1, b.size, 1)
        write_top(bottom[0], top[0], y.reshape(x.shape))

    def backward_cpu(self, top, propagate_down, bottom):
        dy = top[0].diff
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff = dy.copy()
        learned = len(bottom) == 1
        if learned and self.param_propagate_down[0]:
            self.blobs[0].diff += _sum_outer_inner(dy, self._dims).reshape(self.blobs[0].shape)
        elif not learned and propagate_down[1]:
            bottom[1].diff = _sum_outer_inner(dy, self._dims).reshape(bottom[1].shape)
