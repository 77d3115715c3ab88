"""pycaffe's ``caffe.coord_map``: how the spatial coordinates of one net-spec top relate to
another's, and the Crop layer that aligns them (as fully convolutional nets use it).

    from ristretto_cli.pycaffe.coord_map import crop
    n.upscore = L.Deconvolution(n.score, ...)
    n.score_crop = crop(n.upscore, n.data)      # Crop with the axis and offset worked out

A map is ``(axis, scale, shift)``: coordinate ``x`` of the bottom is ``scale * x + shift``
of the top (per spatial axis, as arrays), from ``axis`` on; ``axis`` None for layers that
do not move coordinates (ReLU and the other pointwise layers).
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.pycaffe_netspec import layers as L

__all__ = ["AxisMismatchException", "PASS_THROUGH_LAYERS", "UndefinedMapException", "compose",
           "conv_params", "coord_map", "coord_map_from_to", "crop", "crop_params", "inverse"]

#: Layer types that keep every coordinate where it is.
PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold"]

_LEGACY_2D_FIELDS = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}


class UndefinedMapException(Exception):
    """The layer type has no coordinate map (InnerProduct, ...)."""


class AxisMismatchException(Exception):
    """Two maps start at different axes."""


class _CoordMapAssertion(RistrettoError, AssertionError):
    """Where pycaffe's coord_map asserts (AssertionError)."""


def _layer_fields(fn, message: str) -> dict:
    """The layer call's fields: those of its ``message`` dict when given, else its keywords."""
    return fn.params.get(message, fn.params)


def conv_params(fn) -> tuple:
    """``(axis, stride, effective kernel size, pad)`` of a Convolution, Deconvolution,
    Im2col or Pooling call (arrays, one value or one per spatial axis); the kernel size
    counts the dilation."""
    message = "pooling_param" if fn.type_name == "Pooling" else "convolution_param"
    fields = _layer_fields(fn, message)
    legacy = _LEGACY_2D_FIELDS & (set(fields) | set(fn.params))
    if legacy:
        raise _CoordMapAssertion(f"{fn.type_name}: coordinate maps do not support the legacy "
                                 f"_h/_w fields ({', '.join(sorted(legacy))})")
    if "kernel_size" not in fields:
        raise _CoordMapAssertion(f"{fn.type_name}: a coordinate map needs kernel_size")
    kernel = np.array(fields["kernel_size"], ndmin=1)
    dilation = np.array(fields.get("dilation", 1), ndmin=1)
    return (fields.get("axis", 1), np.array(fields.get("stride", 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(fields.get("pad", 0), ndmin=1))


def crop_params(fn) -> tuple:
    """``(axis, offset)`` of a Crop call, with Caffe's defaults (axis 2, offset 0)."""
    fields = _layer_fields(fn, "crop_param")
    return fields.get("axis", 2), np.array(fields.get("offset", 0), ndmin=1)


def coord_map(fn) -> tuple:
    """The map of one layer call, bottom to top; UndefinedMapException for a type without
    one."""
    kind = fn.type_name
    if kind in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if kind == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if kind in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if kind == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset          # the map's axis is the last uncropped one
    raise UndefinedMapException(f"{kind} layers have no coordinate map")


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """``base_map`` followed by ``next_map``: the scales multiply, the second shift is
    scaled by the first scale."""
    base_axis, base_scale, base_shift = base_map
    next_axis, next_scale, next_shift = next_map
    if base_axis is not None and next_axis is not None and base_axis != next_axis:
        raise AxisMismatchException(f"maps from axis {base_axis} and axis {next_axis} do not compose")
    axis = next_axis if base_axis is None else base_axis
    return axis, base_scale * next_scale, base_scale * next_shift + base_shift


def inverse(coord_map: tuple) -> tuple:
    """The map back: top coordinates to bottom ones."""
    axis, scale, shift = coord_map
    return axis, 1 / scale, -shift / scale


def _mapped_bottoms(top) -> tuple:
    """The bottoms a map walks through: all of them, except a Crop's second (it only gives
    the size)."""
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _walk_back(start):
    """``(top, map from top to start)`` for ``start`` and every top it depends on through
    mapped layers, nearest first."""
    maps = {start: (None, 1, 0)}
    queue = [start]
    while queue:
        top = queue.pop(0)
        yield top, maps[top]
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _mapped_bottoms(top):
            if bottom not in maps:
                maps[bottom] = compose(maps[top], step)
                queue.append(bottom)


def coord_map_from_to(top_from, top_to) -> tuple:
    """The map taking coordinates of ``top_from`` to those of ``top_to``, through the
    nearest top both depend on; RuntimeError when no spatial path joins them."""
    from_maps = dict(_walk_back(top_from))
    for top, to_map in _walk_back(top_to):
        if top in from_maps:
            return compose(to_map, inverse(from_maps[top]))
    raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")


def crop(top_from, top_to):
    """A Crop layer call cutting ``top_from`` to the size and place of ``top_to``; they must
    have the same scale and ``top_from`` must cover ``top_to`` at a whole-pixel offset."""
    axis, scale, shift = coord_map_from_to(top_from, top_to)
    scale, shift = np.asarray(scale), np.asarray(shift)
    if not (scale == 1).all():
        raise _CoordMapAssertion(f"scale mismatch on crop (a = {scale})")
    if not (shift <= 0).all():
        raise _CoordMapAssertion(f"cannot crop negative offset (b = {shift})")
    if not (np.round(shift) == shift).all():
        raise _CoordMapAssertion(f"cannot crop noninteger offset (b = {shift})")
    offsets = [int(v) for v in -np.round(shift).reshape(-1)]
    return L.Crop(top_from, top_to, crop_param=dict(axis=axis + 1, offset=offsets))
