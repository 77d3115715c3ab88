"""Vectorised trimming kernels for Ristretto's three number formats.

Every function trims a float32 array element by element with the arithmetic of the original
C++/CUDA routines, bit for bit, but without a Python loop per element: large arrays are
processed in cache-sized chunks with a fixed sequence of NumPy ufuncs (float32 or uint32, no
float64 temporaries on the fast paths).

Two semantics are offered (see ``SEMANTICS``):

``"ristretto"`` (default)
    Ristretto's GPU path, which produced its published results: NEAREST is round-half-to-even
    (``rint``) for dynamic fixed point, the minifloat mantissa and the power-of-two exponent;
    fixed-point clip bounds are computed with ``powf`` in float32; ``fminf``/``fmaxf`` turn a
    NaN into the upper bound.
``"caffe-cpu"``
    Ristretto's CPU routines: NEAREST is C ``round`` (half away from zero); fixed-point bounds
    are computed in double and rounded to float32; NaN propagates.

In both semantics minifloat trims every element: the CPU routine's early return at the first
zero or underflowing element is a bug that is never reproduced (zero stays zero, underflow
gives +0.0).

STOCHASTIC rounding is ``floor(v + U)`` evaluated exactly, with one ``U`` per element (in C
order) drawn as ``rng.random(n, dtype=numpy.float32)``, i.e. a multiple of 2**-24 in [0, 1).
The same generator state therefore gives the same bits, independent of the memory layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, localcontext
from functools import lru_cache

import numpy as np

__all__ = [
    "SEMANTICS",
    "ROUNDINGS",
    "trim_dfp",
    "trim_minifloat",
    "trim_pow2",
    "DynamicFixedPoint",
    "Minifloat",
    "PowerOfTwo",
]

SEMANTICS = ("ristretto", "caffe-cpu")
ROUNDINGS = ("nearest", "stochastic")  # QuantizationParameter.Rounding: NEAREST = 0, STOCHASTIC = 1

_F32 = np.float32
_U32 = np.uint32
_CHUNK = 1 << 16  # 256 KiB per float32 buffer: the temporaries of one chunk stay in cache
_SIGN = 0x80000000
_ABS = 0x7FFFFFFF
_EXP_FIELD = 0x7F800000
_MANT_FIELD = 0x007FFFFF
_INF_BITS = 0x7F800000
_HALF_MINUS = _F32(np.nextafter(_F32(0.5), _F32(0)))  # 0.49999997f
_TWO24 = _F32(2.0**24)
_TWO_M24 = _F32(2.0**-24)


# --------------------------------------------------------------------------- argument checks
def _is_caffe_cpu(semantics: str) -> bool:
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown semantics {semantics!r}; expected one of {SEMANTICS}")
    return semantics == "caffe-cpu"


def _is_stochastic(rounding) -> bool:
    if isinstance(rounding, str):
        name = rounding.strip().lower()
        if name in ROUNDINGS:
            return name == "stochastic"
    elif isinstance(rounding, (int, np.integer)) and not isinstance(rounding, (bool, np.bool_)):
        if int(rounding) in (0, 1):
            return int(rounding) == 1
    raise ValueError(
        f"unknown rounding scheme {rounding!r}; expected 'nearest' (0) or 'stochastic' (1)")


def _int_param(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is out of range [{lo}, {hi}]")
    return value


def _check_rng(rng, stochastic: bool):
    if not stochastic:
        return None
    if rng is None:
        raise ValueError("stochastic rounding needs rng= (a numpy.random.Generator)")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return rng


# --------------------------------------------------------------------------- scalar helpers
def _to_f32(value: float) -> np.float32:
    """Round a double to float32 the way a C cast does (nearest even, overflow to inf)."""
    with np.errstate(over="ignore", under="ignore"):
        return _F32(value)


def _pow2_double(n: int) -> float:
    """C ``pow(2, n)`` in double precision, including overflow to inf and underflow to 0."""
    if n > 1023:
        return math.inf
    if n < -1074:
        return 0.0
    return math.ldexp(1.0, n)


def _pow2_float(n: int) -> np.float32:
    """``powf(2, n)``: the float32 nearest to 2**n (0 below 2**-150, inf from 2**128)."""
    return _to_f32(_pow2_double(n))


# --------------------------------------------------------------------------- chunk driver
class _Scratch:
    """Per-call work buffers, sliced to the length of the current chunk."""

    def __init__(self, n: int, n_f32: int, n_u32: int):
        size = min(n, _CHUNK)
        self.f = [np.empty(size, _F32) for _ in range(n_f32)]
        self.u = [np.empty(size, _U32) for _ in range(n_u32)]


def _run(x, out, rng, kernel: Callable, n_f32: int, n_u32: int) -> np.ndarray:
    """Apply ``kernel(src_chunk, dst_chunk, uniform_chunk, scratch, length)`` over x in C order.

    Handles dtype conversion, ``out`` (in place or any other float32 array of the same shape,
    contiguous or not) and draws one uniform per element, chunk by chunk, so the random
    stream is that of a single ``rng.random(x.size, dtype=float32)`` call.
    """
    src = np.asarray(x, dtype=_F32)
    if out is None:
        result = np.empty(src.shape, _F32)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy array, got {type(out).__name__}")
        if out.dtype != _F32:
            raise TypeError(f"out must have dtype float32, got {out.dtype}")
        if out.shape != src.shape:
            raise ValueError(f"out has shape {out.shape}, expected {src.shape}")
        if not out.flags.writeable:
            raise ValueError("out is read-only")
        result = out
    n = src.size
    if n == 0:
        return result

    target = result if result.flags.c_contiguous else np.empty(src.shape, _F32)
    dst = target.reshape(-1)
    same_memory = (src.flags.c_contiguous
                   and src.__array_interface__["data"][0] == target.__array_interface__["data"][0])
    if same_memory:
        flat_src = dst  # in place: each element is read before it is written
    elif src.flags.c_contiguous and not np.may_share_memory(src, target):
        flat_src = src.reshape(-1)
    else:
        np.copyto(target, src)  # strided or partly overlapping input: copy, then trim in place
        flat_src = dst

    scratch = _Scratch(n, n_f32, n_u32)
    uniform = np.empty(min(n, _CHUNK), _F32) if rng is not None else None
    # Overflow to inf, underflow to 0 and NaN are the intended IEEE results here.
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            m = stop - start
            u = None
            if uniform is not None:
                u = uniform[:m]
                rng.random(m, dtype=_F32, out=u)
            kernel(flat_src[start:stop], dst[start:stop], u, scratch, m)

    if target is not result:
        np.copyto(result, target)
    return result


def _floor_plus_uniform(v: np.ndarray, u: np.ndarray, w: np.ndarray) -> None:
    """``v = floor(v + u)`` exactly, in place, for float32 v and u = k * 2**-24 in [0, 1).

    A plain float32 ``v + u`` can round across an integer; instead ``q = floor24(frac(v))``
    (exact) is compared through ``floor(u + q)``: u + q < 1 is exact on the 2**-24 grid and
    rounding is monotone around 1, so the carry bit is exact. |v| must stay below 2**100
    (callers clamp), NaN propagates.
    """
    np.multiply(v, _TWO24, out=w)
    np.floor(w, out=w)
    np.multiply(w, _TWO_M24, out=w)  # w = floor(v) + floor24(frac(v))
    np.floor(v, out=v)
    np.subtract(w, v, out=w)  # q in [0, 1), exact
    np.add(w, u, out=w)
    np.floor(w, out=w)  # 0 or 1
    np.add(v, w, out=v)


# --------------------------------------------------------------------------- dynamic fixed point
def _dfp_bounds(bw: int, fl: int, caffe_cpu: bool) -> tuple[np.float32, np.float32]:
    """Clip bounds (lo, hi) exactly as the original computes them."""
    if caffe_cpu:  # Dtype max_data = (pow(2, bw - 1) - 1) * pow(2, -fl): double, then float
        p = _pow2_double(-fl)
        return _to_f32(-(2.0 ** (bw - 1)) * p), _to_f32((2.0 ** (bw - 1) - 1.0) * p)
    # GPU: (powf(2, bw - 1) - 1) * powf(2, -fl) in float32 (for bw > 25 the -1 is rounded away)
    p, q = _pow2_float(bw - 1), _pow2_float(-fl)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return _F32(-p * q), _F32((p - _F32(1)) * q)


def trim_dfp(x, bw: int, fl: int, rounding="nearest", *, semantics: str = "ristretto",
             rng: np.random.Generator | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Trim to dynamic fixed point DFP(bw, fl): multiples of 2**-fl in
    [-2**(bw-1) * 2**-fl, (2**(bw-1) - 1) * 2**-fl] (bounds as float32).

    ``x`` is converted to float32; ``out=x`` trims in place. NEAREST ties go to even
    ("ristretto") or away from zero ("caffe-cpu"). A NaN becomes the upper bound under
    "ristretto" (CUDA ``fminf``) and stays NaN under "caffe-cpu"; +-inf clip to the bounds.
    """
    bw = _int_param("bw", bw, 1, 64)
    fl = _int_param("fl", fl, -(2**31), 2**31 - 1)
    cpu = _is_caffe_cpu(semantics)
    stochastic = _is_stochastic(rounding)
    rng = _check_rng(rng, stochastic)
    lo, hi = _dfp_bounds(bw, fl, cpu)

    if abs(fl) > 126:  # 2**fl or 2**-fl is not a normal float32: follow the original literally
        return _run(x, out, rng, _dfp_literal_kernel(lo, hi, fl, cpu, stochastic), 1, 0)

    # For |fl| <= 126, x * 2**fl rounds the exact product once, exactly like the original
    # x / 2**-fl (float32 on the GPU; double then float on the CPU), and so does the way back.
    scale, inv = _F32(2.0**fl), _F32(2.0**-fl)

    def kernel(s, d, u, scr, m):
        # std::max(std::min(v, hi), lo): keeps NaN, and -0.0 when hi is +0.0 (bw = 1; CUDA
        # leaves the sign of that zero unspecified, we keep the CPU's)
        np.clip(s, lo, hi, out=d)
        if not cpu and np.isnan(s.max()):
            np.copyto(d, hi, where=np.isnan(d))  # fmaxf(fminf(NaN, hi), lo) = hi on the GPU
        np.multiply(d, scale, out=d)
        if stochastic:
            _floor_plus_uniform(d, u, scr.f[0][:m])
        elif cpu:
            # C round(): trunc(v + copysign(0.49999997f, v)) is exact for every float32 v
            # (v + 0.5 is not: 0.49999997 + 0.5 rounds up to 1).
            t = scr.f[0][:m]
            np.copysign(_HALF_MINUS, d, out=t)
            np.add(d, t, out=d)
            np.trunc(d, out=d)
        else:
            np.rint(d, out=d)
        np.multiply(d, inv, out=d)

    return _run(x, out, rng, kernel, 1, 0)


def _dfp_literal_kernel(lo, hi, fl, cpu, stochastic):
    """Extreme fl: the original's operations one by one (double on the CPU, float32 on the GPU)."""
    p64 = _pow2_double(-fl)
    p32 = _pow2_float(-fl)
    nan_value = hi if not np.isnan(hi) else lo  # fmaxf(fminf(NaN, hi), lo), lo <= hi

    def kernel(s, d, u, scr, m):
        with np.errstate(all="ignore"):
            # std::max(std::min(v, hi), lo) literally (a NaN bound compares false, and for
            # bw = 1 the bound hi = 0 * inf is NaN); fmaxf(fminf(.)) only differs for a NaN v
            d[...] = np.where(hi < s, hi, s)
            d[...] = np.where(d < lo, lo, d)
            if cpu:
                d[...] = d.astype(np.float64) / p64
            else:
                d[np.isnan(s)] = nan_value
                np.divide(d, p32, out=d)
            if stochastic:
                big = ~(np.abs(d) < 2.0**23)  # already integral, or inf/NaN: floor(v + U) = v
                keep = d[big]
                d[big] = 0
                _floor_plus_uniform(d, u, scr.f[0][:m])
                d[big] = keep
            elif cpu:
                np.trunc(d + np.copysign(_HALF_MINUS, d), out=d)
            else:
                np.rint(d, out=d)
            if cpu:
                d[...] = d.astype(np.float64) * p64
            else:
                np.multiply(d, p32, out=d)

    return kernel


# --------------------------------------------------------------------------- minifloat
@dataclass(frozen=True)
class _MinifloatConsts:
    bias: int
    zero_in: int  # magnitudes (bits) below this become +0.0
    sat_in: int  # magnitudes (bits) from this on saturate
    sat_bits: int  # magnitude bits of the saturated value (inf when there is no saturation)
    k: int  # mantissa bits cut off (23 - m, at most 0 means nothing is cut)


@lru_cache(maxsize=1024)
def _minifloat_consts(m: int, e: int) -> _MinifloatConsts:
    bias = 2 ** (e - 1) - 1
    max_exp = 2**e - 1
    max_mant = 2**m - 1
    # ex = E - 127 + bias < 0 underflows; E == 0 (zero, float32 denormal) too
    zero_e = max(1, 127 - bias)
    # ex > max_exp saturates, i.e. E > max_exp + 127 - bias
    sat_e = max_exp + 127 - bias + 1
    if sat_e <= 255:
        # (-1)^s * ((max_mant + 2^m) / 2^m) * 2^(max_exp - bias): double, then float
        value = (float(max_mant) + float(2**m)) / float(2**m) * _pow2_double(max_exp - bias)
        sat_bits = int(_to_f32(value).view(_U32))
        sat_in = sat_e << 23
    else:
        # exp_bits >= 8: nothing saturates; E == 255 (inf, NaN) gives 2^128 * (1 + ...) -> inf
        sat_bits = _INF_BITS
        sat_in = _INF_BITS
    return _MinifloatConsts(bias, zero_e << 23, sat_in, sat_bits, 23 - m)


def trim_minifloat(x, mant_bits: int, exp_bits: int, rounding="nearest", *,
                   semantics: str = "ristretto", rng: np.random.Generator | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Trim to minifloat MF(mant_bits, exp_bits): ``+-(1 + k/2^m) * 2^(j - bias)``,
    ``bias = 2^(e-1) - 1``, j = 0 .. 2^e - 1, no subnormals, no inf/NaN codes.

    Each element: |x| < 2^-bias (and zero, float32 denormals) -> +0.0; a biased exponent above
    2^e - 1 saturates to exponent 2^e - 1 and mantissa 2^m - 1 (inf and NaN included); else
    the mantissa is rounded to m bits. A rounding carry into the next binade is kept as the
    original does, even above the nominal maximum (it is not re-saturated). The work is done
    on the float32 bit pattern with integer operations.
    """
    m = _int_param("mant_bits", mant_bits, 0, 31)
    e = _int_param("exp_bits", exp_bits, 1, 31)
    cpu = _is_caffe_cpu(semantics)
    stochastic = _is_stochastic(rounding)
    rng = _check_rng(rng, stochastic)
    c = _minifloat_consts(m, e)
    k = c.k

    def kernel(s, d, u, scr, mlen):
        bits = s.view(_U32)
        r = d.view(_U32)
        mag, t, t2, sign = (b[:mlen] for b in scr.u)
        np.bitwise_and(bits, _ABS, out=mag)
        saturating = mag.max() >= c.sat_in  # rare
        if saturating:  # keep the signs: with out=x the bits are overwritten below
            np.bitwise_and(bits, _SIGN, out=sign)
        if k <= 0:  # 23 or more mantissa bits: nothing to round
            if s.__array_interface__["data"][0] != d.__array_interface__["data"][0]:
                np.copyto(r, bits)
        elif stochastic:
            # mant = floor(M / 2^k + U): carry iff (M mod 2^k) / 2^k + U >= 1, done in integers
            # with U = j / 2^24: ((M mod 2^k) << (24 - k)) + j >= 2^24.
            f = scr.f[0][:mlen]
            np.multiply(u, _TWO24, out=f)
            np.copyto(t2, f, casting="unsafe")  # j, exact
            np.bitwise_and(bits, (1 << k) - 1, out=t)
            np.left_shift(t, 24 - k, out=t)
            np.add(t, t2, out=t)
            np.right_shift(t, 24, out=t)
            np.left_shift(t, k, out=t)
            np.bitwise_and(bits, (0xFFFFFFFF >> k) << k, out=r)
            np.add(r, t, out=r)
        elif cpu:
            # round() on the mantissa (>= 0): half up; a carry moves into the exponent field
            np.add(bits, 1 << (k - 1), out=r)
            np.bitwise_and(r, (0xFFFFFFFF >> k) << k, out=r)
        elif k < 23:
            # rint() on the mantissa: half to even (bit k is the kept mantissa's last bit)
            np.right_shift(bits, k, out=t)
            np.bitwise_and(t, 1, out=t)
            np.add(t, bits, out=t)
            np.add(t, (1 << (k - 1)) - 1, out=t)
            np.bitwise_and(t, (0xFFFFFFFF >> k) << k, out=r)
        else:
            # no mantissa bits: the kept mantissa is 0 (even), so a tie rounds down
            np.add(bits, (1 << 22) - 1, out=r)
            np.bitwise_and(r, 0xFF800000, out=r)
        # Underflow: all-ones mask where mag >= zero_in (sign of zero_in - 1 - mag), else +0.0
        np.subtract(c.zero_in - 1, mag, out=t)
        ti = t.view(np.int32)
        np.right_shift(ti, 31, out=ti)
        np.bitwise_and(r, t, out=r)
        if saturating:  # replace saturated elements by sign | sat_bits
            np.subtract(c.sat_in - 1, mag, out=t)
            np.right_shift(ti, 31, out=ti)  # all-ones where mag >= sat_in
            np.bitwise_or(sign, c.sat_bits, out=t2)
            np.bitwise_xor(t2, r, out=t2)
            np.bitwise_and(t2, t, out=t2)
            np.bitwise_xor(r, t2, out=r)

    return _run(x, out, rng, kernel, 1 if stochastic else 0, 4)


# --------------------------------------------------------------------------- power of two
def _f32_ceil(value: Decimal) -> np.float32:
    """Smallest float32 >= value (value > 0, not itself a float32)."""
    with np.errstate(over="ignore", under="ignore"):
        f = _F32(float(value))
    up, down = _F32(np.inf), _F32(-np.inf)
    while Decimal(float(f)) < value:
        f = np.nextafter(f, up)
    while True:
        g = np.nextafter(f, down)
        if g > 0 and Decimal(float(g)) >= value:
            f = g
        else:
            return f


@lru_cache(maxsize=4096)
def _pow2_threshold(j: int, caffe_cpu: bool) -> int:
    """Bit pattern of the smallest float32 x > 0 whose NEAREST exponent is >= j.

    The exponent is ``round(log2f(x))`` with a correctly rounded float32 ``log2f`` (glibc's
    log2f agrees on every reference input; NumPy's float32 log2 is not correctly rounded on
    all platforms, so it is not used here). round(t) >= j iff t > j - 0.5, or t == j - 0.5 and
    the tie goes up: away from zero (C round) when j >= 1, to even (rint) when j is even.
    t = RN(log2 x) >= c iff log2 x >= the midpoint below c; > c iff log2 x > the midpoint above.
    log2 x is never exactly such a midpoint, so the threshold 2^midpoint is never a float32.
    """
    c = _F32(j - 0.5)
    tie_up = (j >= 1) if caffe_cpu else (j % 2 == 0)
    other = np.nextafter(c, _F32(-np.inf) if tie_up else _F32(np.inf))
    mid = (Decimal(float(c)) + Decimal(float(other))) / 2
    with localcontext() as ctx:
        ctx.prec = 50
        x = (mid * Decimal(2).ln()).exp()
    return int(_f32_ceil(x).view(_U32))


def _pow2_result_bits(e: int) -> int:
    """Bits of float(2^e) as the original stores it: pow(2, e) in double, then float."""
    return int(_to_f32(_pow2_double(e)).view(_U32))


@lru_cache(maxsize=256)
def _pow2_tables(exp_min: int, exp_max: int, caffe_cpu: bool):
    """(lo_bits, hi_bits, OFF) for the fast path, or None when outputs leave the normal range.

    Rounding the exponent is monotone in |x| and exact at powers of two, so clamping the
    exponent to [exp_min, exp_max] equals clamping |x| to [2^exp_min, 2^exp_max] first. In
    binade E the exponent rounds up iff the mantissa field M >= T[E]; adding OFF[E] = 2^23 -
    T[E] to the magnitude carries into the exponent field exactly then.
    """
    top = max(exp_min, exp_max)  # exp_min > exp_max: the original always yields exp_min
    if exp_min < -126 or top > 127:
        return None
    off = np.zeros(256, _U32)
    for j in range(exp_min + 1, top + 1):
        b = _pow2_threshold(j, caffe_cpu)
        biased = j - 1 + 127
        assert b >> 23 == biased, (j, hex(b))  # the threshold lies in binade j - 1
        off[biased] = (1 << 23) - (b & _MANT_FIELD)
    lo = (exp_min + 127) << 23
    hi = (top + 127) << 23 if exp_min <= exp_max else lo
    return lo, hi, off


@lru_cache(maxsize=256)
def _pow2_search_tables(exp_min: int, exp_max: int, caffe_cpu: bool):
    """General case: sorted thresholds B[i] for exponent exp_min + 1 + i, and result bits."""
    if exp_min > exp_max:
        return np.zeros(0, _U32), np.array([_pow2_result_bits(exp_min)], _U32)
    b = np.array([_pow2_threshold(j, caffe_cpu) for j in range(exp_min + 1, exp_max + 1)], _U32)
    res = np.array([_pow2_result_bits(j) for j in range(exp_min, exp_max + 1)], _U32)
    return b, res


def trim_pow2(x, exp_min: int, exp_max: int, rounding="nearest", *,
              semantics: str = "ristretto", rng: np.random.Generator | None = None,
              out: np.ndarray | None = None) -> np.ndarray:
    """Trim to integer powers of two P2(exp_min, exp_max): ``sign * 2^e``,
    ``e = clamp(round(log2f(|x|)), exp_min, exp_max)``, sign = -1 iff not (x >= 0).

    Zeros (log2 = -inf) become +2^exp_min, magnitudes beyond 2^exp_max saturate; the result
    is never 0. NEAREST rounds in the log domain (the threshold between 2^k and 2^(k+1) is
    where the float32 log2 reaches k + 0.5) and is evaluated exactly with precomputed
    thresholds. STOCHASTIC is ``floor(t + U)`` with ``t = numpy.log2(float32 |x|)``, whose
    last bit may differ from log2f on some platforms (this moves a rounding probability by
    less than 1e-6). A NaN stays NaN under "caffe-cpu" and gives -2^exp_max under
    "ristretto" (CUDA fminf/fmaxf drop the NaN).
    """
    emin = _int_param("exp_min", exp_min, -256, 256)
    emax = _int_param("exp_max", exp_max, -256, 256)
    cpu = _is_caffe_cpu(semantics)
    stochastic = _is_stochastic(rounding)
    rng = _check_rng(rng, stochastic)
    if stochastic:
        return _run(x, out, rng, _pow2_stochastic_kernel(emin, emax, cpu), 2, 2)

    tables = _pow2_tables(emin, emax, cpu)
    if tables is None:
        return _run(x, out, rng, _pow2_search_kernel(emin, emax, cpu), 0, 2)
    lo, hi, off = tables

    def kernel(s, d, u, scr, m):
        bits = s.view(_U32)
        r = d.view(_U32)
        mag, t, o = scr.u[0][:m], scr.u[1][:m], scr.u[2][:m]
        np.bitwise_and(bits, _ABS, out=mag)
        np.clip(mag, lo, hi, out=t)
        np.right_shift(t, 23, out=o)
        np.take(off, o, out=o, mode="wrap")  # indices are < 256; element-wise, so out=o is safe
        np.add(o, t, out=o)
        np.bitwise_and(o, _EXP_FIELD, out=o)
        _pow2_sign(bits, mag, o, r, t, cpu)

    return _run(x, out, rng, kernel, 0, 3)


def _pow2_sign(bits, mag, magnitude, r, t, cpu) -> None:
    """r = magnitude with the original's sign, ``x >= 0 ? 1 : -1`` (so -0.0 gives +);
    NaN inputs give NaN ("caffe-cpu") or a negative result ("ristretto")."""
    if mag.min() == 0:
        np.subtract(0, mag, out=t)  # top bit set iff mag != 0
        np.bitwise_and(t, bits, out=t)
        np.bitwise_and(t, _SIGN, out=t)
    else:
        np.bitwise_and(bits, _SIGN, out=t)
    np.bitwise_or(magnitude, t, out=r)
    if mag.max() > _INF_BITS:
        nan = np.flatnonzero(mag > _INF_BITS)
        if cpu:
            r[nan] = 0x7FC00000  # the C++ code computes NaN
        else:
            r[nan] |= _SIGN  # `x >= 0` is false for NaN


def _pow2_search_kernel(emin, emax, cpu):
    """Any exponent range (outputs may be float32 denormals, 0 or inf): binary search over
    the thresholds, which are sorted because rounding the exponent is monotone in |x|."""
    b, res = _pow2_search_tables(emin, emax, cpu)

    def kernel(s, d, u, scr, m):
        bits = s.view(_U32)
        mag, t = scr.u[0][:m], scr.u[1][:m]
        np.bitwise_and(bits, _ABS, out=mag)
        magnitude = np.take(res, np.searchsorted(b, mag, side="right"))
        _pow2_sign(bits, mag, magnitude, d.view(_U32), t, cpu)

    return kernel


def _pow2_stochastic_kernel(emin, emax, cpu):
    top = max(emin, emax)  # exp_min > exp_max: the original always yields exp_min
    lo_e, hi_e = _F32(emin), _F32(top)
    normal = -126 <= emin and top <= 127

    def kernel(s, d, u, scr, m):
        bits = s.view(_U32)
        t, w = scr.f[0][:m], scr.f[1][:m]
        mag, o = scr.u[0][:m], scr.u[1][:m]
        np.bitwise_and(bits, _ABS, out=mag)
        np.abs(s, out=t)
        with np.errstate(divide="ignore", invalid="ignore"):
            np.log2(t, out=t)
        # Clamping t to the integer bounds before floor(t + U) equals clamping afterwards, and
        # keeps +-inf (x = 0 or inf) out of the exact floor. A NaN becomes exp_max here and is
        # handled by _pow2_sign.
        np.fmin(t, hi_e, out=t)
        np.fmax(t, lo_e, out=t)
        _floor_plus_uniform(t, u, w)
        if normal:
            np.add(t, _F32(127), out=t)
            np.copyto(o, t, casting="unsafe")
            np.left_shift(o, 23, out=o)
        else:
            with np.errstate(over="ignore", under="ignore"):
                np.ldexp(_F32(1), t.astype(np.int32), out=w)  # pow(2, e), then float
            np.copyto(o, w.view(_U32))
        _pow2_sign(bits, mag, o, d.view(_U32), w.view(_U32), cpu)

    return kernel


# --------------------------------------------------------------------------- format objects
def _f32_value(bits: int) -> float:
    return float(np.array(bits, _U32).view(_F32))


@dataclass(frozen=True)
class DynamicFixedPoint:
    """Dynamic fixed point DFP(bw, fl): bw-bit two's complement integers times 2**-fl."""

    bw: int
    fl: int

    def __post_init__(self):
        object.__setattr__(self, "bw", _int_param("bw", self.bw, 1, 64))
        object.__setattr__(self, "fl", _int_param("fl", self.fl, -(2**31), 2**31 - 1))

    def trim(self, x, rounding="nearest", *, semantics: str = "ristretto",
             rng: np.random.Generator | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """``trim_dfp(x, self.bw, self.fl, ...)``."""
        return trim_dfp(x, self.bw, self.fl, rounding, semantics=semantics, rng=rng, out=out)

    @property
    def step(self) -> float:
        """Grid spacing 2**-fl."""
        return _pow2_double(-self.fl)

    @property
    def grid_min(self) -> float:
        """Smallest representable value -2**(bw-1) * 2**-fl, as float32."""
        return float(_dfp_bounds(self.bw, self.fl, True)[0])

    @property
    def grid_max(self) -> float:
        """Largest representable value (2**(bw-1) - 1) * 2**-fl, rounded to float32 (for
        bw > 25 the rounding reaches 2**(bw-1) * 2**-fl, as in the original)."""
        return float(_dfp_bounds(self.bw, self.fl, True)[1])

    def __str__(self) -> str:
        return f"DFP({self.bw},{self.fl})"


@dataclass(frozen=True)
class Minifloat:
    """Minifloat MF(mant_bits, exp_bits): IEEE-like, bias 2**(e-1) - 1, no subnormals/inf/NaN."""

    mant_bits: int
    exp_bits: int

    def __post_init__(self):
        object.__setattr__(self, "mant_bits", _int_param("mant_bits", self.mant_bits, 0, 31))
        object.__setattr__(self, "exp_bits", _int_param("exp_bits", self.exp_bits, 1, 31))

    def trim(self, x, rounding="nearest", *, semantics: str = "ristretto",
             rng: np.random.Generator | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """``trim_minifloat(x, self.mant_bits, self.exp_bits, ...)``."""
        return trim_minifloat(x, self.mant_bits, self.exp_bits, rounding, semantics=semantics,
                              rng=rng, out=out)

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def min_positive(self) -> float:
        """Smallest positive value: 2**-bias (limited to float32's smallest normal)."""
        return _f32_value(_minifloat_consts(self.mant_bits, self.exp_bits).zero_in)

    @property
    def grid_max(self) -> float:
        """Largest finite value, (2 - 2**-m) * 2**(2**e - 1 - bias) as float32; for exp_bits >= 8
        the largest finite float32 on the grid. (NEAREST can still return the next power of two
        for inputs just below it: the original does not re-saturate a mantissa carry.)"""
        c = _minifloat_consts(self.mant_bits, self.exp_bits)
        if c.sat_bits != _INF_BITS:
            return _f32_value(c.sat_bits)
        k = max(c.k, 0)
        return _f32_value((254 << 23) | ((_MANT_FIELD >> k) << k))

    @property
    def grid_min(self) -> float:
        """Smallest (most negative) value, -grid_max."""
        return -self.grid_max

    def __str__(self) -> str:
        return f"MF({self.mant_bits},{self.exp_bits})"


@dataclass(frozen=True)
class PowerOfTwo:
    """Integer power of two P2(exp_min, exp_max): +-2**e, exp_min <= e <= exp_max (never 0)."""

    exp_min: int
    exp_max: int

    def __post_init__(self):
        object.__setattr__(self, "exp_min", _int_param("exp_min", self.exp_min, -256, 256))
        object.__setattr__(self, "exp_max", _int_param("exp_max", self.exp_max, -256, 256))

    def trim(self, x, rounding="nearest", *, semantics: str = "ristretto",
             rng: np.random.Generator | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """``trim_pow2(x, self.exp_min, self.exp_max, ...)``."""
        return trim_pow2(x, self.exp_min, self.exp_max, rounding, semantics=semantics, rng=rng,
                         out=out)

    @property
    def min_positive(self) -> float:
        """Smallest magnitude 2**exp_min (as float32)."""
        return _f32_value(_pow2_result_bits(self.exp_min))

    @property
    def grid_max(self) -> float:
        """Largest value 2**exp_max (2**exp_min if exp_min > exp_max), as float32."""
        return _f32_value(_pow2_result_bits(max(self.exp_min, self.exp_max)))

    @property
    def grid_min(self) -> float:
        """Smallest (most negative) value, -grid_max."""
        return -self.grid_max

    def __str__(self) -> str:
        return f"P2({self.exp_min},{self.exp_max})"
