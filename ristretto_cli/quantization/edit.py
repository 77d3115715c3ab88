"""Net description edits of ``ristretto quantize`` (ristretto.md §6.6).

Each function edits a NetParameter in place, over *all* its layers (no phase filtering),
exactly as Ristretto's ``EditNetDescription*`` functions do:

* dynamic fixed point: a layer whose type *contains* ``Convolution`` (so ``Convolution`` and
  ``ConvolutionRistretto``, not ``Deconvolution``) becomes ``ConvolutionRistretto``; one whose
  type contains ``InnerProduct`` or ``FcRistretto`` becomes ``FcRistretto``. Only the bit
  widths and fractional lengths of the selected part are written; ``precision`` and
  ``rounding_scheme`` are left alone, so every field not written keeps its proto default
  (32-bit, fractional length 16).
* minifloat and power-of-two weights: the type must *equal* ``Convolution`` /
  ``ConvolutionRistretto`` or ``InnerProduct`` / ``FcRistretto``.

Integer lengths are looked up by layer name; a layer that has none (it is not a Convolution
or InnerProduct layer of the TRAIN net, where the ranges were measured) is an error — in
Ristretto an out-of-bounds read.
"""

from __future__ import annotations

from collections.abc import Callable

from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

CONV_RISTRETTO = "ConvolutionRistretto"
FC_RISTRETTO = "FcRistretto"
Q = caffe_pb2.QuantizationParameter


def dfp_kind(layer_type: str) -> str | None:
    """"conv", "fc" or None: which DFP sweep a layer of this type belongs to."""
    if "Convolution" in layer_type:
        return "conv"
    if "InnerProduct" in layer_type or FC_RISTRETTO in layer_type:
        return "fc"
    return None


def exact_kind(layer_type: str) -> str | None:
    """"conv", "fc" or None for the minifloat and power-of-two edits (exact type match)."""
    if layer_type in ("Convolution", CONV_RISTRETTO):
        return "conv"
    if layer_type in ("InnerProduct", FC_RISTRETTO):
        return "fc"
    return None


def edited_layers(param: caffe_pb2.NetParameter, mode: str, kinds=("conv", "fc")) -> list[str]:
    """Names of the layers an edit of ``mode`` ("dfp" or "exact") changes, in file order."""
    classify = dfp_kind if mode == "dfp" else exact_kind
    return [lp.name for lp in param.layer if classify(lp.type) in kinds]


def edit_dynamic_fixed_point(param: caffe_pb2.NetParameter, lengths: Callable, *, conv: bool, fc: bool,
                             parameters: bool, activations: bool, bw_conv: int = -1, bw_fc: int = -1,
                             bw_in: int = -1, bw_out: int = -1) -> None:
    """``EditNetDescriptionDynamicFixedPoint``: ``lengths(name)`` gives the layer's
    ``IntegerLengths``; ``fl = bw - il`` for each written format."""
    for lp in param.layer:
        kind = dfp_kind(lp.type)
        if kind == "conv" and conv:
            new_type, bw_params = CONV_RISTRETTO, bw_conv
        elif kind == "fc" and fc:
            new_type, bw_params = FC_RISTRETTO, bw_fc
        else:
            continue
        il = lengths(lp.name)
        q = lp.quantization_param
        if parameters:
            lp.type = new_type
            q.fl_params = bw_params - il.il_params
            q.bw_params = bw_params
        if activations:
            lp.type = new_type
            q.fl_layer_in = bw_in - il.il_in
            q.bw_layer_in = bw_in
            q.fl_layer_out = bw_out - il.il_out
            q.bw_layer_out = bw_out


def _exact_quantized(param: caffe_pb2.NetParameter):
    """The quantization_param of every layer the exact-type edits change, after giving the
    layer its Ristretto type."""
    for lp in param.layer:
        kind = exact_kind(lp.type)
        if kind is not None:
            lp.type = CONV_RISTRETTO if kind == "conv" else FC_RISTRETTO
            yield lp.quantization_param


def edit_minifloat(param: caffe_pb2.NetParameter, bitwidth: int, exp_bits: int) -> None:
    """``EditNetDescriptionMiniFloat``: one format, ``mant_bits = bitwidth - exp_bits - 1``."""
    for q in _exact_quantized(param):
        q.precision = Q.MINIFLOAT
        q.mant_bits = bitwidth - exp_bits - 1
        q.exp_bits = exp_bits


def edit_power_of_two(param: caffe_pb2.NetParameter, exp_min: int = -8, exp_max: int = -1) -> None:
    """``EditNetDescriptionIntegerPowerOf2Weights``: weights 2^e, e in [-8, -1] (AlexNet's choice)."""
    for q in _exact_quantized(param):
        q.precision = Q.INTEGER_POWER_OF_2_WEIGHTS
        q.exp_min = exp_min
        q.exp_max = exp_max


def lengths_lookup(table: dict) -> Callable:
    """``lengths(name)`` over a {name: IntegerLengths} table, with Ristretto's failure case as
    a clear error."""
    def lengths(name: str):
        il = table.get(name)
        if il is None:
            raise RistrettoError(
                "this layer would be quantized but has no range statistics: only layers of type "
                "Convolution or InnerProduct in the TRAIN-phase net are measured", layer=name)
        return il
    return lengths


__all__ = ["CONV_RISTRETTO", "FC_RISTRETTO", "dfp_kind", "exact_kind", "edited_layers",
           "edit_dynamic_fixed_point", "edit_minifloat", "edit_power_of_two", "lengths_lookup"]
