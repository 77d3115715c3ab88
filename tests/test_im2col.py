"""im2col / col2im against a direct definition, in both column layouts and with N spatial axes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ristretto_cli.layers.im2col import (
    ConvGeometry,
    batch_inner_for,
    col2im,
    conv_out_size,
    deconv_out_size,
    from_cols,
    im2col,
    release_scratch,
    scratch,
    to_cols,
)


def naive_im2col(x, geo: ConvGeometry, batch_inner: bool) -> np.ndarray:
    """Caffe's im2col row order (c, kernel offsets), zero outside the image."""
    n, c = x.shape[:2]
    rows = []
    for ch in range(c):
        for q in itertools.product(*map(range, geo.kernel)):
            row = np.zeros((n,) + geo.cols)
            for pos in itertools.product(*map(range, geo.cols)):
                idx = tuple(p * s - pd + qq * d for p, s, pd, qq, d in
                            zip(pos, geo.stride, geo.pad, q, geo.dilation))
                if all(0 <= i < size for i, size in zip(idx, geo.image)):
                    row[(slice(None),) + pos] = x[(slice(None), ch) + idx]
            rows.append(np.moveaxis(row, 0, -1).ravel() if batch_inner else row.ravel())
    return np.array(rows)


def geometry(image, kernel, stride, pad, dilation):
    cols = tuple(conv_out_size(i, k, s, p, d) for i, k, s, p, d in zip(image, kernel, stride, pad, dilation))
    return ConvGeometry(tuple(image), cols, tuple(kernel), tuple(stride), tuple(pad), tuple(dilation))


GEOMETRIES = [
    geometry((5, 6), (3, 3), (1, 1), (1, 1), (1, 1)),
    geometry((7, 7), (3, 2), (2, 1), (1, 0), (2, 1)),
    geometry((6, 5), (1, 1), (1, 1), (0, 0), (1, 1)),       # pointwise
    geometry((4, 4), (2, 2), (3, 3), (0, 0), (1, 1)),       # stride > kernel
    geometry((2, 2), (3, 3), (2, 2), (0, 0), (1, 1)),       # C truncation: window past the input
    geometry((4, 3, 5), (2, 3, 2), (1, 2, 2), (1, 1, 0), (1, 1, 2)),   # 3 spatial axes
    geometry((9,), (3,), (2,), (1,), (3,)),                 # 1 spatial axis
]


@pytest.mark.parametrize("batch_inner", [False, True])
@pytest.mark.parametrize("geo", GEOMETRIES,
                         ids=lambda g: f"{g.image}k{g.kernel}s{g.stride}p{g.pad}d{g.dilation}")
def test_im2col_matches_definition_and_col2im_is_its_adjoint(geo, batch_inner):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2) + geo.image)
    col = im2col(x, geo, batch_inner)
    np.testing.assert_array_equal(col, naive_im2col(x, geo, batch_inner))
    # col2im is the transpose of im2col: <im2col(x), c> == <x, col2im(c)>
    c = rng.standard_normal(col.shape)
    back = col2im(c, geo, 3, 2, batch_inner)
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(col * c), np.sum(x * back), rtol=1e-12)


def test_im2col_into_given_buffer_and_float32():
    geo = GEOMETRIES[1]
    x = np.random.default_rng(0).standard_normal((2, 3) + geo.image).astype(np.float32)
    out = np.full((3 * geo.kernel_size, 2 * geo.col_size), np.nan, np.float32)
    assert im2col(x, geo, False, out=out) is out
    np.testing.assert_array_equal(out, naive_im2col(x, geo, False).astype(np.float32))


def test_the_padded_work_array_keeps_zero_padding_across_layouts():
    """im2col zeroes its padded work array only when the layout changes. Two geometries whose
    padded images have the same shape but different interiors (a 4x4 image padded by 1, a 2x2
    one padded by 2), alternated, with the scratch memory released in between, each time
    give the definition's buffer: no value of the other layout leaks into the padding."""
    release_scratch()
    a = geometry((4, 4), (3, 3), (1, 1), (1, 1), (1, 1))
    b = geometry((2, 2), (3, 3), (1, 1), (2, 2), (1, 1))
    rng = np.random.default_rng(4)
    for step, geo in enumerate([a, a, b, a, b, b, a]):
        if step == 5:
            release_scratch()
            garbage = scratch("im2col_pad", (4, 4096), np.float32)
            garbage.fill(np.nan)            # a fresh buffer may hold anything
            release_scratch()
        for batch_inner in (False, True):
            x = rng.standard_normal((2, 3) + geo.image).astype(np.float32)
            np.testing.assert_array_equal(im2col(x, geo, batch_inner),
                                          naive_im2col(x, geo, batch_inner).astype(np.float32))


def test_conv_out_size_truncates_toward_zero():
    assert conv_out_size(2, 3, 2, 0, 1) == 1     # (2 - 3) / 2 is 0 in C, -1 in Python
    assert conv_out_size(1, 4, 2, 0, 1) == 0     # (1 - 4) / 2 = -1
    assert conv_out_size(227, 11, 4, 0, 1) == 55
    assert conv_out_size(7, 3, 1, 1, 2) == 5
    assert deconv_out_size(3, 3, 2, 1, 1) == 5
    assert deconv_out_size(4, 4, 2, 1, 1) == 8


@pytest.mark.parametrize("batch_inner", [False, True])
def test_column_layout_round_trip(batch_inner):
    a = np.random.default_rng(1).standard_normal((3, 4, 2, 5))
    m = to_cols(a, batch_inner, np.empty((4, 30)))
    np.testing.assert_array_equal(from_cols(m, 3, (2, 5), batch_inner), a)


def test_layout_heuristic():
    assert not batch_inner_for(1, (5, 5), 4)
    assert batch_inner_for(64, (8, 8), 4)
    assert not batch_inner_for(64, (55, 55), 4)


def test_scratch_is_reused_and_grows():
    release_scratch()
    a = scratch("t", (4, 5), np.float32)
    b = scratch("t", (2, 3), np.float32)
    assert np.shares_memory(a, b)
    c = scratch("t", (100, 100), np.float64)
    assert c.shape == (100, 100) and c.dtype == np.float64
    release_scratch()
