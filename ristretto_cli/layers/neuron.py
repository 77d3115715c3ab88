"""Element-wise (neuron) layers: one bottom, one top of the same shape.

The arithmetic follows Caffe's CPU loops operation by operation, in the data's dtype, so that
float32 nets round where Caffe rounds. Two kinds of step are evaluated in double and rounded once:
transcendental functions of a float (Caffe calls libm's ``expf``/``tanhf``/``powf``, which are
correctly rounded in nearly all cases, while NumPy's float32 SIMD kernels are often an ulp
away), and the places where Caffe's own expression is double (``0.5 * tanh(0.5 * x)`` in
Sigmoid, the ``1.`` literals in BNLL, Sigmoid and Swish backward).

In place (``top[0] is bottom[0]``) every forward writes into the bottom's array, and every
backward overwrites the shared gradient, as Caffe's shared memory does. Backward passes read
the bottom data exactly as Caffe does, so in place they see the *output*: correct for ReLU,
ELU, Sigmoid, TanH, Exp, Dropout and Swish; PReLU caches its input like Caffe; Power, Log, BNLL
and Clip reproduce Caffe's (mathematically wrong) in-place gradients. Power and Log in place
also lose dy as Caffe does: it writes the local derivative d over the shared gradient and then
multiplies by it, so dx = d * d (``_times_dy``).
"""

from __future__ import annotations

import math

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.layers.base import TRAIN, Layer
from ristretto_cli.layers.im2col import filled, scratch
from ristretto_cli.layers.registry import register


def in_double(func, src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[...] = func(src)`` evaluated in double and rounded once to ``out``'s dtype.

    Overflow to inf and NaN for arguments outside the domain are the IEEE results that Caffe
    produces silently, so NumPy's warnings about them are suppressed."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if src.dtype == np.float64 and out.dtype == np.float64:
            return func(src, out=out)
        t = src.astype(np.float64)
        func(t, out=t)
        np.copyto(out, t, casting="same_kind")
    return out


def _scalar_in_double(func, value, dt):
    """A libm function of one parameter, rounded to the data's dtype (Caffe's ``log(base)``)."""
    return dt(func(np.float64(value)))


def _c_pow(base: np.ndarray, exponent: float) -> np.ndarray:
    """``base = pow(base, exponent)`` in place on a float64 array, with C's ``pow`` semantics."""
    fix_neg_inf = None
    if exponent == 0.5 and not np.min(base, initial=0.0) > -np.inf:
        # NumPy evaluates x**0.5 as sqrt(x); C's pow(-inf, 0.5) is +inf, sqrt's is NaN.
        fix_neg_inf = np.isneginf(base)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        np.power(base, exponent, out=base)
    if exponent == 0.5:
        base += 0.0  # pow(-0, 0.5) is +0 (sqrt keeps the sign); adding +0 changes nothing else
        if fix_neg_inf is not None:
            base[fix_neg_inf] = np.inf
    return base


def _times_dy(top, bottom, dy: np.ndarray, d: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * d``; in place ``d * d``: Caffe's Power and Log store d in the shared
    gradient array, then multiply it by the top gradient, which is now d itself."""
    np.multiply(d if top[0] is bottom[0] else dy, d, out=dx)


class NeuronLayer(Layer):
    """Common shape logic: the top has the bottom's shape and dtype."""
    exact_bottoms = 1
    exact_tops = 1

    def reshape(self, bottom, top):
        x, t = bottom[0].data, top[0]
        if t is not bottom[0] and (t.data.shape != x.shape or t.data.dtype != x.dtype):
            t.data = np.zeros(x.shape, x.dtype)
            if t.has_diff and t.diff.dtype != x.dtype:
                t.diff = np.zeros(x.shape, x.dtype)

    @staticmethod
    def bottom_grad(top, bottom) -> np.ndarray:
        """The array that receives the bottom gradient: in place the shared gradient array, which
        is also dy and so may only be written by the final element-wise step; else a new array."""
        if top[0] is bottom[0]:
            return top[0].diff
        dx = np.empty_like(bottom[0].data)
        bottom[0].diff = dx
        return dx

    @staticmethod
    def scratch(dx: np.ndarray, top, bottom) -> np.ndarray:
        """Room for the local derivative: dx itself unless dx still holds dy (in place)."""
        return np.empty_like(dx) if top[0] is bottom[0] else dx


# --------------------------------------------------------------------------- rectifiers
#: Element-wise passes go block by block of at most this many elements (each block's passes
#: in the cache: 1 MB of float32), the blocks as even as possible and shared among the threads
#: when there are PARALLEL_MIN_ELEMENTS for each of two threads at least. Blocks of 64 K
#: elements were 1.1-1.5x slower for a ReLU's gradient at 1 and at 2 threads (a NumPy call
#: per array per block).
BLOCK_ELEMENTS = 1 << 18
PARALLEL_MIN_ELEMENTS = 1 << 18


def run_blocks(n: int, step: int, size: int, work) -> None:
    """``work(i0, i1)`` over blocks of at most ``step`` items covering ``0..n`` (``size``
    elements in all), shared among the threads where that is worth it."""
    parallel.for_even_blocks(n, step, work, size >= 2 * PARALLEL_MIN_ELEMENTS)


def _flat_blocks(n: int, work) -> None:
    """``work(i0, i1)`` over cache-sized blocks covering ``0..n``, shared among the threads."""
    run_blocks(n, BLOCK_ELEMENTS, n, work)


def each_block(arrays, work) -> bool:
    """``work(*blocks)`` over matching cache-sized blocks of same-shaped arrays, shared among
    the threads: runs of the flat arrays where all are contiguous, else runs of whole rows of
    the first axis where every row is contiguous (a Concat's slot of its top). False, doing
    nothing, where neither holds."""
    if all(a.flags.c_contiguous for a in arrays):
        flats = [a.reshape(-1) for a in arrays]
        _flat_blocks(flats[0].size, lambda i0, i1: work(*(f[i0:i1] for f in flats)))
        return True
    rows = []
    for a in arrays:
        v = a.view()
        try:
            v.shape = (a.shape[0] if a.ndim else 1, -1)
        except AttributeError:      # rows that are not contiguous
            return False
        if v.strides[-1] != v.itemsize:
            return False
        rows.append(v)
    n, length = rows[0].shape
    run_blocks(n, max(1, BLOCK_ELEMENTS // max(1, length)), n * length,
            lambda r0, r1: work(*(r[r0:r1] for r in rows)))
    return True


def gate_gradient(y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``dx = dy * (y > 0)``: the gradient through a ReLU (negative_slope 0) whose input or
    output is ``y`` (the same sign). Multiplied, as Caffe does, not selected: an infinite
    ``dy`` where ``y <= 0`` gives NaN. ``dx`` may be ``dy``."""
    mask = scratch("relu_mask", y.shape, np.bool_)
    np.greater(y, 0, out=mask)
    np.multiply(dy, mask, out=dx)


def gate_in_blocks(y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
    """``gate_gradient`` over cache-sized blocks, shared among the threads."""
    if not each_block((y, dy, dx), gate_gradient):
        np.multiply(dy, y > 0, out=dx)


def rectify(x: np.ndarray, y: np.ndarray) -> None:
    """``y = max(x, 0)``, where Caffe still adds 0 * min(x, 0): NaN for x = -inf (found
    cheaply first). ``y`` may be ``x``."""
    neg_inf = None
    if not np.min(x, initial=0.0) > -np.inf:
        neg_inf = np.isneginf(x)
    np.maximum(x, filled(0, x.shape, x.dtype), out=y)
    if neg_inf is not None:
        y[neg_inf] = np.nan


@register("ReLU")
class ReLULayer(NeuronLayer):
    """y = max(x, 0) + negative_slope * min(x, 0)."""
    writes_top_in_place = True

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        dt = x.dtype.type
        ns = dt(self.param.relu_param.negative_slope)
        if ns == 0:
            if not each_block((x, y), rectify):
                rectify(x, y)
            return
        neg = np.minimum(x, 0)
        neg *= ns
        np.maximum(x, 0, out=y)
        y += neg

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        # In place this is the output, whose sign is the input's: the mask is the same.
        x = bottom[0].data
        dy = top[0].diff
        dx = self.bottom_grad(top, bottom)
        ns = x.dtype.type(self.param.relu_param.negative_slope)
        if ns == 0:
            gate_in_blocks(x, dy, dx)
            return
        # (x > 0) + ns * (x <= 0): NaN inputs get 0, as in Caffe.
        work = self.scratch(dx, top, bottom)
        np.multiply(x <= 0, ns, out=work)
        work += x > 0
        np.multiply(dy, work, out=dx)


@register("PReLU")
class PReLULayer(NeuronLayer):
    """ReLU with a learned negative slope per channel (axis 1), or one shared slope."""

    def layer_setup(self, bottom, top):
        self._check_axes(bottom[0])
        p = self.param.prelu_param
        channels = bottom[0].shape[1]
        self.channel_shared = p.channel_shared
        if not self.blobs:
            filler = p.filler if p.HasField("filler") else None
            shape = () if self.channel_shared else (channels,)
            self.add_param_blob(shape, filler, default_filler="constant", default_value=0.25)
        if len(self.blobs) != 1:
            raise self.error(f"PReLU takes 1 parameter blob, got {len(self.blobs)}")
        # Caffe checks the element count only, so a loaded [1, C, 1, 1] slope blob is accepted.
        want = 1 if self.channel_shared else channels
        if self.blobs[0].count != want:
            raise self.error(f"Negative slope size is inconsistent with prototxt config: "
                             f"{self.blobs[0].count} values for "
                             f"{'a shared slope' if self.channel_shared else f'{channels} channels'}")
        self._cache: np.ndarray | None = None

    def _check_axes(self, blob):
        if blob.num_axes < 2:
            raise self.error(f"Number of axes of bottom blob must be >=2, got {blob.num_axes}")
        if blob.num_axes > 4:  # Caffe reads the channel count through the legacy 4-D accessor
            raise self.error(f"PReLU bottom has {blob.num_axes} axes; at most 4 are supported")

    def reshape(self, bottom, top):
        self._check_axes(bottom[0])
        if not self.channel_shared and bottom[0].shape[1] != self.blobs[0].count:
            raise self.error(f"bottom has {bottom[0].shape[1]} channels but the slope blob has "
                             f"{self.blobs[0].count} values")
        super().reshape(bottom, top)

    def _slopes(self, x: np.ndarray) -> np.ndarray:
        """The slopes broadcastable against x (N, C, ...)."""
        a = self.blobs[0].data.astype(x.dtype, copy=False)
        if self.channel_shared:
            return a.reshape(())
        return a.reshape((x.shape[1],) + (1,) * (x.ndim - 2))

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if top[0] is bottom[0]:
            # In place the backward needs the input, which the forward overwrites.
            if self._cache is None or self._cache.shape != x.shape or self._cache.dtype != x.dtype:
                self._cache = np.empty_like(x)
            np.copyto(self._cache, x)
        neg = np.minimum(x, 0)
        neg *= self._slopes(x)
        np.maximum(x, 0, out=y)
        y += neg

    def backward_cpu(self, top, propagate_down, bottom):
        x = self._cache if top[0] is bottom[0] else bottom[0].data
        dy = top[0].diff
        # The slope gradient first: in place, writing dx overwrites dy.
        if self.param_propagate_down and self.param_propagate_down[0]:
            g = np.multiply(dy, x)
            g *= x <= 0
            if self.channel_shared:
                total = g.sum()
            else:
                total = g.sum(axis=(0,) + tuple(range(2, x.ndim)))
            slope = self.blobs[0]
            slope.diff += total.reshape(slope.shape).astype(slope.diff.dtype, copy=False)
        if propagate_down[0]:
            dx = self.bottom_grad(top, bottom)
            work = self.scratch(dx, top, bottom)
            np.multiply(x <= 0, self._slopes(x), out=work)
            work += x > 0
            np.multiply(dy, work, out=dx)


@register("ELU")
class ELULayer(NeuronLayer):
    """y = max(x, 0) + alpha * (exp(min(x, 0)) - 1)."""

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        alpha = x.dtype.type(self.param.elu_param.alpha)
        t = np.minimum(x, 0)
        in_double(np.exp, t, t)
        t -= 1
        t *= alpha
        np.maximum(x, 0, out=y)
        y += t

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y = bottom[0].data, top[0].data  # in place both are y, which has x's sign
        dy = top[0].diff
        dx = self.bottom_grad(top, bottom)
        work = self.scratch(dx, top, bottom)
        alpha = x.dtype.type(self.param.elu_param.alpha)
        # (x > 0) + (alpha + y) * (x <= 0)
        np.add(y, alpha, out=work)
        work *= x <= 0
        work += x > 0
        np.multiply(dy, work, out=dx)


# --------------------------------------------------------------------------- squashing
def sigmoid_in_double(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Caffe's sigmoid: 0.5 * tanh(0.5 * x) + 0.5 evaluated in double, stored in out's dtype."""
    t = np.multiply(x, 0.5, dtype=np.float64)
    np.tanh(t, out=t)
    t *= 0.5
    t += 0.5
    np.copyto(out, t, casting="same_kind")
    return out


@register("Sigmoid")
class SigmoidLayer(NeuronLayer):
    """y = 1 / (1 + exp(-x)), as 0.5 * tanh(0.5 * x) + 0.5 in double."""

    def forward_cpu(self, bottom, top):
        sigmoid_in_double(bottom[0].data, top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dx = self.bottom_grad(top, bottom)
        # Caffe: dy * y * (1. - y): the first product in the dtype, the rest in double.
        t = np.subtract(1.0, y, dtype=np.float64)
        t *= np.multiply(dy, y)
        np.copyto(dx, t, casting="same_kind")


@register("TanH")
class TanHLayer(NeuronLayer):
    """y = tanh(x)."""

    def forward_cpu(self, bottom, top):
        in_double(np.tanh, bottom[0].data, top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dx = self.bottom_grad(top, bottom)
        work = self.scratch(dx, top, bottom)
        np.multiply(y, y, out=work)
        np.subtract(1, work, out=work)
        np.multiply(dy, work, out=dx)


@register("AbsVal")
class AbsValLayer(NeuronLayer):
    """y = |x|; dx = sign(x) * dy with sign(0) = 0. Not in place (Caffe forbids it)."""
    inplace_allowed = False

    def forward_cpu(self, bottom, top):
        np.abs(bottom[0].data, out=top[0].data)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x = bottom[0].data
        dx = self.bottom_grad(top, bottom)
        work = self.scratch(dx, top, bottom)
        # Caffe's sign is (0 < x) - (x < 0): 0 for NaN as well.
        np.subtract(x > 0, x < 0, out=work, dtype=x.dtype)
        np.multiply(work, top[0].diff, out=dx)


@register("BNLL")
class BNLLLayer(NeuronLayer):
    """Binomial normal log likelihood: y = log(1 + exp(x)), computed without overflow."""
    #: Caffe clamps the backward's exponent at this value.
    THRESHOLD = 50.0

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        # Caffe: x > 0 ? x + log(1. + exp(-x)) : log(1. + exp(x)); both branches are
        # m + log(1. + exp(-|x|)) with m = max(x, 0), exp rounded to the dtype, the rest double.
        e = np.abs(x)
        np.negative(e, out=e)
        in_double(np.exp, e, e)
        t = np.add(e, 1.0, dtype=np.float64)
        np.log(t, out=t)
        np.maximum(x, 0, out=e)
        t += e
        np.copyto(y, t, casting="same_kind")

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dy = bottom[0].data, top[0].diff
        dx = self.bottom_grad(top, bottom)
        work = self.scratch(dx, top, bottom)
        e = np.minimum(x, x.dtype.type(self.THRESHOLD), out=work)
        in_double(np.exp, e, e)
        # Caffe: dy * e / (e + 1.): the product in the dtype, the division in double.
        den = np.add(e, 1.0, dtype=np.float64)
        np.multiply(dy, e, out=e)
        np.divide(e, den, out=den)
        np.copyto(dx, den, casting="same_kind")


# --------------------------------------------------------------------------- power / exp / log
@register("Power")
class PowerLayer(NeuronLayer):
    """y = (shift + scale * x) ^ power."""

    def _params(self, dt):
        p = self.param.power_param
        power, scale, shift = dt(p.power), dt(p.scale), dt(p.shift)
        return power, scale, shift, power * scale

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        power, scale, shift, diff_scale = self._params(x.dtype.type)
        if diff_scale == 0:
            # The output does not depend on the input.
            if power == 0:
                y.fill(1)
            else:
                y.fill(_c_pow(np.array([shift], np.float64), float(power))[0])
            return
        if scale != 1:
            np.multiply(x, scale, out=y)
        elif y is not x:
            np.copyto(y, x)
        if shift != 0:
            y += shift
        if power != 1:
            if y.dtype == np.float64:
                _c_pow(y, float(power))
            else:
                np.copyto(y, _c_pow(y.astype(np.float64), float(power)), casting="same_kind")

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, y, dy = bottom[0].data, top[0].data, top[0].diff
        dt = x.dtype.type
        power, scale, shift, diff_scale = self._params(dt)
        dx = self.bottom_grad(top, bottom)
        if diff_scale == 0:
            dx.fill(0)  # Caffe sets 0 without multiplying by dy (so even NaN dy gives 0)
            return
        if power == 1:
            _times_dy(top, bottom, dy, diff_scale, dx)  # in place: diff_scale * diff_scale
            return
        work = self.scratch(dx, top, bottom)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if power == 2:
                # 2 * scale * (shift + scale * x), as diff_scale * scale * x + diff_scale * shift
                np.multiply(x, diff_scale * scale, out=work)
                if shift != 0:
                    work += diff_scale * shift
            elif shift == 0:
                # power * y / x: a shortcut with a real discontinuity at x = 0 (inf / NaN)
                np.divide(y, x, out=work)
                work *= power
            else:
                if scale != 1:
                    np.multiply(x, scale, out=work)
                else:
                    np.copyto(work, x)
                work += shift
                np.divide(y, work, out=work)
                if diff_scale != 1:
                    work *= diff_scale
            _times_dy(top, bottom, dy, work, dx)


def _log_base(layer: Layer, base: float, dt):
    """ln(base) as Exp and Log compute it (exactly 1 for base -1, meaning e), with their checks."""
    if base != -1 and not base > 0:
        raise layer.error(f"base must be strictly positive (or -1 for e), got {base:g}")
    log_base = dt(1) if base == -1 else _scalar_in_double(np.log, dt(base), dt)
    if math.isnan(log_base):
        raise layer.error(f"NaN result: log(base) = log({base:g}) = {log_base:g}")
    if math.isinf(log_base):
        raise layer.error(f"Inf result: log(base) = log({base:g}) = {log_base:g}")
    return log_base


@register("Exp")
class ExpLayer(NeuronLayer):
    """y = base ^ (shift + scale * x), computed as outer * exp(inner * x)."""

    def layer_setup(self, bottom, top):
        self._scales(bottom[0].data.dtype.type)  # validates the parameters

    def _scales(self, dt):
        p = self.param.exp_param
        base, scale, shift = dt(p.base), dt(p.scale), dt(p.shift)
        inner = _log_base(self, float(base), dt) * scale
        if shift == 0:
            outer = dt(1)
        elif base != -1:
            outer = dt(_c_pow(np.array([base], np.float64), float(shift))[0])
        else:
            outer = _scalar_in_double(np.exp, shift, dt)
        return inner, outer

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        inner, outer = self._scales(x.dtype.type)
        if inner == 1:
            in_double(np.exp, x, y)
        else:
            np.multiply(x, inner, out=y)
            in_double(np.exp, y, y)
        if outer != 1:
            with np.errstate(over="ignore", invalid="ignore"):
                y *= outer

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dx = self.bottom_grad(top, bottom)
        inner, _ = self._scales(y.dtype.type)
        with np.errstate(over="ignore", invalid="ignore"):
            np.multiply(y, dy, out=dx)
            if inner != 1:
                dx *= inner


@register("Log")
class LogLayer(NeuronLayer):
    """y = log_base(shift + scale * x)."""

    def layer_setup(self, bottom, top):
        self._scales(bottom[0].data.dtype.type)  # validates the parameters

    def _scales(self, dt):
        p = self.param.log_param
        base = dt(p.base)
        log_base = _log_base(self, float(base), dt)
        with np.errstate(divide="ignore"):
            base_scale = dt(1) / log_base
        if math.isinf(base_scale):
            raise self.error(f"Inf result: 1/log(base) = 1/log({base:g}) = {base_scale:g}")
        scale, shift = dt(p.scale), dt(p.shift)
        return base_scale, scale, shift, scale / log_base

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        base_scale, scale, shift, _ = self._scales(x.dtype.type)
        if scale != 1:
            np.multiply(x, scale, out=y)
        elif y is not x:
            np.copyto(y, x)
        if shift != 0:
            y += shift
        in_double(np.log, y, y)
        if base_scale != 1:
            y *= base_scale

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dy = bottom[0].data, top[0].diff
        _, scale, shift, num_scale = self._scales(x.dtype.type)
        dx = self.bottom_grad(top, bottom)
        work = self.scratch(dx, top, bottom)
        if scale != 1:
            np.multiply(x, scale, out=work)
        else:
            np.copyto(work, x)
        if shift != 0:
            work += shift
        with np.errstate(divide="ignore"):
            np.reciprocal(work, out=work)  # Caffe's powx(t, -1)
        if num_scale != 1:
            work *= num_scale
        _times_dy(top, bottom, dy, work, dx)


# --------------------------------------------------------------------------- others
@register("Threshold")
class ThresholdLayer(NeuronLayer):
    """y = 1 if x > threshold else 0. No backward, as in Caffe."""
    has_backward = False

    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        np.greater(x, x.dtype.type(self.param.threshold_param.threshold), out=top[0].data)


@register("Dropout")
class DropoutLayer(NeuronLayer):
    """TRAIN: y = x * m / (1 - ratio), m ~ Bernoulli(1 - ratio) drawn anew each forward.
    TEST: y = x."""

    def layer_setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        # Caffe: scale_ = 1. / (1. - threshold_) in double, stored in the dtype
        self.scale = math.inf if self.ratio == 1 else 1.0 / (1.0 - self.ratio)
        self.mask: np.ndarray | None = None

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != TRAIN:
            if y is not x:
                np.copyto(y, x)
            return
        keep = 1.0 - self.ratio
        if not 0 <= keep <= 1:
            raise self.error(f"dropout_ratio must be in [0, 1], got {self.ratio:g}")
        # float32 uniforms: the keep probability is off by < 2^-24, and the draw is half the size
        self.mask = self.rng.random(x.shape, dtype=np.float32) < keep
        np.multiply(x, self.mask, out=y)
        with np.errstate(invalid="ignore"):  # ratio 1: 0 * inf is NaN in Caffe too
            y *= x.dtype.type(self.scale)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy = top[0].diff
        if self.phase != TRAIN:
            if top[0] is not bottom[0]:
                bottom[0].diff = dy.copy()
            return
        dx = self.bottom_grad(top, bottom)
        np.multiply(dy, self.mask, out=dx)
        with np.errstate(invalid="ignore"):
            dx *= dy.dtype.type(self.scale)


@register("Clip")
class ClipLayer(NeuronLayer):
    """y = max(min, min(x, max)); dx = dy where min <= x <= max, else 0."""

    def layer_setup(self, bottom, top):
        p = self.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise self.error("Clip layer needs both clip_param.min and clip_param.max")

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        dt = x.dtype.type
        p = self.param.clip_param
        np.minimum(x, dt(p.max), out=y)
        # std::max(min, v) returns min when v is NaN: fmax ignores the NaN the same way.
        np.fmax(y, dt(p.min), out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        x, dy = bottom[0].data, top[0].diff
        dt = x.dtype.type
        p = self.param.clip_param
        dx = self.bottom_grad(top, bottom)
        inside = x >= dt(p.min)
        inside &= x <= dt(p.max)
        np.multiply(dy, inside, out=dx)


@register("Swish")
class SwishLayer(NeuronLayer):
    """y = x * sigmoid(beta * x), with Caffe's double-evaluated sigmoid."""

    def layer_setup(self, bottom, top):
        self._sig: np.ndarray | None = None

    def forward_cpu(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        sig = np.multiply(x, x.dtype.type(self.param.swish_param.beta))
        self._sig = sigmoid_in_double(sig, sig)  # kept for the backward
        np.multiply(x, sig, out=y)

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        y, dy = top[0].data, top[0].diff
        dx = self.bottom_grad(top, bottom)
        beta = y.dtype.type(self.param.swish_param.beta)
        # Caffe: dy * (beta * y + sig * (1. - beta * y)): beta * y in the dtype, the rest double.
        by = np.multiply(y, beta)
        t = np.subtract(1.0, by, dtype=np.float64)
        t *= self._sig
        t += by
        t *= dy
        np.copyto(dx, t, casting="same_kind")
