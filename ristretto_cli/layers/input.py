"""Layers whose tops are filled from outside or by a filler: Input, DummyData."""

from __future__ import annotations

from ristretto_cli.blob import Blob
from ristretto_cli.fillers import fill
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register
from ristretto_cli.proto import caffe_pb2


def _shapes_for_tops(shapes: list[tuple[int, ...]], num_tops: int, layer: Layer, what: str):
    if len(shapes) not in (0, 1, num_tops):
        raise layer.error(f"{what} must be given 0, 1 or {num_tops} (one per top) times")
    if len(shapes) == 1:
        return shapes * num_tops
    return shapes


@register("Input")
class InputLayer(Layer):
    """Net inputs: shapes from input_param; the caller fills the data (a CLI run sees zeros)."""
    exact_bottoms = 0
    min_tops = 1
    has_backward = True

    def layer_setup(self, bottom, top):
        shapes = [tuple(int(d) for d in s.dim) for s in self.param.input_param.shape]
        for t, shape in zip(top, _shapes_for_tops(shapes, len(top), self, "input_param.shape")):
            t.reshape(shape)

    def reshape(self, bottom, top):
        pass  # shapes are the caller's to change (pycaffe-style blob.reshape + net.reshape)

    def forward_cpu(self, bottom, top):
        pass

    def backward_cpu(self, top, propagate_down, bottom):
        pass


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers: constant ones once at setup, the others on every forward."""
    exact_bottoms = 0
    min_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.dummy_data_param
        n = len(top)
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if any(legacy):
            if len(p.shape):
                raise self.error("dummy_data_param: give either shape or num/channels/height/width, not both")
            for values, field in zip(legacy, ("num", "channels", "height", "width")):
                if len(values) not in (1, n):
                    raise self.error(f"dummy_data_param.{field} must be given once or once per top ({n}), "
                                     f"not {len(values)} times")
            shapes = [tuple(v[0] if len(v) == 1 else v[i] for v in legacy) for i in range(n)]
        else:
            if len(p.shape) not in (1, n):      # unlike Input, a shape is required
                raise self.error(f"dummy_data_param.shape must be given once or once per top ({n}), "
                                 f"not {len(p.shape)} times")
            shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
            shapes = shapes * n if len(shapes) == 1 else shapes
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n):
            raise self.error(f"dummy_data_param.data_filler must be given 0, 1 or {n} times")
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        if len(fillers) == 1:
            fillers = fillers * n
        self._fillers = fillers
        self._refill = [f.type != "constant" for f in fillers]
        for t, shape, f in zip(top, shapes, fillers):
            t.reshape(shape)
            t.data = fill(f, shape, self.rng)

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom: list[Blob], top: list[Blob]):
        for t, f, refill in zip(top, self._fillers, self._refill):
            if refill:
                t.data = fill(f, t.shape, self.rng)

    def backward_cpu(self, top, propagate_down, bottom):
        pass
