"""Property tests for the trimming kernels: grid membership, range, idempotence, stochastic
rounding (unbiased, repeatable) and in-place / strided operation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ristretto_cli.quantization import (
    SEMANTICS,
    DynamicFixedPoint,
    Minifloat,
    PowerOfTwo,
)

F32 = np.float32
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

dfp_formats = st.builds(DynamicFixedPoint, st.integers(1, 32), st.integers(-12, 40))
mf_formats = st.builds(Minifloat, st.integers(0, 23), st.integers(1, 8))
p2_formats = st.builds(PowerOfTwo, st.integers(-30, 5), st.integers(-30, 5)).filter(
    lambda f: f.exp_min <= f.exp_max)
any_format = st.one_of(dfp_formats, mf_formats, p2_formats)
finite_arrays = hnp.arrays(F32, st.integers(1, 40),
                           elements=st.floats(width=32, allow_nan=False, allow_infinity=False))
any_arrays = hnp.arrays(F32, st.integers(1, 40), elements=st.floats(width=32))


def bits(a):
    return np.asarray(a, F32).view(np.uint32)


def minifloat_carry_value(f: Minifloat) -> float:
    """Next power of two above grid_max: reachable by NEAREST from inputs just below it."""
    return 2.0 * 2.0 ** (2**f.exp_bits - 1 - f.bias) if f.exp_bits < 8 else math.inf


def assert_on_grid(f, x, y):
    """Every output of a finite input is a value of the format, inside its range."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    if isinstance(f, DynamicFixedPoint):
        assert np.all((y >= f.grid_min) & (y <= f.grid_max))
        scaled = y * 2.0**f.fl  # exact in double
        assert np.all(scaled == np.round(scaled))
    elif isinstance(f, Minifloat):
        a = np.abs(y)
        nonzero = a != 0
        carry = a == minifloat_carry_value(f)
        assert np.all(a[nonzero] >= f.min_positive)
        assert np.all((a <= f.grid_max) | carry)
        # the carry is reached only from inputs above the largest value (rounding up)
        assert np.all(np.abs(x[carry]) > f.grid_max)
        mant_bits = bits(a[nonzero & np.isfinite(a)].astype(F32)) & 0x7FFFFF
        if f.mant_bits < 23:
            assert np.all(mant_bits & ((1 << (23 - f.mant_bits)) - 1) == 0)
    else:
        a = np.abs(y)
        assert np.all((a >= f.min_positive) & (a <= f.grid_max))
        m, _ = np.frexp(a)
        assert np.all(m == 0.5)  # powers of two, never zero
        assert np.all(np.signbit(y) == (x < 0))


@SETTINGS
@given(f=any_format, x=finite_arrays, semantics=st.sampled_from(SEMANTICS))
def test_outputs_lie_on_the_grid(f, x, semantics):
    y = f.trim(x, semantics=semantics)
    assert y.dtype == F32 and y.shape == x.shape
    assert_on_grid(f, x, y)
    g = f.trim(x, "stochastic", semantics=semantics, rng=np.random.default_rng(0))
    assert_on_grid(f, x, g)


@SETTINGS
@given(f=any_format, x=any_arrays, semantics=st.sampled_from(SEMANTICS))
def test_nearest_is_idempotent(f, x, semantics):
    y = f.trim(x, semantics=semantics)
    z = f.trim(y, semantics=semantics)
    if isinstance(f, Minifloat) and f.exp_bits < 8:
        # The original keeps a mantissa carry past the largest value; trimming that carry value
        # again saturates it. Everything else is a fixed point.
        carry = np.abs(y) == minifloat_carry_value(f)
        assert np.all(np.abs(z[carry]) == f.grid_max)
        y, z = y[~carry], z[~carry]
    same = (bits(y) == bits(z)) | (np.isnan(y) & np.isnan(z))
    assert same.all()


@SETTINGS
@given(f=any_format, x=any_arrays, semantics=st.sampled_from(SEMANTICS),
       stochastic=st.booleans())
def test_in_place_equals_out_of_place(f, x, semantics, stochastic):
    rounding = "stochastic" if stochastic else "nearest"
    original = x.copy()
    expect = f.trim(x, rounding, semantics=semantics, rng=np.random.default_rng(7))
    assert (bits(x) == bits(original)).all()  # out=None leaves the input alone
    buf = x.copy()
    got = f.trim(buf, rounding, semantics=semantics, rng=np.random.default_rng(7), out=buf)
    assert got is buf
    assert (bits(buf) == bits(expect)).all()


@pytest.mark.parametrize("f", [DynamicFixedPoint(8, 4), DynamicFixedPoint(4, 200), Minifloat(3, 4),
                               Minifloat(2, 1), Minifloat(10, 8), PowerOfTwo(-8, -1),
                               PowerOfTwo(-140, -120)], ids=str)
@pytest.mark.parametrize("semantics", SEMANTICS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_in_place_on_special_bit_patterns(f, semantics, rounding):
    """Every bit pattern class, including NaNs whose payload carries into the sign bit when a
    mantissa is rounded, gives the same result in place and out of place."""
    patterns = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FC00000, 0xFFC00000, 0x7F800001, 0x7F800000,
                         0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00000000, 0x80000000, 0x00000001,
                         0x807FFFFF, 0x3F800000, 0xBFC00000, 0x43F00000, 0x43FC0000],
                        np.uint32).view(F32)
    x = np.tile(patterns, 5)
    expect = f.trim(x, rounding, semantics=semantics, rng=np.random.default_rng(2))
    buf = x.copy()
    f.trim(buf, rounding, semantics=semantics, rng=np.random.default_rng(2), out=buf)
    same = (bits(buf) == bits(expect)) | (np.isnan(buf) & np.isnan(expect))
    assert same.all()


@pytest.mark.parametrize("f", [DynamicFixedPoint(8, 4), Minifloat(3, 4), PowerOfTwo(-8, -1)],
                         ids=str)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_strided_views_and_layouts(f, rounding):
    rng = np.random.default_rng(1)
    base = (rng.standard_normal((70, 3000)) * 2).astype(F32)  # > one chunk in every view
    for index in [np.s_[:, ::2], np.s_[::3, 1:], np.s_[5:60, ::-1], np.s_[:, 7]]:
        parent = base.copy()
        view = parent[index]
        expect = f.trim(np.ascontiguousarray(view), rounding, rng=np.random.default_rng(3))
        # out-of-place from a strided input
        got = f.trim(view, rounding, rng=np.random.default_rng(3))
        assert (bits(got) == bits(expect)).all()
        # in place through the view: the parent's memory changes there and only there
        got = f.trim(view, rounding, rng=np.random.default_rng(3), out=view)
        assert got is view
        assert (bits(parent[index]) == bits(expect)).all()
        untouched = np.ones(parent.shape, bool)
        untouched[index] = False
        assert (bits(parent[untouched]) == bits(base[untouched])).all()
    fortran = np.asfortranarray(base)
    expect = f.trim(base, rounding, rng=np.random.default_rng(3))  # draws follow C order
    got = f.trim(fortran, rounding, rng=np.random.default_rng(3), out=fortran)
    assert (bits(fortran) == bits(expect)).all() and got is fortran
    # out= a different array; partly overlapping memory
    other = np.empty_like(base)
    f.trim(base, rounding, rng=np.random.default_rng(3), out=other)
    assert (bits(other) == bits(expect)).all()
    flat = base.reshape(-1).copy()
    src = flat[:-10].copy()
    f.trim(flat[:-10], rounding, rng=np.random.default_rng(3), out=flat[10:])
    assert (bits(flat[10:]) == bits(f.trim(src, rounding, rng=np.random.default_rng(3)))).all()


# --------------------------------------------------------------------------- stochastic rounding
N_DRAWS = 4096


def _stochastic_mean_error_bound(step):
    # floor(v + U) takes the two neighbours on the grid, so each draw has standard deviation at
    # most step / 2; 6 standard errors make a false failure practically impossible (~1e-9). U is a
    # multiple of 2^-24, which biases the expectation by less than 2^-24 of a step.
    return 6 * (step / 2) / math.sqrt(N_DRAWS) + step * 2.0**-24


@SETTINGS
@given(f=dfp_formats, frac=st.floats(0, 1, exclude_max=True), semantics=st.sampled_from(SEMANTICS))
def test_stochastic_dfp_is_unbiased(f, frac, semantics):
    x = F32(f.grid_min + frac * (f.grid_max - f.grid_min))
    y = f.trim(np.full(N_DRAWS, x), "stochastic", semantics=semantics,
               rng=np.random.default_rng(int(frac * 1e9)))
    assert abs(y.astype(np.float64).mean() - float(x)) <= _stochastic_mean_error_bound(f.step)


@SETTINGS
@given(f=mf_formats, frac=st.floats(0, 1), semantics=st.sampled_from(SEMANTICS))
def test_stochastic_minifloat_is_unbiased(f, frac, semantics):
    # inside the range the mantissa is rounded linearly within the input's binade
    lo, hi = math.log2(f.min_positive), math.log2(f.grid_max)
    x = F32(2.0 ** (lo + frac * (hi - lo)))
    assume(f.min_positive <= x <= f.grid_max)
    step = 2.0 ** (math.floor(math.log2(x)) - f.mant_bits)
    y = f.trim(np.full(N_DRAWS, x), "stochastic", semantics=semantics,
               rng=np.random.default_rng(int(frac * 1e9)))
    assert abs(y.astype(np.float64).mean() - float(x)) <= _stochastic_mean_error_bound(step)


@SETTINGS
@given(f=p2_formats, frac=st.floats(0, 1), negative=st.booleans(),
       semantics=st.sampled_from(SEMANTICS))
def test_stochastic_pow2_is_unbiased_in_the_log_domain(f, frac, negative, semantics):
    # the exponent t = log2|x| is rounded to floor(t) or floor(t) + 1, so E[log2|y|] = t
    t = f.exp_min + frac * (f.exp_max - f.exp_min)
    x = F32(2.0**t) * (-1 if negative else 1)
    y = f.trim(np.full(N_DRAWS, x), "stochastic", semantics=semantics,
               rng=np.random.default_rng(int(frac * 1e9)))
    assert np.all(np.signbit(y) == negative)
    t32 = float(np.log2(abs(x)))  # float32 log2, as the kernel computes it
    assert abs(np.log2(np.abs(y.astype(np.float64))).mean() - t32) <= _stochastic_mean_error_bound(1)


@pytest.mark.parametrize("f", [DynamicFixedPoint(8, 4), Minifloat(3, 4), PowerOfTwo(-8, -1)],
                         ids=str)
@pytest.mark.parametrize("semantics", SEMANTICS)
def test_stochastic_is_repeatable_per_seed(f, semantics):
    # inputs exactly half-way between two grid values: every element is a fair coin
    half = {"DFP(8,4)": 0.03125, "MF(3,4)": 1.0625, "P2(-8,-1)": 2.0**-2.5}[str(f)]
    x = np.full(256, half, F32)
    a = f.trim(x, "stochastic", semantics=semantics, rng=np.random.default_rng(123))
    b = f.trim(x, "stochastic", semantics=semantics, rng=np.random.default_rng(123))
    c = f.trim(x, "stochastic", semantics=semantics, rng=np.random.default_rng(124))
    assert (bits(a) == bits(b)).all()
    assert (bits(a) != bits(c)).any()
    assert len(set(a.tolist())) == 2  # both neighbours occur
    with pytest.raises(ValueError):
        f.trim(x, "stochastic", semantics=semantics)
