"""Ristretto's quantized layers: ConvolutionRistretto, DeconvolutionRistretto, FcRistretto and
LRNRistretto (ristretto.md §3; the two number-format semantics: DECISIONS.md).

The convolution and inner-product variants are their base layers plus trimming:

* TEST phase: every bottom is trimmed **in place** with the input format, on the shared array,
  so the producer's top and every other consumer of that blob (Split tops, Flatten views) see
  the trimmed values, as in Caffe. The tops are trimmed in place with the output format after
  the bias has been added.
* Both phases: the weights (and the bias, except for power-of-two weights) are trimmed into a
  private copy that the forward pass multiplies with: with ``rounding_scheme`` in TEST, always
  stochastically in TRAIN. The full-precision "shadow" weights stay in ``self.blobs``: they are
  what the solver updates, what snapshots save and what weight files load.
* Backward is the base layer's: the bottom gradient uses the trimmed weights of the last
  forward (straight-through estimator), parameter gradients accumulate into ``self.blobs``.

In TEST with NEAREST rounding the trimmed copy is a pure function of the shadow weights and
the format, so it is kept between forwards and re-made only when the shadow weights differ, bit
for bit, from a private snapshot taken when it was made. Comparing costs about half as much as
trimming, and it catches every change: solver updates, weight loading, writes through pycaffe,
a blob whose array was replaced. While ``Net.frozen_params()`` holds the weights read-only
(scoring), one comparison per stretch is enough.

LRNRistretto follows Ristretto's GPU kernel (the CPU original has none): every intermediate
value is trimmed to minifloat with NEAREST rounding in both phases, identically in both
semantics.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ristretto_cli.layers.base import TEST, TRAIN
from ristretto_cli.layers.convolution import ConvolutionLayer, DeconvolutionLayer
from ristretto_cli.layers.inner_product import InnerProductLayer
from ristretto_cli.layers.lrn import ACROSS_CHANNELS, LRNLayer, powf, running_channel_sum
from ristretto_cli.layers.registry import register
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.quantization import DynamicFixedPoint, Minifloat, PowerOfTwo
from ristretto_cli.quantization.formats import _dfp_bounds, _minifloat_consts

_QP = caffe_pb2.QuantizationParameter
DYNAMIC_FIXED_POINT = _QP.DYNAMIC_FIXED_POINT
MINIFLOAT = _QP.MINIFLOAT
INTEGER_POWER_OF_2_WEIGHTS = _QP.INTEGER_POWER_OF_2_WEIGHTS

__all__ = [
    "LayerFormats",
    "layer_formats",
    "ConvolutionRistrettoLayer",
    "DeconvolutionRistrettoLayer",
    "FcRistrettoLayer",
    "LRNRistrettoLayer",
]


@dataclass(frozen=True)
class LayerFormats:
    """The number formats of one quantized layer; None means "not trimmed"."""
    precision: int
    stochastic: bool           # rounding_scheme == STOCHASTIC (TEST phase; TRAIN is always stochastic)
    weights: object
    bias: object | None
    inputs: object | None
    outputs: object | None


def layer_formats(qp, semantics: str) -> LayerFormats:
    """The formats a layer with QuantizationParameter ``qp`` uses under ``semantics``.

    Raises ValueError for an unknown precision or out-of-range format parameters.
    """
    precision = int(qp.precision)
    stochastic = int(qp.rounding_scheme) == _QP.STOCHASTIC
    if precision == DYNAMIC_FIXED_POINT:
        params = DynamicFixedPoint(qp.bw_params, qp.fl_params)
        return LayerFormats(precision, stochastic, params, params,
                            DynamicFixedPoint(qp.bw_layer_in, qp.fl_layer_in),
                            DynamicFixedPoint(qp.bw_layer_out, qp.fl_layer_out))
    if precision == MINIFLOAT:
        fmt = Minifloat(qp.mant_bits, qp.exp_bits)
        return LayerFormats(precision, stochastic, fmt, fmt, fmt, fmt)
    if precision == INTEGER_POWER_OF_2_WEIGHTS:
        weights = PowerOfTwo(qp.exp_min, qp.exp_max)
        if semantics == "caffe-cpu":  # Ristretto's CPU path leaves these activations alone
            return LayerFormats(precision, stochastic, weights, None, None, None)
        return LayerFormats(precision, stochastic, weights, None,
                            DynamicFixedPoint(qp.bw_layer_in, qp.fl_layer_in),
                            DynamicFixedPoint(qp.bw_layer_out, qp.fl_layer_out))
    raise ValueError(f"Unknown precision mode: {precision}")


def _trim(fmt, src: np.ndarray, dst: np.ndarray, stochastic: bool, semantics: str, rng) -> np.ndarray:
    """``dst = fmt(src)``; ``dst`` may be ``src`` (in place). The kernels work in float32; other
    dtypes (float64 in gradient checks) are trimmed through a float32 copy."""
    rounding = "stochastic" if stochastic else "nearest"
    rng = rng if stochastic else None
    if dst.dtype == np.float32:
        return fmt.trim(src, rounding, semantics=semantics, rng=rng, out=dst)
    dst[...] = fmt.trim(src, rounding, semantics=semantics, rng=rng)
    return dst


# --------------------------------------------------------------------------- activation trimming
# Activations are trimmed on every TEST forward, so their trimming is on the critical path. The
# general kernels handle every input and parameter; for NEAREST rounding of finite float32 data
# in the usual parameter ranges the classes below give the same bits with fewer NumPy passes and
# constants computed once per layer. A chunk that holds a NaN, an infinity or a value that would
# saturate (or overflow the intermediate) goes through the general kernel instead.

_CHUNK = 1 << 16          # elements per step: the chunk and its work buffers stay in L2 cache
_U32 = np.uint32
_SIGN = _U32(0x80000000)
_ABS = _U32(0x7FFFFFFF)
_EXP = _U32(0x7F800000)
_HALF_MINUS_BITS = _U32(np.float32(np.nextafter(np.float32(0.5), np.float32(0))).view(_U32))
_scratch = threading.local()


class _Work:
    """Two uint32 work buffers of one chunk and their typed views, per thread (layers may run
    in any thread). The views of a full chunk are made once: a kernel step is a few
    microseconds of work, so creating views on every step would be a noticeable cost."""

    def __init__(self):
        self.u = np.empty(_CHUNK, _U32)
        self.w = np.empty(_CHUNK, _U32)
        self.full = self._views(_CHUNK)

    def views(self, n: int) -> tuple:
        return self.full if n == _CHUNK else self._views(n)

    def _views(self, n: int) -> tuple:
        u, w = self.u[:n], self.w[:n]
        return u, u.view(np.int32), u.view(np.float32), w, w.view(np.int32), w.view(np.float32)


def _work() -> _Work:
    work = getattr(_scratch, "work", None)
    if work is None:
        work = _scratch.work = _Work()
    return work


class _ActivationTrimmer:
    """In-place trimming of an activation array with one format, rounding and semantics."""

    def __init__(self, fmt, stochastic: bool, semantics: str):
        self.fmt, self.stochastic, self.semantics = fmt, stochastic, semantics
        self.kernel = None if stochastic else self._fast_kernel(fmt, semantics == "caffe-cpu")

    def __call__(self, a: np.ndarray, rng) -> None:
        kernel = self.kernel
        if kernel is None or a.dtype != np.float32 or not a.flags.c_contiguous:
            _trim(self.fmt, a, a, self.stochastic, self.semantics, rng)
            return
        flat = a.reshape(-1)
        n = flat.size
        if n == 0:
            return
        bits = flat.view(_U32)
        work = _work()
        # Overflow, underflow and NaN are the intended IEEE results (as in the general kernels).
        with np.errstate(all="ignore"):
            if n <= _CHUNK:
                kernel(flat, bits, work.views(n))
                return
            for start in range(0, n, _CHUNK):
                stop = min(start + _CHUNK, n)
                kernel(flat[start:stop], bits[start:stop], work.views(stop - start))

    def _general(self, c: np.ndarray) -> None:
        self.fmt.trim(c, "nearest", semantics=self.semantics, out=c)

    def _fast_kernel(self, fmt, cpu: bool):
        if isinstance(fmt, DynamicFixedPoint) and fmt.bw >= 2 and abs(fmt.fl) <= 126:
            return self._dfp_kernel(fmt, cpu)
        if isinstance(fmt, Minifloat):
            m = fmt.mant_bits
            if cpu and 0 <= m <= 22:
                return self._minifloat_cpu_kernel(fmt)
            if not cpu and 1 <= m <= 21:
                return self._minifloat_kernel(fmt)
        return None

    # Each kernel trims one chunk ``c`` in place (``cb``: its bits; ``v``: work views).

    def _dfp_kernel(self, fmt, cpu: bool):
        """clip, scale by 2^fl, round, scale back: the general kernel's steps. "ristretto"
        clips with CUDA's fminf/fmaxf (a NaN becomes the upper bound): NumPy's fmin/fmax, given
        arrays of the bounds (their SIMD loops need two array operands). "caffe-cpu" clips with
        std::min/max (NaN stays NaN) and rounds with C round(), trunc(v + copysign(0.49999997,
        v)), the sign copied by integer operations."""
        lo, hi = _dfp_bounds(fmt.bw, fmt.fl, cpu)
        scale, inv = np.float32(2.0**fmt.fl), np.float32(2.0**-fmt.fl)
        lo_full, hi_full = np.full(_CHUNK, lo, np.float32), np.full(_CHUNK, hi, np.float32)

        # Clipping is the costliest step, and activations mostly lie in range (quantize sizes
        # the range from the data): two reductions confirm that for half the cost. A NaN
        # makes max() NaN, so its chunk is clipped.
        def kernel_cpu(c, cb, v):
            h, hf = v[0], v[2]
            if not (c.max() <= hi and c.min() >= lo):
                np.clip(c, lo, hi, out=c)
            np.multiply(c, scale, out=c)
            np.bitwise_and(cb, _SIGN, out=h)
            np.bitwise_or(h, _HALF_MINUS_BITS, out=h)
            np.add(c, hf, out=c)
            np.trunc(c, out=c)
            np.multiply(c, inv, out=c)

        def kernel(c, cb, v):
            n = c.size
            if not (c.max() <= hi and c.min() >= lo):
                np.fmin(c, hi_full if n == _CHUNK else hi_full[:n], out=c)
                np.fmax(c, lo_full if n == _CHUNK else lo_full[:n], out=c)
            np.multiply(c, scale, out=c)
            np.rint(c, out=c)
            np.multiply(c, inv, out=c)

        return kernel_cpu if cpu else kernel

    def _minifloat_kernel(self, fmt):
        """Round half to even on the mantissa: ``(x + M) - M`` rounds x to m mantissa bits (ties
        to even, a carry moves into the exponent) when M = 1.5 * 2^(e + 23 - m) for x's binade e
        and 1 <= m <= 21. Elements below 2^-bias get a huge M instead, which absorbs them: the
        result is +0.0. M's bit pattern is the exponent field plus a constant."""
        m = fmt.mant_bits
        consts = _minifloat_consts(m, fmt.exp_bits)
        # Largest exponent field handled here: below saturation, and M must stay finite.
        top = min((consts.sat_in >> 23) - 1, 231 + m, 254)
        # The huge M's half unit, 2^(top - 128 - m), must reach the underflow threshold
        # 2^(zero_e - 127); otherwise the general kernel does the work.
        if top < (consts.zero_in >> 23) + 1 + m:
            return None
        top_bits = _U32(top << 23)
        magic = ((23 - m) << 23) + (1 << 22)
        # u - zero_in + 2^31 (mod 2^32), read as int32: the exponents from zero_e up map in
        # order onto [-2^31, cap], the underflowing ones above it; a signed minimum moves them
        # to cap (the top exponent), and adding back gives M's bits. The minimum takes an array:
        # NumPy's SIMD loop needs two array operands.
        shift = _U32((2**31 - consts.zero_in) % 2**32)
        cap_full = np.full(_CHUNK, (top << 23) - consts.zero_in - 2**31, np.int32)
        back = _U32((consts.zero_in + magic + 2**31) % 2**32)
        general = self._general

        def kernel(c, cb, v):
            u, ui, uf = v[:3]
            np.bitwise_and(cb, _EXP, out=u)
            if u.max() > top_bits:                  # saturation, inf, NaN
                general(c)
                return
            np.add(u, shift, out=u)
            np.minimum(ui, cap_full if c.size == _CHUNK else cap_full[:c.size], out=ui)
            np.add(u, back, out=u)
            np.add(c, uf, out=c)
            np.subtract(c, uf, out=c)

        return kernel

    def _minifloat_cpu_kernel(self, fmt):
        """Round half up on the mantissa field (C round() of a non-negative value) by adding
        half a unit and clearing the cut bits; elements below 2^-bias become +0.0."""
        k = 23 - fmt.mant_bits
        consts = _minifloat_consts(fmt.mant_bits, fmt.exp_bits)
        sat_in = _U32(min(consts.sat_in, 0x7F800000))   # exp_bits >= 8: only inf and NaN
        keep_below = _U32(consts.zero_in - 1)
        half = _U32(1 << (k - 1))
        keep_bits = _U32((0xFFFFFFFF >> k) << k)
        general = self._general

        def kernel(c, cb, v):
            u, _, _, w, wi, _ = v
            np.bitwise_and(cb, _ABS, out=u)
            if u.max() >= sat_in:                   # saturation, inf, NaN
                general(c)
                return
            np.subtract(keep_below, u, out=w)
            np.right_shift(wi, 31, out=wi)          # all ones where x is representable
            np.add(cb, half, out=cb)
            np.bitwise_and(cb, keep_bits, out=cb)
            np.bitwise_and(cb, w, out=cb)           # underflow -> +0.0

        return kernel


_COMPARE_CHUNK = 1 << 20   # words per comparison step: the boolean result stays in cache


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (so -0.0 differs from 0.0 and a NaN equals itself). Bound by memory
    reads for big weights; comparing in steps keeps the boolean temporary out of memory and
    stops at the first difference."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.nbytes <= 32768:                 # small (biases): a byte-string compare is quickest
        return a.tobytes() == b.tobytes()
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        unit = np.dtype(f"u{a.dtype.itemsize}")
        return bool(np.array_equal(a.view(unit), b.view(unit)))
    unit = np.uint64 if a.nbytes % 8 == 0 else np.dtype(f"u{a.dtype.itemsize}")
    a, b = a.reshape(-1).view(unit), b.reshape(-1).view(unit)
    if a.size <= _COMPARE_CHUNK:
        return bool(np.array_equal(a, b))
    buf = getattr(_scratch, "equal", None)
    if buf is None:
        buf = _scratch.equal = np.empty(_COMPARE_CHUNK, bool)
    for start in range(0, a.size, _COMPARE_CHUNK):
        stop = min(start + _COMPARE_CHUNK, a.size)
        eq = buf[:stop - start]
        np.equal(a[start:stop], b[start:stop], out=eq)
        if not eq.all():
            return False
    return True


class _Plan:
    """A layer's formats under one semantics, with its activation trimmers made once."""

    def __init__(self, formats: LayerFormats, semantics: str):
        self.formats = formats
        self.inputs = self.outputs = None
        if formats.inputs is not None:
            self.inputs = _ActivationTrimmer(formats.inputs, formats.stochastic, semantics)
        if formats.outputs is not None:
            self.outputs = (self.inputs if formats.outputs == formats.inputs else
                            _ActivationTrimmer(formats.outputs, formats.stochastic, semantics))


class _RistrettoMixin:
    """Quantization for the convolution and inner-product layers (set up after the base)."""
    writes_bottoms = True       # TEST trims the bottoms in place

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        qp = self.param.quantization_param
        extra = [f for f in ("bw_bias_params", "fl_bias_params") if qp.HasField(f)]
        if extra:  # fields of a modified Ristretto that some published prototxts carry
            logger.warning("layer '%s': quantization_param %s ignored: unknown to Ristretto; the bias "
                           "is trimmed with the weights' format", self.name, ", ".join(extra))
        self._plan_for = None
        self._plan()                     # format errors surface at setup
        self._trimmed: list = [None, None]    # the trimmed weight / bias copies
        self._snapshot: list = [None, None]   # shadow weights they were made from
        self._snapshot_plan: list = [None, None]  # ... and under which formats and semantics
        self._snapshot_frozen: list = [None, None]  # (frozen token, array) last checked in

    def _plan(self) -> _Plan:
        if self._plan_for != self.semantics:
            try:
                formats = layer_formats(self.param.quantization_param, self.semantics)
            except (ValueError, TypeError) as exc:
                raise self.error(str(exc)) from None
            self._plan_obj = _Plan(formats, self.semantics)
            self._plan_for = self.semantics
        return self._plan_obj

    @property
    def formats(self) -> LayerFormats:
        """The number formats of this layer under its current semantics."""
        return self._plan().formats

    # ----------------------------------------------------------------- weights
    def forward_weights(self):
        plan = self._plan()
        f = plan.formats
        w = self._trimmed_param(0, f.weights, plan)
        if not self.bias_term:
            return w, None
        if f.bias is None:               # power-of-two weights: the bias stays full precision
            return w, self.blobs[1].data
        return w, self._trimmed_param(1, f.bias, plan)

    def _trimmed_param(self, i: int, fmt, plan: _Plan) -> np.ndarray:
        src = self.blobs[i].data
        dst = self._trimmed[i]
        if dst is None or dst.shape != src.shape or dst.dtype != src.dtype:
            dst = self._trimmed[i] = np.empty(src.shape, src.dtype)
            self._snapshot[i] = None
        if self.phase == TRAIN or plan.formats.stochastic:
            self._snapshot[i] = None          # re-drawn on every forward
            return _trim(fmt, src, dst, True, self.semantics, self.rng)
        snap = self._snapshot[i]
        frozen = self.frozen_params
        if snap is not None and self._snapshot_plan[i] is plan:
            seen = self._snapshot_frozen[i]
            if frozen is not None and seen is not None and seen[0] is frozen and seen[1] is src \
                    and not src.flags.writeable:
                return dst                    # checked earlier in this read-only stretch
            if _same_bits(snap, src):
                self._snapshot_frozen[i] = (frozen, src) if frozen is not None else None
                return dst
        _trim(fmt, src, dst, False, self.semantics, None)
        if snap is None:
            snap = self._snapshot[i] = np.empty(src.shape, src.dtype)
        np.copyto(snap, src)
        self._snapshot_plan[i] = plan
        self._snapshot_frozen[i] = (frozen, src) if frozen is not None else None
        return dst

    # ----------------------------------------------------------------- activations
    def _trim_blobs(self, blobs, trimmer, what: str) -> None:
        if trimmer is None:
            return
        for blob in blobs:
            data = blob.data
            if not data.flags.writeable:
                raise self.error(f"cannot trim the {what} blob '{blob.name}' in place: it is read-only")
            trimmer(data, self.rng)

    def forward_cpu(self, bottom, top):
        plan = self._plan()
        if self.phase != TEST:
            super().forward_cpu(bottom, top)
            return
        if self._fuse_trimming(bottom, plan):
            # Convolutions: trim each batch chunk while it is in cache, the bottom chunk just
            # before it is used, the top chunk just after its bias. Element by element this is
            # what trimming the whole arrays before and after does (NEAREST only: then
            # trimming an aliased bottom twice is harmless, as it is for the whole arrays).
            rng = self.rng
            self.chunk_input = None if plan.inputs is None else (lambda a: plan.inputs(a, rng))
            self.chunk_output = None if plan.outputs is None else (lambda a: plan.outputs(a, rng))
            try:
                super().forward_cpu(bottom, top)
            finally:
                self.chunk_input = self.chunk_output = None
            return
        self._trim_blobs(bottom, plan.inputs, "bottom")
        if plan.outputs is not None:
            self.rectify_top = False    # a fused ReLU would come before the top's trimming
        super().forward_cpu(bottom, top)
        self._trim_blobs(top, plan.outputs, "top")

    def _fuse_trimming(self, bottom, plan: _Plan) -> bool:
        if not hasattr(self, "chunk_input") or plan.formats.stochastic:
            return False
        if not all(b.data.flags.writeable and b.data.flags.c_contiguous and b.data.dtype == np.float32
                   for b in bottom):
            return False
        # Ristretto trims every bottom before any top: bottoms sharing memory (Split tops of one
        # blob) must all be trimmed first, since trimming twice is not always idempotent.
        datas = [b.data for b in bottom]
        return not any(np.may_share_memory(a, b) for i, a in enumerate(datas) for b in datas[i + 1:])

    @property
    def quantized_weights(self) -> list[np.ndarray]:
        """The trimmed weight (and bias, if trimmed) copies of the last forward pass."""
        return [t for t in self._trimmed if t is not None]


@register("ConvolutionRistretto")
class ConvolutionRistrettoLayer(_RistrettoMixin, ConvolutionLayer):
    """Convolution with Ristretto's trimming of weights and activations."""


@register("DeconvolutionRistretto")
class DeconvolutionRistrettoLayer(_RistrettoMixin, DeconvolutionLayer):
    """Deconvolution with Ristretto's trimming of weights and activations."""


@register("FcRistretto")
class FcRistrettoLayer(_RistrettoMixin, InnerProductLayer):
    """InnerProduct with Ristretto's trimming of weights and activations (1 bottom, 1 top)."""


@register("LRNRistretto")
class LRNRistrettoLayer(LRNLayer):
    """LRN across channels with every intermediate value trimmed to minifloat (NEAREST), in
    both phases, as Ristretto's GPU kernel computes it:

    ``acc`` = running channel sum of ``q(q(x)^2)`` from 0, trimmed after every add and subtract;
    ``scale = q(k + q(acc * alpha/n))``; ``y = q(q(x) * q(scale^-beta))``. The backward pass is
    the ordinary LRN backward on the untrimmed bottom with the trimmed ``scale`` and ``y``.
    """

    def layer_setup(self, bottom, top):
        super().layer_setup(bottom, top)
        qp = self.param.quantization_param
        precision = int(qp.precision)
        if precision in (DYNAMIC_FIXED_POINT, INTEGER_POWER_OF_2_WEIGHTS):
            raise self.error("LRN layer only supports minifloat")
        if precision != MINIFLOAT:
            raise self.error(f"Unknown precision mode: {precision}")
        if self.norm_region != ACROSS_CHANNELS:
            raise self.error("LRNRistretto supports only norm_region ACROSS_CHANNELS (Ristretto has no "
                             "quantized WITHIN_CHANNEL LRN); use a plain LRN layer for WITHIN_CHANNEL")
        try:
            self.minifloat = Minifloat(qp.mant_bits, qp.exp_bits)
        except (ValueError, TypeError) as exc:
            raise self.error(str(exc)) from None

    def _q(self, a: np.ndarray) -> np.ndarray:
        """Trim ``a`` in place. The GPU kernel rounds to nearest even in either semantics."""
        trimmer = getattr(self, "_trimmer", None)
        if trimmer is None or trimmer.fmt != self.minifloat:
            trimmer = self._trimmer = _ActivationTrimmer(self.minifloat, False, "ristretto")
        trimmer(a, None)
        return a

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        t = x.dtype.type
        q = self._q
        xq = q(x.copy())
        squares = q(xq * xq)
        acc = running_channel_sum(squares, self.size, t(0), trim=q)
        acc *= t(self.alpha) / t(self.size)
        scale = q(q(acc) + t(self.k))
        self.scale = scale
        # A coarse format can round the scale to 0 or below it: pow then gives inf or NaN, as
        # in the original, and trimming saturates those.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            self.scale_power = powf(scale, t(-self.beta))   # the backward uses it untrimmed
            y = q(q(self.scale_power.copy()) * xq)
        top[0].data[...] = y

    def backward_cpu(self, top, propagate_down, bottom):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            super().backward_cpu(top, propagate_down, bottom)
