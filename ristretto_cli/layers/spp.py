"""SPP (spatial pyramid pooling): pools a 4-D bottom at several grid sizes and joins the
results into one fixed-length vector per item, whatever the bottom's height and width."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import Blob, count
from ristretto_cli.layers.base import TRAIN, Layer
from ristretto_cli.layers.pooling import PoolingLayer
from ristretto_cli.layers.registry import register
from ristretto_cli.proto import caffe_pb2


def level_geometry(level: int, size: int) -> tuple[int, int]:
    """``(kernel, pad)`` along one axis of ``size`` cells for pyramid level ``level``, as Caffe
    computes them: ``2**level`` bins, kernel = ceil(size / bins), pad = half the shortfall
    ``kernel * bins - size``, rounded up; the stride is the kernel. Pooling's rules (ceil
    mode, a last window starting in the padding dropped) then give ``bins`` windows, and its
    check that the pad is smaller than the kernel rejects a level too fine for the bottom
    (4 bins over 5 cells: kernel 2, pad 2), as in Caffe."""
    bins = 2 ** level
    kernel = -(-size // bins)
    return kernel, (kernel * bins - size + 1) // 2


def level_pooling_param(name: str, level: int, height: int, width: int,
                        pool: int) -> caffe_pb2.LayerParameter:
    """The Pooling layer of one pyramid level, built as Caffe's SPP builds it: a fresh
    LayerParameter, so its phase is TRAIN whatever the net's (STOCHASTIC pooling samples)."""
    (kernel_h, pad_h), (kernel_w, pad_w) = level_geometry(level, height), level_geometry(level, width)
    param = caffe_pb2.LayerParameter(name=name, type="Pooling", phase=TRAIN)
    p = param.pooling_param
    p.pool = pool       # SPPParameter.PoolMethod has Pooling's values
    p.kernel_h, p.kernel_w = kernel_h, kernel_w
    p.stride_h, p.stride_w = kernel_h, kernel_w
    p.pad_h, p.pad_w = pad_h, pad_w
    return param


@register("SPP")
class SPPLayer(Layer):
    """``spp_param.pyramid_height`` levels; level ``l`` pools a grid of ``2**l x 2**l``
    windows with ``spp_param.pool`` (MAX, AVE or STOCHASTIC). The top is ``(N, sum over levels
    of C * PH_l * PW_l)``: per item, level after level, each level's ``(C, PH, PW)`` result in
    row-major order. A pyramid of height 1 is a single Pooling: its top stays 4-D
    ``(N, C, PH, PW)``. The levels are rebuilt whenever the bottom's shape changes; backward
    sums the levels' gradients in level order."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        p = self.param.spp_param
        if p.pool not in (caffe_pb2.SPPParameter.MAX, caffe_pb2.SPPParameter.AVE,
                          caffe_pb2.SPPParameter.STOCHASTIC):
            raise self.error("unknown pooling method")
        if p.pyramid_height < 1:
            raise self.error("spp_param.pyramid_height must be at least 1")
        shape = bottom[0].shape
        if len(shape) > 4:
            raise self.error(f"SPP needs a 4-D bottom (num, channels, height, width), got {len(shape)} axes")
        height, width = (tuple(shape[2:]) + (1, 1))[:2]   # Caffe's legacy accessors pad with 1
        if height <= 0 or width <= 0:
            raise self.error(f"input dimensions cannot be zero: height {height}, width {width}")
        self._built_for = None

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if len(shape) != 4:
            raise self.error(f"input must have 4 axes, corresponding to (num, channels, height, "
                             f"width); got {len(shape)}")
        if shape == self._built_for:
            return
        p = self.param.spp_param
        self._levels: list[PoolingLayer] = []
        self._level_bottoms: list[Blob] = []
        self._level_tops: list[Blob] = []
        for level in range(p.pyramid_height):
            layer = PoolingLayer(level_pooling_param(self.name, level, shape[2], shape[3], p.pool),
                                 rng=self.rng, semantics=self.semantics)
            if p.pyramid_height == 1:
                layer.setup(bottom, top)
            else:
                level_bottom = Blob(data=bottom[0].data)
                level_top = Blob(data=np.zeros((), bottom[0].data.dtype))
                layer.setup([level_bottom], [level_top])
                self._level_bottoms.append(level_bottom)
                self._level_tops.append(level_top)
            self._levels.append(layer)
        if p.pyramid_height > 1:
            top[0].reshape((shape[0], sum(count(t.shape, 1) for t in self._level_tops)))
        self._built_for = shape

    def _prepare(self, layer: PoolingLayer) -> None:
        """What the net sets on this layer, passed on to a level's Pooling."""
        layer.rng = self.rng
        layer.backward_state_needed = self.backward_state_needed

    def forward_cpu(self, bottom, top):
        if len(self._levels) == 1:
            self._prepare(self._levels[0])
            self._levels[0].forward_cpu(bottom, top)
            return
        n = bottom[0].shape[0]
        for layer, level_bottom, level_top in zip(self._levels, self._level_bottoms, self._level_tops):
            self._prepare(layer)
            level_bottom.data = bottom[0].data
            layer.forward_cpu([level_bottom], [level_top])
        np.concatenate([t.data.reshape(n, -1) for t in self._level_tops], axis=1, out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        if len(self._levels) == 1:
            self._levels[0].backward_cpu(top, propagate_down, bottom)
            return
        dy = top[0].diff
        start, dx = 0, None
        for layer, level_bottom, level_top in zip(self._levels, self._level_bottoms, self._level_tops):
            size = count(level_top.shape, 1)
            level_top.diff = dy[:, start:start + size].reshape(level_top.shape)
            start += size
            level_bottom.data = bottom[0].data
            layer.backward_cpu([level_top], [True], [level_bottom])
            if dx is None:
                dx = level_bottom.diff.copy()
            else:
                dx += level_bottom.diff
        bottom[0].diff = dx
