"""Trimming kernels: bit-exact against the original CPU routines and an independent slow reference.

* ``caffe-cpu`` semantics are compared with outputs of Ristretto's own CPU routines
  (tests/data/trim, see its README).
* The default ``ristretto`` semantics (the GPU arithmetic) has no recorded outputs; it is compared
  with the slow per-element references below, written from ristretto.md §4 / §3.6 with Python
  floats, ``math``, ``fractions`` and ``decimal`` (no code shared with the kernels). The same
  references are checked against the recorded CPU outputs, which validates them.
"""

from __future__ import annotations

import json
import math
import struct
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from conftest import test_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ristretto_cli.quantization import (
    SEMANTICS,
    DynamicFixedPoint,
    Minifloat,
    PowerOfTwo,
    trim_dfp,
    trim_minifloat,
    trim_pow2,
)
from ristretto_cli.quantization import formats as fmt_mod

F32 = np.float32


# ---------------- slow references
def f32(v: float) -> float:
    """Round a Python float to float32 (nearest even; overflow to inf), like a C cast."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        return float(F32(v))


def f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def pow2d(n: int) -> float:
    """2.0 ** n in double precision with overflow to inf and underflow to 0 (C pow)."""
    if n > 1023:
        return math.inf
    if n < -1074:
        return 0.0
    return math.ldexp(1.0, n)


def c_min(a: float, b: float) -> float:  # std::min(a, b): (b < a) ? b : a
    return b if b < a else a


def c_max(a: float, b: float) -> float:  # std::max(a, b): (a < b) ? b : a
    return b if a < b else a


def cuda_fmin(a: float, b: float) -> float:
    """fminf: a NaN operand is ignored. CUDA leaves fminf(-0.0, +0.0) unspecified; like the CPU's
    std::min we keep the first operand when they compare equal."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return c_min(a, b)


def cuda_fmax(a: float, b: float) -> float:
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return c_max(a, b)


def round_half_away(v: float) -> float:
    """C round() for a finite double."""
    return math.copysign(math.floor(abs(v) + 0.5), v)


def round_half_even(v: float) -> float:
    """C rint() for a finite double (Python's round() ties to even); keeps the zero's sign."""
    return math.copysign(float(round(v)), v)


def c_round(v: float, caffe_cpu: bool) -> float:
    if not math.isfinite(v):
        return v
    return round_half_away(v) if caffe_cpu else round_half_even(v)


def stochastic_floor(v: float, u: float) -> float:
    """floor(v + u) evaluated exactly (a zero result is +0.0, as floor(-0.3 + 0.5) is in C)."""
    if not math.isfinite(v):
        return v
    return float(math.floor(Fraction(v) + Fraction(u)))


def ref_dfp(x: float, bw: int, fl: int, caffe_cpu: bool, u: float | None = None) -> float:
    """Trim2FixedPoint_cpu (caffe-cpu) / Trim2FixedPoint_kernel (ristretto), one element."""
    if caffe_cpu:
        p = pow2d(-fl)
        hi = f32((2.0 ** (bw - 1) - 1) * p)
        lo = f32(-(2.0 ** (bw - 1)) * p)
        v = c_max(c_min(x, hi), lo)
        with np.errstate(all="ignore"):
            v = f32(float(np.float64(v) / np.float64(p)))  # data /= pow(2, -fl)
        v = stochastic_floor(v, u) if u is not None else c_round(v, True)
        return f32(v * p)
    q = f32(pow2d(-fl))  # powf(2, -fl)
    p = f32(pow2d(bw - 1))
    hi = f32(f32(p - 1.0) * q)
    lo = f32(-p * q)
    v = cuda_fmax(cuda_fmin(x, hi), lo)
    with np.errstate(all="ignore"):
        v = float(F32(v) / F32(q))  # float32 division
    v = stochastic_floor(v, u) if u is not None else c_round(v, False)
    return f32(v * q)


def ref_minifloat(x: float, m: int, e: int, caffe_cpu: bool, u: float | None = None) -> float:
    """Trim2MiniFloat for ONE element (cnt = 1): the early return cannot skip anything."""
    b = f32_bits(x)
    sign, field, mant_field = b >> 31, (b >> 23) & 0xFF, b & 0x7FFFFF
    bias = 2 ** (e - 1) - 1
    exponent = field - 127 + bias
    if field == 0 or exponent < 0:
        return 0.0
    max_exp, max_mant = 2**e - 1, 2**m - 1
    if exponent > max_exp:
        exponent, mant = max_exp, float(max_mant)
    else:
        t = mant_field / 2.0 ** (23 - m)
        if u is not None:
            mant = float(math.floor(Fraction(t) + Fraction(u)))
        else:
            mant = round_half_away(t) if caffe_cpu else round_half_even(t)
    value = (-1.0) ** sign * ((mant + 2.0**m) / 2.0**m) * 2.0 ** (exponent - bias)
    return f32(value)


_LN2 = None


def log2f_correctly_rounded(a: float) -> float:
    """float32 log2 of a float32 a >= 0, correctly rounded (via 50-digit decimal logarithms)."""
    global _LN2
    if a == 0:
        return -math.inf
    if math.isinf(a) or math.isnan(a):
        return a
    with localcontext() as ctx:
        ctx.prec = 50
        if _LN2 is None:
            _LN2 = Decimal(2).ln()
        exact = Decimal(a).ln() / _LN2
        f = F32(float(exact))
        candidates = [f, np.nextafter(f, F32(np.inf)), np.nextafter(f, F32(-np.inf))]
        return float(min(candidates, key=lambda c: abs(Decimal(float(c)) - exact)))


def ref_pow2(x: float, emin: int, emax: int, caffe_cpu: bool, u: float | None = None,
             t: float | None = None) -> float:
    """Trim2IntegerPowerOf2_cpu / _kernel, one element. Stochastic rounding takes t = log2f(|x|)
    as the kernels define it for that mode (NumPy's float32 log2)."""
    if u is None:
        t = log2f_correctly_rounded(abs(x))
        t = c_round(t, caffe_cpu)
    else:
        t = stochastic_floor(t, u)
    sign = 1.0 if x >= 0 else -1.0
    if caffe_cpu:
        t = c_max(c_min(t, float(emax)), float(emin))
    else:
        t = cuda_fmax(cuda_fmin(t, float(emax)), float(emin))
    if math.isnan(t):
        return math.nan
    return f32(sign * pow2d(int(t)))


def reference(kind: str, xs, params, semantics: str, us=None) -> np.ndarray:
    fn = {"dfp": ref_dfp, "mf": ref_minifloat, "p2": ref_pow2}[kind]
    cpu = semantics == "caffe-cpu"
    xs = np.asarray(xs, F32).reshape(-1)
    if us is None:
        out = [fn(float(v), *params, cpu) for v in xs]
    elif kind == "p2":
        with np.errstate(divide="ignore", invalid="ignore"):
            ts = np.log2(np.abs(xs))
        out = [fn(float(v), *params, cpu, float(w), float(t)) for v, w, t in zip(xs, us, ts)]
    else:
        out = [fn(float(v), *params, cpu, float(w)) for v, w in zip(xs, us)]
    return np.array(out, dtype=F32)


def kernel(kind: str, xs, params, semantics: str, **kw) -> np.ndarray:
    fn = {"dfp": trim_dfp, "mf": trim_minifloat, "p2": trim_pow2}[kind]
    return fn(np.asarray(xs, F32), *params, semantics=semantics, **kw)


def assert_bits_equal(actual, expected, what=""):
    actual = np.asarray(actual, F32).reshape(-1)
    expected = np.asarray(expected, F32).reshape(-1)
    assert actual.shape == expected.shape
    a, e = actual.view(np.uint32), expected.view(np.uint32)
    # Every NaN is accepted as NaN (the payload is not specified); everything else bit for bit.
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    bad = np.flatnonzero((a != e) & ~(nan_a & nan_e))
    if bad.size:
        rows = [f"  [{i}] got {actual[i]!r} ({a[i]:#010x}) expected {expected[i]!r} ({e[i]:#010x})"
                for i in bad[:10]]
        pytest.fail(f"{what}: {bad.size} element(s) differ\n" + "\n".join(rows))


# ---------------- recorded CPU outputs
def _cases():
    index = json.loads(test_data("trim/index.json").read_text())
    return index["cases"]


def _load(name):
    return np.load(test_data(f"trim/{name}"))


def _params(case):
    if case["format"] == "dynamic_fixed_point":
        return "dfp", (case["bit_width"], case["fl"])
    if case["format"] == "minifloat":
        return "mf", (case["mant_bits"], case["exp_bits"])
    return "p2", (case["exp_min"], case["exp_max"])


def _pairs(case):
    """(input key, expected key) pairs of one case; minifloat bug cases use the element-wise output."""
    keys = case["keys"]
    if case["format"] != "minifloat":
        return [(keys[0], keys[1])]
    if keys[1].endswith("_out"):  # main + underflow
        return [(keys[0], keys[1]), (keys[2], keys[3])]
    return [(keys[0], keys[2])]  # bugzero / bugtiny: _in vs _out_elementwise


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["keys"][0].rsplit("_in", 1)[0] + "-" + c["format"])
def test_caffe_cpu_matches_original_cpu_routines(case):
    kind, params = _params(case)
    data = _load(case["file"])
    for key_in, key_out in _pairs(case):
        got = kernel(kind, data[key_in], params, "caffe-cpu")
        assert_bits_equal(got, data[key_out], f"{key_in} -> {key_out}")


@pytest.mark.parametrize("case", [c for c in CASES if "_out_one_call" in " ".join(c["keys"])],
                         ids=lambda c: c["keys"][0])
def test_minifloat_early_return_bug_is_not_reproduced(case):
    """The original Trim2MiniFloat_cpu returns from the whole loop at the first zero/underflowing
    element (ORIGINAL'S BUG), leaving the rest of the array untrimmed. We trim every element."""
    kind, params = _params(case)
    data = _load(case["file"])
    key_in, key_one_call, key_elementwise = case["keys"]
    x = data[key_in]
    one_call, elementwise = data[key_one_call], data[key_elementwise]
    for semantics in SEMANTICS:
        got = kernel(kind, x, params, semantics)
        if semantics == "caffe-cpu":
            assert_bits_equal(got, elementwise, key_elementwise)
        if case.get("tail_unchanged"):
            # the original's bug: after index 10 the one-call output is the untouched input...
            assert_bits_equal(one_call[11:], x[11:], "original's untrimmed tail")
            # ...and we differ from it wherever trimming changes the value.
            changed = elementwise[11:].view(np.uint32) != x[11:].view(np.uint32)
            assert changed.any()
            differs = got[11:].view(np.uint32) != one_call[11:].view(np.uint32)
            assert differs[changed].all(), \
                "elements the original's early-return bug leaves untrimmed must be trimmed here"
        else:  # control case (1e-8 is representable with 8 exponent bits): no early return
            assert_bits_equal(one_call, elementwise, "control case")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["keys"][0].rsplit("_in", 1)[0] + "-" + c["format"])
def test_slow_reference_reproduces_original_cpu_routines(case):
    """Validates the slow reference used for the default semantics below."""
    kind, params = _params(case)
    data = _load(case["file"])
    for key_in, key_out in _pairs(case):
        assert_bits_equal(reference(kind, data[key_in], params, "caffe-cpu"), data[key_out], key_in)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["keys"][0].rsplit("_in", 1)[0] + "-" + c["format"])
def test_ristretto_semantics_matches_slow_reference(case):
    kind, params = _params(case)
    data = _load(case["file"])
    for key_in, _ in _pairs(case):
        x = data[key_in]
        assert_bits_equal(kernel(kind, x, params, "ristretto"),
                          reference(kind, x, params, "ristretto"), key_in)


def test_semantics_differ_on_reference_ties():
    """The reference inputs contain exact ties; the two semantics must really differ there."""
    data = _load("dfp.npz")
    x = data["bw8_fl3_in"]
    cpu, gpu = trim_dfp(x, 8, 3, semantics="caffe-cpu"), trim_dfp(x, 8, 3)
    v = np.clip(x, -16, 15.875).astype(np.float64) * 8
    ties = v - np.floor(v) == 0.5
    assert ties.sum() >= 4
    assert (cpu[ties] != gpu[ties]).any()
    assert_bits_equal(cpu[~ties], gpu[~ties], "non-ties agree")


# ---------------- worked examples (ristretto.md §4)
def _one(fn, x, *params, semantics):
    return float(fn(np.array([x], F32), *params, semantics=semantics)[0])


@pytest.mark.parametrize("x, cpu, gpu", [
    (0.03125, 0.0625, 0.0),  # tie: away from zero vs to even
    (0.15625, 0.1875, 0.125),  # 2.5 steps
    (-0.15625, -0.1875, -0.125),
    (-0.09375, -0.125, -0.125),  # -1.5 steps: both go to -2
    (7.96875, 7.9375, 7.9375),  # clipped
    (8.1, 7.9375, 7.9375),
    (-8.1, -8.0, -8.0),
    (1.3, 1.3125, 1.3125),
    (-1.3, -1.3125, -1.3125),
])
def test_dfp_8_4_examples(x, cpu, gpu):
    assert _one(trim_dfp, x, 8, 4, semantics="caffe-cpu") == cpu
    assert _one(trim_dfp, x, 8, 4, semantics="ristretto") == gpu


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("x, y", [(40000, 32768), (-40000, -32768), (1e-6, 0.0),
                                  (0.123456789, 0.123458862)])
def test_dfp_default_32_16_is_not_transparent(semantics, x, y):
    assert _one(trim_dfp, x, 32, 16, semantics=semantics) == pytest.approx(y, abs=1e-9)


def test_dfp_bw32_bounds_agree_between_double_and_powf():
    """CPU: (2^31 - 1) * 2^-16 in double -> 32767.99998 -> float32 32768. GPU: powf(2, 31) - 1
    rounds to 2^31 in float32 -> 32768. The two bound computations only differ when the
    product leaves the normal float32 range (huge |fl|)."""
    for bw in range(1, 65):
        for fl in range(-60, 100):
            assert fmt_mod._dfp_bounds(bw, fl, True) == fmt_mod._dfp_bounds(bw, fl, False)
    assert fmt_mod._dfp_bounds(32, 16, True) == (F32(-32768), F32(32768))
    assert DynamicFixedPoint(32, 16).grid_max == 32768.0
    # fl = 170: powf(2, -170) underflows to 0 in float32, the double product does not
    lo_cpu, hi_cpu = fmt_mod._dfp_bounds(32, 170, True)
    lo_gpu, hi_gpu = fmt_mod._dfp_bounds(32, 170, False)
    assert hi_cpu == F32(2.0**-139) and hi_gpu == 0


@pytest.mark.parametrize("x, y", [(0.3, 0.3125), (-0.3, -0.3125), (1, 1), (0.1, 0.1015625),
                                  (300, 288), (600, 480), (1e6, 480), (0.0079, 0.0078125),
                                  (0.0078125, 0.0078125), (0.001, 0.0), (-0.001, 0.0)])
@pytest.mark.parametrize("semantics", SEMANTICS)
def test_minifloat_3_4_examples(semantics, x, y):
    got = trim_minifloat(np.array([x], F32), 3, 4, semantics=semantics)
    assert_bits_equal(got, [y], f"MF(3,4) {x}")  # underflow is +0.0 even for negatives


@pytest.mark.parametrize("semantics", SEMANTICS)
def test_minifloat_arrays_are_trimmed_entirely(semantics):
    # The original returns [0.5, 0, 0.3, 0.1] (untrimmed after the zero): its early-return bug.
    for x in ([0.5, 0.0, 0.3, 0.1], [0.5, 0.001, 0.3, 0.1]):
        got = trim_minifloat(np.array(x, F32), 3, 4, semantics=semantics)
        assert got.tolist() == [0.5, 0.0, 0.3125, 0.1015625]


def test_minifloat_mantissa_ties():
    # 1 + 1/16: mantissa 0.5 in units of 2^-3 -> half up 1.125 / half even 1.0
    assert _one(trim_minifloat, 1.0625, 3, 4, semantics="caffe-cpu") == 1.125
    assert _one(trim_minifloat, 1.0625, 3, 4, semantics="ristretto") == 1.0
    # 1 + 3/16: 1.5 -> 2 either way
    assert _one(trim_minifloat, 1.1875, 3, 4, semantics="caffe-cpu") == 1.25
    assert _one(trim_minifloat, 1.1875, 3, 4, semantics="ristretto") == 1.25
    # the carry is not re-saturated: 500 -> mantissa 7.625 -> 8 -> 512 > 480
    for semantics in SEMANTICS:
        assert _one(trim_minifloat, 500, 3, 4, semantics=semantics) == 512
        assert _one(trim_minifloat, 512, 3, 4, semantics=semantics) == 480
        assert _one(trim_minifloat, -np.inf, 3, 4, semantics=semantics) == -480
        assert _one(trim_minifloat, np.inf, 7, 8, semantics=semantics) == np.inf


@pytest.mark.parametrize("x, cpu, gpu", [
    (0.3, 0.25, 0.25), (-0.7, -0.5, -0.5), (0.0, 0.00390625, 0.00390625),
    (-0.0, 0.00390625, 0.00390625),  # sign +1 for -0.0
    (float(F32(2**-2.5)), 0.125, 0.25),  # log2f gives exactly -2.5: round -> -3, rint -> -2
    (float(F32(2**-1.5)), 0.25, 0.25),  # -1.5 -> -2 both ways
    (5.0, 0.5, 0.5), (1e-4, 0.00390625, 0.00390625), (0.75, 0.5, 0.5),
    (0.70710678, 0.5, 0.5),
])
def test_pow2_examples(x, cpu, gpu):
    assert_bits_equal(trim_pow2(np.array([x], F32), -8, -1, semantics="caffe-cpu"), [cpu], str(x))
    assert_bits_equal(trim_pow2(np.array([x], F32), -8, -1, semantics="ristretto"), [gpu], str(x))


def test_pow2_exact_at_every_half_integer_exponent():
    """float32(2^(k+0.5)) and its neighbours for every normal k, against correctly rounded
    log2f (the recorded outputs of glibc's log2f agree with it on every reference input;
    NumPy's float32 log2 is not correctly rounded on every platform)."""
    xs = []
    for k in range(-126, 127):
        c = F32(2.0 ** (k + 0.5))
        xs += [np.nextafter(c, F32(0)), c, np.nextafter(c, F32(np.inf))]
    xs = np.array(xs, F32)
    for semantics in SEMANTICS:
        for emin, emax in [(-126, 127), (-8, -1), (-4, 4)]:
            assert_bits_equal(trim_pow2(xs, emin, emax, semantics=semantics),
                              reference("p2", xs, (emin, emax), semantics), f"{semantics} {emin},{emax}")


# ---------------- special values and odd parameters
SPECIAL = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1.1754942e-38,
                    1.1754944e-38, 3.4028235e38, -3.4028235e38, 1.0, -1.0, 0.5, -0.5, 1.5, 2.5,
                    -2.5, 0.49999997, 65504.0, 65520.0, 1e-8, -3e-6, 1 / 3], F32)


def _mixed_inputs(seed=5):
    rng = np.random.default_rng(seed)
    scales = 2.0 ** rng.integers(-40, 40, 400)
    x = (rng.standard_normal(400) * scales).astype(F32)
    return np.concatenate([SPECIAL, x])


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("bw, fl", [(8, 4), (1, 0), (1, 5), (2, -3), (16, 12), (24, 0), (25, 2),
                                    (26, -1), (32, 16), (32, 40), (64, 0), (8, 126), (8, -126),
                                    (8, 127), (8, -127), (32, 150), (16, 170), (4, -200),
                                    (8, 1100), (8, -1100)])
def test_dfp_against_reference_all_paths(semantics, bw, fl):
    x = _mixed_inputs()
    assert_bits_equal(trim_dfp(x, bw, fl, semantics=semantics),
                      reference("dfp", x, (bw, fl), semantics), f"DFP({bw},{fl})")


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("m, e", [(3, 4), (0, 1), (0, 4), (1, 2), (10, 5), (23, 8), (7, 8),
                                  (2, 9), (22, 7), (23, 3), (27, 4), (31, 2), (5, 31), (0, 8)])
def test_minifloat_against_reference_all_paths(semantics, m, e):
    x = _mixed_inputs()
    assert_bits_equal(trim_minifloat(x, m, e, semantics=semantics),
                      reference("mf", x, (m, e), semantics), f"MF({m},{e})")


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("emin, emax", [(-8, -1), (-4, 4), (0, 0), (-1, -8), (3, -3), (-126, 127),
                                        (-125, -120), (-140, -120), (-160, -140), (120, 130),
                                        (-200, 200), (127, 127)])
def test_pow2_against_reference_all_paths(semantics, emin, emax):
    x = _mixed_inputs()
    assert_bits_equal(trim_pow2(x, emin, emax, semantics=semantics),
                      reference("p2", x, (emin, emax), semantics), f"P2({emin},{emax})")


def test_nan_handling_per_semantics():
    nan = np.array([np.nan], F32)
    assert np.isnan(trim_dfp(nan, 8, 4, semantics="caffe-cpu")[0])
    assert trim_dfp(nan, 8, 4)[0] == 7.9375  # CUDA fminf(NaN, hi) = hi
    assert np.isnan(trim_pow2(nan, -8, -1, semantics="caffe-cpu")[0])
    assert trim_pow2(nan, -8, -1)[0] == -0.5  # fmaxf(fminf(NaN, max), min); NaN >= 0 is false
    for semantics in SEMANTICS:  # minifloat: exponent field 255 saturates (or overflows to inf)
        assert trim_minifloat(nan, 3, 4, semantics=semantics)[0] == 480
        assert trim_minifloat(-nan, 3, 4, semantics=semantics)[0] == -480
        assert trim_minifloat(nan, 10, 8, semantics=semantics)[0] == np.inf


_format_params = st.one_of(
    st.tuples(st.just("dfp"), st.tuples(st.integers(1, 40), st.integers(-30, 60))),
    st.tuples(st.just("mf"), st.tuples(st.integers(0, 25), st.integers(1, 9))),
    st.tuples(st.just("p2"), st.tuples(st.integers(-130, 5), st.integers(-20, 130))),
)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(fmt=_format_params, semantics=st.sampled_from(SEMANTICS),
       x=hnp.arrays(F32, st.integers(1, 24), elements=st.floats(width=32)))
def test_kernels_match_slow_reference_on_arbitrary_floats(fmt, semantics, x):
    kind, params = fmt
    assert_bits_equal(kernel(kind, x, params, semantics), reference(kind, x, params, semantics),
                      f"{kind}{params} {semantics}")


# ---------------- stochastic rounding, exact
@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("kind, params", [("dfp", (8, 4)), ("dfp", (16, 12)), ("dfp", (32, 16)),
                                          ("mf", (3, 4)), ("mf", (10, 5)), ("mf", (27, 4)),
                                          ("p2", (-8, -1)), ("p2", (-4, 4)), ("p2", (-140, -120))])
def test_stochastic_is_exact_floor_of_v_plus_u(semantics, kind, params):
    """floor(v + U) with U = rng.random(n, dtype=float32), one draw per element in C order."""
    x = _mixed_inputs(seed=11)[:300]
    u = np.random.default_rng(42).random(x.size, dtype=F32)
    got = kernel(kind, x, params, semantics, rounding="stochastic", rng=np.random.default_rng(42))
    assert_bits_equal(got, reference(kind, x, params, semantics, us=u), f"{kind}{params}")


def test_stochastic_stream_is_independent_of_chunking():
    """Arrays longer than one chunk draw the same stream as a single rng.random(n) call."""
    n = fmt_mod._CHUNK + 1234
    x = (np.round(np.random.default_rng(3).standard_normal(n) * 3 * 1024) / 1024).astype(F32)
    u = np.random.default_rng(9).random(n, dtype=F32)
    got = trim_dfp(x, 8, 4, "stochastic", rng=np.random.default_rng(9))
    v = np.clip(x, -8, 7.9375).astype(np.float64) * 16
    expect = (np.floor(v + u.astype(np.float64)) / 16).astype(F32)  # exact: v is on a 2^-6 grid
    assert_bits_equal(got, expect, "chunked stream")
    pieces = np.random.default_rng(9)
    a = trim_dfp(x[:1000], 8, 4, "stochastic", rng=pieces)
    b = trim_dfp(x[1000:], 8, 4, "stochastic", rng=pieces)
    assert_bits_equal(np.concatenate([a, b]), got, "two calls")


def test_stochastic_nearest_at_tiny_fractions():
    """A fraction below 2^-24 of a step never rounds up (U is on the 2^-24 grid), one exactly at
    a multiple k * 2^-24 rounds up with probability exactly k * 2^-24; no rounding error of
    v + U creates extra carries."""
    x = np.array([2.0**-30, -(2.0**-30), 1 - 2.0**-24, -(2.0**-24), 2.0**23 - 1, -(2.0**23)], F32)
    rng = np.random.default_rng(0)
    u = np.random.default_rng(0).random(x.size, dtype=F32)
    got = trim_dfp(x, 32, 0, "stochastic", rng=rng)
    expect = [float(math.floor(Fraction(float(a)) + Fraction(float(b)))) for a, b in zip(x, u)]
    assert got.tolist() == expect


# ---------------- API
def test_format_objects():
    d, m, p = DynamicFixedPoint(8, 4), Minifloat(3, 4), PowerOfTwo(-8, -1)
    assert (str(d), str(m), str(p)) == ("DFP(8,4)", "MF(3,4)", "P2(-8,-1)")
    assert (d.grid_min, d.grid_max, d.step) == (-8.0, 7.9375, 0.0625)
    assert (m.grid_min, m.grid_max, m.min_positive, m.bias) == (-480.0, 480.0, 2.0**-7, 7)
    assert (p.grid_min, p.grid_max, p.min_positive) == (-0.5, 0.5, 2.0**-8)
    assert Minifloat(7, 8).grid_max == float(F32((2 - 2.0**-7) * 2.0**127))
    assert Minifloat(27, 4).grid_max == 512.0  # (2 - 2^-27) * 2^8 rounds to 2^9 in float32
    assert PowerOfTwo(3, -3).grid_max == 8.0
    x = np.array([0.3, -5.0, 1e-3], F32)
    for f, fn, args in [(d, trim_dfp, (8, 4)), (m, trim_minifloat, (3, 4)), (p, trim_pow2, (-8, -1))]:
        for semantics in SEMANTICS:
            assert_bits_equal(f.trim(x, semantics=semantics), fn(x, *args, semantics=semantics), str(f))
        g1, g2 = np.random.default_rng(1), np.random.default_rng(1)
        assert_bits_equal(f.trim(x, 1, rng=g1), fn(x, *args, "stochastic", rng=g2), str(f))
    with pytest.raises(AttributeError):
        d.bw = 4  # frozen
    assert DynamicFixedPoint(8, 4) == DynamicFixedPoint(np.int64(8), 4)


@pytest.mark.parametrize("call", [
    lambda x: trim_dfp(x, 0, 4),
    lambda x: trim_dfp(x, 65, 4),
    lambda x: trim_minifloat(x, 3, 0),
    lambda x: trim_minifloat(x, -1, 4),
    lambda x: trim_pow2(x, -300, 0),
    lambda x: trim_dfp(x, 8, 4, "round"),
    lambda x: trim_dfp(x, 8, 4, 2),
    lambda x: trim_dfp(x, 8, 4, semantics="gpu"),
    lambda x: trim_dfp(x, 8, 4, "stochastic"),  # no rng
    lambda x: trim_minifloat(x, 3, 4, 1),
    lambda x: trim_pow2(x, -8, -1, "STOCHASTIC", rng=None),
    lambda x: trim_dfp(x, 8, 4, out=np.empty(4, F32)),
])
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call(np.ones(3, F32))


@pytest.mark.parametrize("call", [
    lambda x: trim_dfp(x, 8.0, 4),
    lambda x: trim_dfp(x, True, 4),
    lambda x: trim_dfp(x, 8, 4, out=np.empty(3, np.float64)),
    lambda x: trim_dfp(x, 8, 4, out=[0.0, 0.0, 0.0]),
    lambda x: trim_dfp(x, 8, 4, 1, rng=np.random.RandomState(0)),
])
def test_bad_argument_types_raise_type_error(call):
    with pytest.raises(TypeError):
        call(np.ones(3, F32))


def test_rounding_names_and_enum_values():
    x = np.array([0.03125], F32)
    for r in ("nearest", "NEAREST", 0, np.int32(0)):
        assert trim_dfp(x, 8, 4, r)[0] == 0.0
    for r in ("stochastic", "STOCHASTIC", 1):
        assert trim_dfp(x, 8, 4, r, rng=np.random.default_rng(0))[0] in (0.0, 0.0625)


def test_dtype_conversion_and_shapes():
    x64 = np.array([[0.03125, 1.3], [-8.1, 40.0]])
    got = trim_dfp(x64, 8, 4, semantics="caffe-cpu")
    assert got.dtype == F32 and got.shape == (2, 2)
    assert got.tolist() == [[0.0625, 1.3125], [-8.0, 7.9375]]
    assert trim_dfp([1.3, 2], 8, 4).tolist() == [1.3125, 2.0]
    scalar = trim_minifloat(F32(0.3), 3, 4)
    assert scalar.shape == () and float(scalar) == 0.3125
    empty = trim_pow2(np.zeros((0, 3), F32), -8, -1)
    assert empty.shape == (0, 3)
    x = np.array([1.3], F32)
    trim_dfp(x, 8, 4)
    assert x[0] == F32(1.3)  # out=None never modifies the input


# ---------------- fast paths against the general ones, on random bit patterns
def _random_bit_patterns(n=200_000, seed=17):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    # half of them near 1 in magnitude, where the formats' grids are
    near = (rng.integers(0x3A000000, 0x45000000, n // 2, dtype=np.uint64).astype(np.uint32)
            | (rng.integers(0, 2, n // 2, dtype=np.uint64).astype(np.uint32) << 31))
    raw[: n // 2] = near
    return raw.view(F32)


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("bw, fl", [(8, 4), (16, -3), (32, 16), (4, 60)])
def test_dfp_fast_path_equals_literal_path(semantics, bw, fl):
    x = _random_bit_patterns()
    cpu = semantics == "caffe-cpu"
    lo, hi = fmt_mod._dfp_bounds(bw, fl, cpu)
    literal = fmt_mod._run(x, None, None, fmt_mod._dfp_literal_kernel(lo, hi, fl, cpu, False), 1, 0)
    assert_bits_equal(trim_dfp(x, bw, fl, semantics=semantics), literal, f"DFP({bw},{fl})")


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("emin, emax", [(-8, -1), (-4, 4), (-126, 127), (5, 2)])
def test_pow2_fast_path_equals_search_path(semantics, emin, emax):
    x = _random_bit_patterns()
    cpu = semantics == "caffe-cpu"
    search = fmt_mod._run(x, None, None, fmt_mod._pow2_search_kernel(emin, emax, cpu), 0, 2)
    assert_bits_equal(trim_pow2(x, emin, emax, semantics=semantics), search, f"P2({emin},{emax})")


def _minifloat_float64_formula(x, m, e, caffe_cpu):
    """The C++ expression evaluated in float64 with NumPy (no bit tricks), all elements at once."""
    b = x.view(np.uint32).astype(np.int64)
    sign, field, mant = b >> 31, (b >> 23) & 0xFF, (b & 0x7FFFFF).astype(np.float64)
    bias = 2 ** (e - 1) - 1
    ex = field - 127 + bias
    tmp = mant / 2.0 ** (23 - m)
    mant = np.floor(tmp + 0.5) if caffe_cpu else np.rint(tmp)
    sat = ex > 2**e - 1
    ex = np.where(sat, 2**e - 1, ex)
    mant = np.where(sat, 2.0**m - 1, mant)
    with np.errstate(over="ignore"):
        v = (-1.0) ** sign * ((mant + 2.0**m) / 2.0**m) * np.exp2((ex - bias).astype(np.float64))
        v = v.astype(F32)
    v[(field == 0) | (ex < 0)] = 0.0
    return v


@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("m, e", [(3, 4), (10, 5), (7, 8), (0, 3), (22, 6), (23, 2), (2, 1)])
def test_minifloat_bit_kernel_equals_float64_formula(semantics, m, e):
    x = _random_bit_patterns()
    expect = _minifloat_float64_formula(x, m, e, semantics == "caffe-cpu")
    assert_bits_equal(trim_minifloat(x, m, e, semantics=semantics), expect, f"MF({m},{e})")


def test_exact_floor_plus_uniform_helper():
    """floor(v + u) must not be computed as a rounded float32 sum: e.g. (0.5 - 2^-25) + 0.5 rounds
    to 1.0 in float32 although the exact floor is 0."""
    rng = np.random.default_rng(8)
    special_v = [0.5 - 2.0**-25, -(2.0**-30), 2.0**23 + 1, 2.0**24 + 2, -(2.0**24), -(2.0**23) - 1,
                 1 - 2.0**-24, -1 + 2.0**-25, -0.0, 0.0, 3.75, -3.75, 1e-40, -1e-40]
    special_u = [0.5, 0.0, 1 - 2.0**-24, 1 - 2.0**-24, 0.99, 0.5, 2.0**-24, 2.0**-24, 0.0, 0.25,
                 0.25, 0.75, 1 - 2.0**-24, 2.0**-24]
    mags = 2.0 ** rng.integers(-40, 24, 20000)
    v = np.concatenate([special_v, rng.standard_normal(20000) * mags]).astype(F32)
    u = np.concatenate([special_u, rng.random(20000, dtype=F32)]).astype(F32)
    got = v.copy()
    fmt_mod._floor_plus_uniform(got, u, np.empty_like(v))
    expect = [float(math.floor(Fraction(float(a)) + Fraction(float(b)))) for a, b in zip(v, u)]
    assert_bits_equal(got, np.array(expect, F32), "floor(v + u)")
    assert got[0] == 0.0 and got[1] == -1.0
    assert np.floor(v[0] + u[0]) == 1.0  # the naive float32 evaluation is wrong here
