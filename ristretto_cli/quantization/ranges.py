"""Range statistics and integer lengths for ``ristretto quantize`` (ristretto.md §6.3, §6.5, §6.8).

``RangeRecorder.update(net)`` is Ristretto's ``Net::RangeInLayers``: called after each
*complete* forward pass of the TRAIN net, it keeps, per layer whose type is exactly
``Convolution`` or ``InnerProduct``, the running maximum of ``|bottom[0]|``, ``|top[0]|`` and
``|blobs[0]|`` (weights only). Because it looks at the blobs after the whole pass, a top that
a later in-place layer rewrote (ReLU, Dropout's 1/(1-p) scaling, BatchNorm) is measured in
its final state; that is what Ristretto measures, so it is what we measure.

Integer lengths use float32 ``log2`` then ``ceil`` then truncation to int, as the C++ code
does on its float maxima. A maximum of exactly 0 (or a non-finite one) has no integer length:
Ristretto silently produces INT_MIN there and a layer that outputs NaN; we stop with an error
naming the layer instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ristretto_cli.errors import RistrettoError

#: Layer types whose ranges Ristretto records (exact runtime type match).
MEASURED_TYPES = ("Convolution", "InnerProduct")

_F32 = np.float32


@dataclass
class LayerRange:
    """Running maxima of one layer over the statistics batches (float32, as Ristretto keeps them)."""
    name: str
    type: str
    max_in: np.float32 = _F32(0)
    max_out: np.float32 = _F32(0)
    max_params: np.float32 = _F32(0)


def abs_max(a: np.ndarray) -> np.float32:
    """Ristretto's ``findMax``: starts at -10 and takes ``max(m, |x|)`` per element, so NaN
    is skipped (``std::max`` keeps the first argument) and an empty blob gives -10."""
    a = np.asarray(a)
    nan = np.isnan(a)
    if nan.any():
        a = a[~nan]
    if a.size == 0:
        return _F32(-10)
    return _F32(max(abs(float(a.max())), abs(float(a.min())), -10.0))


class RangeRecorder:
    """Accumulates the per-layer maxima over complete forward passes of one net."""

    def __init__(self):
        self.layers: list[LayerRange] = []
        self._indices: list[int] = []
        self.passes = 0

    def update(self, net) -> None:
        if self.passes == 0:
            # The list is built on the first call, from the net's layers in order.
            for i, layer in enumerate(net.layers):
                if layer.type in MEASURED_TYPES:
                    self._indices.append(i)
                    self.layers.append(LayerRange(net.layer_names[i], layer.type))
        for rec, i in zip(self.layers, self._indices):
            layer = net.layers[i]
            rec.max_in = max(rec.max_in, abs_max(net.bottom_vecs[i][0].data))
            rec.max_out = max(rec.max_out, abs_max(net.top_vecs[i][0].data))
            rec.max_params = max(rec.max_params, abs_max(layer.blobs[0].data))
        self.passes += 1

    def find(self, name: str) -> LayerRange | None:
        """First layer of that name (Ristretto's lookup by name in ``layer_names``)."""
        return next((r for r in self.layers if r.name == name), None)


# ------------------------------------------------------------------------ integer lengths
def _log2(x) -> np.float32:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log2(_F32(x))


def _checked_ceil(value: np.float32, what: str, maximum, layer: str) -> int:
    if not np.isfinite(value):
        raise RistrettoError(
            f"the range statistics give max |{what}| = {float(maximum):g}, which has no integer "
            "length (log2 is not finite); Ristretto would write a meaningless fractional length "
            "and the layer would output NaN. The statistics come from 10 TRAIN-phase batches: "
            "check the TRAIN data and weights", layer=layer)
    return int(np.ceil(value))


@dataclass(frozen=True)
class IntegerLengths:
    """Integer lengths of one layer: ``il_in``/``il_out`` omit the sign bit (the range
    ±2^(il-1) clips the largest activations, by Ristretto's design); ``il_params`` counts it."""
    name: str
    il_in: int
    il_out: int
    il_params: int | None = None


def integer_lengths(rec: LayerRange, *, params: bool = True) -> IntegerLengths:
    """``(int)ceil(log2(max))`` for input and output; ``(int)ceil(log2(max_params) + 1)`` for
    the weights (dynamic fixed point mode only), all in float32."""
    il_in = _checked_ceil(_log2(rec.max_in), "input", rec.max_in, rec.name)
    il_out = _checked_ceil(_log2(rec.max_out), "output", rec.max_out, rec.name)
    il_params = None
    if params:
        il_params = _checked_ceil(_F32(_log2(rec.max_params) + _F32(1)), "weights", rec.max_params, rec.name)
    return IntegerLengths(rec.name, il_in, il_out, il_params)


def minifloat_exponent(maximum) -> int | None:
    """``ceil(log2(log2(max) - 1) + 1)`` in float32, or None where it is not finite (max <= 2,
    or a non-finite max): Ristretto converts those to INT_MIN, which never wins its max()."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inner = _F32(_log2(maximum) - _F32(1))
        value = _F32(np.log2(inner) + _F32(1))
    if not np.isfinite(value):
        return None
    return int(np.ceil(value))


def minifloat_exp_bits(ranges: list[LayerRange], start: int = 4) -> int:
    """Exponent bits for minifloat mode: at least ``start`` (Ristretto's 4), raised to cover
    every layer's input and output maximum; weights are ignored, as in Ristretto."""
    exp_bits = start
    for rec in ranges:
        for m in (rec.max_in, rec.max_out):
            e = minifloat_exponent(m)
            if e is not None:
                exp_bits = max(exp_bits, e)
    return exp_bits


__all__ = ["MEASURED_TYPES", "LayerRange", "RangeRecorder", "IntegerLengths", "abs_max",
           "integer_lengths", "minifloat_exponent", "minifloat_exp_bits"]
