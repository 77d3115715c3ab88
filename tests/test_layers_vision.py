"""Convolution, Deconvolution, InnerProduct, Pooling and LRN.

Forward passes are checked against hand computations, direct-loop references written here
(Caffe's loops transcribed, in float32 where Caffe's summation order is reproduced exactly),
and OpenCV's independent Caffe importer; backward passes against finite differences. The
real-Caffe single-layer references live in test_reference_layers.py.
"""

from __future__ import annotations

import itertools
import math
import random

import cv2
import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import TRAIN, check_forward, check_gradient, forward, layer_param, setup

from ristretto_cli import parallel
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import upgrade_net_as_needed, write_caffemodel
from ristretto_cli.layers import blas_panels, convolution, im2col, pooling, row_shift
from ristretto_cli.layers.convolution import ConvolutionLayer, DeconvolutionLayer
from ristretto_cli.layers.inner_product import InnerProductLayer
from ristretto_cli.layers.pooling import pooled_size
from ristretto_cli.net import TEST, Net
from ristretto_cli.proto import caffe_pb2

FLT_MAX = float(np.finfo(np.float32).max)
FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def rng(seed=0):
    return np.random.default_rng(seed)


def conv_spec(kind="Convolution", num_output=4, kernel=(3,), stride=(), pad=(), dilation=(),
              group=1, extra=""):
    fields = [f"num_output: {num_output}", f"group: {group}"]
    for name, values in (("kernel_size", kernel), ("stride", stride), ("pad", pad), ("dilation", dilation)):
        fields += [f"{name}: {v}" for v in values]
    return f'type: "{kind}" convolution_param {{ {" ".join(fields)} {extra} {FILLERS} }}'


def spatial(values, nsp, default):
    values = tuple(values) or (default,)
    return values * nsp if len(values) == 1 else values


# ------------------------------------------------------------------ direct references
def naive_conv(x, w, b, stride, pad, dilation, group):
    n, c = x.shape[:2]
    sp, o, kernel = x.shape[2:], w.shape[0], w.shape[2:]
    out = tuple(im2col.conv_out_size(i, k, s, p, d)
                for i, k, s, p, d in zip(sp, kernel, stride, pad, dilation))
    y = np.zeros((n, o) + out)
    cg, og = c // group, o // group
    for item, oc in itertools.product(range(n), range(o)):
        g = oc // og
        for pos in itertools.product(*map(range, out)):
            acc = 0.0
            for ch, q in itertools.product(range(cg), itertools.product(*map(range, kernel))):
                idx = tuple(p * s - pd + qq * d for p, s, pd, qq, d in zip(pos, stride, pad, q, dilation))
                if all(0 <= i < size for i, size in zip(idx, sp)):
                    acc += w[(oc, ch) + q] * x[(item, g * cg + ch) + idx]
            y[(item, oc) + pos] = acc + (b[oc] if b is not None else 0.0)
    return y


def naive_deconv(x, w, b, stride, pad, dilation, group):
    n, c = x.shape[:2]
    sp, kernel = x.shape[2:], w.shape[2:]
    og = w.shape[1]
    o = og * group
    out = tuple(im2col.deconv_out_size(i, k, s, p, d)
                for i, k, s, p, d in zip(sp, kernel, stride, pad, dilation))
    y = np.zeros((n, o) + out)
    cg = c // group
    for item, ch in itertools.product(range(n), range(c)):
        g = ch // cg
        for pos in itertools.product(*map(range, sp)):
            for ol, q in itertools.product(range(og), itertools.product(*map(range, kernel))):
                idx = tuple(p * s - pd + qq * d for p, s, pd, qq, d in zip(pos, stride, pad, q, dilation))
                if all(0 <= i < size for i, size in zip(idx, out)):
                    y[(item, g * og + ol) + idx] += w[(ch, ol) + q] * x[(item, ch) + pos]
    if b is not None:
        y += b.reshape((1, o) + (1,) * len(out))
    return y


def caffe_pool(x, pool, kernel, stride, pad, ceil_mode=True):
    """Caffe's CPU pooling loops, scalar float32 arithmetic: (top, argmax) and a backward."""
    n_, c_, h, w = x.shape
    (kh, kw), (sh, sw), (ph_, pw_) = kernel, stride, pad
    rnd = math.ceil if ceil_mode else math.floor
    ph = int(rnd((h + 2 * ph_ - kh) / sh)) + 1
    pw = int(rnd((w + 2 * pw_ - kw) / sw)) + 1
    if ph_ or pw_:
        ph -= (ph - 1) * sh >= h + ph_
        pw -= (pw - 1) * sw >= w + pw_
    top = np.zeros((n_, c_, ph, pw), np.float32)
    arg = np.full((n_, c_, ph, pw), -1)
    sizes = np.zeros((ph, pw))
    for n, c, i, j in itertools.product(range(n_), range(c_), range(ph), range(pw)):
        hs, ws = i * sh - ph_, j * sw - pw_
        if pool == "MAX":
            he, we = min(hs + kh, h), min(ws + kw, w)
            hs, ws = max(hs, 0), max(ws, 0)
            best, idx = np.float32(-FLT_MAX), -1
            for y in range(hs, he):
                for z in range(ws, we):
                    if x[n, c, y, z] > best:
                        best, idx = x[n, c, y, z], y * w + z
            top[n, c, i, j], arg[n, c, i, j] = best, idx
        else:
            he, we = min(hs + kh, h + ph_), min(ws + kw, w + pw_)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            acc = np.float32(0)
            for y in range(hs, he):
                for z in range(ws, we):
                    acc = np.float32(acc + x[n, c, y, z])
            top[n, c, i, j] = acc / np.float32(size)
            sizes[i, j] = size

    def backward(dy):
        dx = np.zeros(x.shape, np.float32)
        for n, c, i, j in itertools.product(range(n_), range(c_), range(ph), range(pw)):
            if pool == "MAX":
                if arg[n, c, i, j] >= 0:
                    y, z = divmod(int(arg[n, c, i, j]), w)
                    dx[n, c, y, z] = np.float32(dx[n, c, y, z] + dy[n, c, i, j])
            else:
                hs, ws = i * sh - ph_, j * sw - pw_
                he, we = min(hs + kh, h + ph_), min(ws + kw, w + pw_)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                for y in range(hs, he):
                    for z in range(ws, we):
                        dx[n, c, y, z] = np.float32(dx[n, c, y, z] + dy[n, c, i, j] / np.float32(sizes[i, j]))
        return dx

    return top, arg, backward


def caffe_lrn_across(x, size, alpha, beta, k):
    """Caffe's running-window LRN forward, one (n, h, w) column at a time, float32 scalars."""
    f = np.float32
    n_, c_, h_, w_ = x.shape
    pre = (size - 1) // 2
    aos = f(alpha) / f(size)
    y = np.zeros_like(x)
    for n, h, w in itertools.product(range(n_), range(h_), range(w_)):
        padded = np.zeros(c_ + size - 1, np.float32)
        padded[pre:pre + c_] = x[n, :, h, w] * x[n, :, h, w]
        scale = np.zeros(c_, np.float32)
        s = f(k)
        for c in range(size):
            s = f(s + f(aos * padded[c]))
        scale[0] = s
        for c in range(1, c_):
            s = f(s + f(aos * padded[c + size - 1]))
            s = f(s - f(aos * padded[c - 1]))
            scale[c] = s
        y[n, :, h, w] = x[n, :, h, w] * (scale.astype(np.float64) ** -float(f(beta))).astype(np.float32)
    return y


def lrn_direct(x, size, alpha, beta, k, within):
    x = x.astype(np.float64)
    pre = (size - 1) // 2
    sq = np.pad(x * x, ((0, 0), (pre, pre), (0, 0), (0, 0)) if not within else
                ((0, 0), (0, 0), (pre, pre), (pre, pre)))
    if within:
        h, w = x.shape[2:]
        s = sum(sq[:, :, i:i + h, j:j + w] for i in range(size) for j in range(size))
        return x * (1 + alpha / size ** 2 * s) ** -beta
    c = x.shape[1]
    s = sum(sq[:, i:i + c] for i in range(size))
    return x * (k + alpha / size * s) ** -beta


def blobs_text(*arrays):
    out = []
    for a in arrays:
        a = np.asarray(a, np.float32)
        dims = " ".join(f"dim: {d}" for d in a.shape)
        data = " ".join(f"data: {v!r}" for v in a.ravel().tolist())
        out.append(f"blobs {{ shape {{ {dims} }} {data} }}")
    return " ".join(out)


# ================================================================== Convolution
CONV_CASES = [
    # shape, num_output, kernel, stride, pad, dilation, group
    ((2, 4, 7, 7), 4, (3,), (), (1,), (2,), 2),
    ((2, 3, 6, 5), 6, (2, 3), (2, 1), (0, 1), (), 3),
    ((1, 2, 5, 5), 3, (1,), (), (), (), 1),                 # pointwise, single item
    ((3, 4, 4, 3), 2, (1,), (), (), (), 2),                 # pointwise, batch, groups
    ((2, 2, 2, 2), 2, (3,), (2,), (), (), 1),               # window past the input (C truncation)
    ((2, 2, 4, 3, 5), 2, (3, 2, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2), 1),   # 3-D
    ((2, 3, 9), 3, (3,), (2,), (1,), (2,), 1),              # 1-D
    ((2, 5, 6, 7), 5, (3,), (), (1,), (), 5),               # depthwise (one batched product)
    ((2, 4, 7, 6), 8, (3,), (2,), (1,), (), 4),             # two outputs per group, stride 2
]


def _conv_forward_check(kind, case):
    shape, o, kernel, stride, pad, dilation, group = case
    nsp = len(shape) - 2
    spec = conv_spec(kind, o, kernel, stride, pad, dilation, group)
    x = rng(1).standard_normal(shape)
    layer, bottoms, tops = setup(spec, [x], dtype=np.float64)
    layer.forward(bottoms, tops)
    ref = (naive_conv if kind == "Convolution" else naive_deconv)(
        x, layer.blobs[0].data, layer.blobs[1].data, spatial(stride, nsp, 1), spatial(pad, nsp, 0),
        spatial(dilation, nsp, 1), group)
    np.testing.assert_allclose(tops[0].data, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_conv_forward_matches_direct_loops(kind, case):
    _conv_forward_check(kind, case)


@pytest.mark.parametrize("layout", [False, True], ids=["batch-outer", "batch-inner"])
@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_conv_both_column_layouts_and_chunking(kind, layout, monkeypatch):
    monkeypatch.setattr(convolution, "batch_inner_for", lambda *a: layout)
    for case in CONV_CASES[:2] + CONV_CASES[3:4] + CONV_CASES[5:6]:
        _conv_forward_check(kind, case)
        check_gradient(conv_spec(kind, *case[1:]), [rng(2).standard_normal(case[0])])
    # a column budget of one element forces one batch item per GEMM
    monkeypatch.setattr(convolution, "COL_BUFFER_ELEMENTS", 1)
    _conv_forward_check(kind, CONV_CASES[0])
    check_gradient(conv_spec(kind, *CONV_CASES[0][1:]), [rng(2).standard_normal(CONV_CASES[0][0])])


def test_conv_row_blocks_match_direct_loops(monkeypatch):
    """Items whose column buffer outgrows the cache are convolved in blocks of output rows,
    each its own small convolution of a slab of input rows; a budget of one element makes
    every output row a block."""
    monkeypatch.setattr(convolution, "BLOCK_COL_ELEMENTS", 1)
    monkeypatch.setattr(convolution, "ROW_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(convolution, "BLOCK_MIN_COLUMNS", 1)
    blocks = []
    real = im2col.ConvGeometry.row_block
    monkeypatch.setattr(im2col.ConvGeometry, "row_block", lambda g, r0, r1: blocks.append((r0, r1)) or real(g, r0, r1))
    for case in CONV_CASES:
        blocks.clear()
        _conv_forward_check("Convolution", case)
        shape, kernel = case[0], case[2]
        if not all(k == 1 for k in kernel) and shape[2] > 2:
            assert blocks and all(r1 == r0 + 1 for r0, r1 in blocks), case


def _chunks_on_threads(monkeypatch, elements: int, threads: int) -> None:
    """Convolution chunks within ``elements`` of column buffer (1: one item each, down to one
    column per GEMM), shared among ``threads``."""
    monkeypatch.setattr(convolution, "CACHE_COL_ELEMENTS", elements)
    monkeypatch.setattr(convolution, "MIN_GEMM_COLUMNS", 1)
    monkeypatch.setattr(parallel, "_threads", threads)


def _recorded(monkeypatch, owner, name: str, pick) -> list:
    """Replaces ``owner.name`` by a wrapper that records ``pick(*args, **kw)`` of every call
    where that is not None."""
    seen = []
    real = getattr(owner, name)

    def wrapper(*a, **kw):
        value = pick(*a, **kw)
        if value is not None:
            seen.append(value)
        return real(*a, **kw)
    monkeypatch.setattr(owner, name, wrapper)
    return seen


def test_batch_inner_forward_chunks_keep_their_result_within_the_cache(monkeypatch):
    """A forward chunk in the batch-inner layout keeps its GEMM result within
    BATCH_INNER_RESULT_BYTES, since storing it into the top reads it with a stride of the
    chunk's items. LeNet's first layer at batch 64 fits one chunk by its column buffer; its
    result (2.8 MB) goes in chunks of 1 MB or less instead. The top is the same, bit for bit,
    and matches a float64 convolution."""
    x = rng(5).standard_normal((64, 1, 28, 28)).astype(np.float32)
    spec = conv_spec("Convolution", 20, (5,), (), (), (), 1)
    monkeypatch.setattr(parallel, "_threads", 1)
    chunks = _recorded(monkeypatch, convolution, "im2col", lambda xc, *a, **kw: xc.shape[0])
    assert convolution.batch_inner_for(64, (24, 24), 4)
    capped = forward(spec, [x])[0]
    result_bytes = 20 * 24 * 24 * 4
    assert len(chunks) > 1 and sum(chunks) == 64
    assert max(chunks) * result_bytes <= convolution.BATCH_INNER_RESULT_BYTES
    chunks.clear()
    monkeypatch.setattr(convolution, "BATCH_INNER_RESULT_BYTES", 1 << 40)
    whole = forward(spec, [x])[0]
    assert chunks == [64]
    np.testing.assert_array_equal(capped, whole)
    layer, _, _ = setup(spec, [x])
    w, b = (blob.data.astype(np.float64) for blob in layer.blobs)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (5, 5), axis=(2, 3))
    expected = np.einsum("nchwij,ocij->nohw", windows, w) + b[:, None, None]
    np.testing.assert_allclose(capped, expected, rtol=1e-5, atol=1e-5)


PANEL_CASES = [
    # case (as CONV_CASES), rows and depth of each group's forward product
    (((2, 3, 5, 7), 4, (2,), (), (1,), (), 1), 4, 12),          # 6 x 8 outputs per item
    (((3, 2, 3, 40), 3, (3,), (), (1,), (), 1), 3, 18),
    (((2, 4, 3, 33), 4, (3,), (), (1,), (), 2), 2, 18),         # groups; dx by flipped kernels
]


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("deep", [False, True], ids=["one depth block", "depth blocks"])
@pytest.mark.parametrize("case, rows, depth", PANEL_CASES,
                         ids=lambda c: "x".join(map(str, c[0])) if isinstance(c, tuple) else str(c))
def test_conv_panels_match_direct_loops(case, rows, depth, deep, threads, monkeypatch):
    """Products in panels of 16 columns (where the threads are already shared out: one
    thread, or one per batch chunk; here chunks of one item), with or without depth blocks
    of at most 8: forward against the direct loops, backward (the column gradient in panels,
    too) against finite differences. The panels are forced: these float64 shapes are about
    the plumbing, not about the BLAS's bits (``tests/test_blas_panels.py``)."""
    _chunks_on_threads(monkeypatch, 1, threads)
    monkeypatch.setattr(blas_panels, "agrees", lambda *a, **kw: True)
    monkeypatch.setattr(convolution, "GROUP_BATCH_MADDS", 0)     # small groups one by one too
    if deep:
        monkeypatch.setattr(blas_panels, "BLOCK_DEPTH", 8)
        monkeypatch.setattr(blas_panels, "BLOCK_UNROLL", 1)
    monkeypatch.setattr(convolution, "PANEL_MADDS", rows * blas_panels.deepest_block(depth) * 16)
    monkeypatch.setattr(convolution, "PANEL_MIN_COLUMNS", 16)
    used = _recorded(monkeypatch, blas_panels, "panel_product", lambda a, b, out, width, count: (a.shape, width))
    _conv_forward_check("Convolution", case)
    assert used and set(used) == {((rows, depth), 16)}
    used.clear()
    check_gradient(conv_spec("Convolution", *case[1:]), [rng(8).standard_normal(case[0])])
    assert ((rows, depth), 16) in used
    if not deep and case[0][1] // case[-1] < rows:     # fewer inputs than outputs per group:
        # dx through col2im, whose products go in panels too
        assert ((depth, rows), 16) in used


def test_conv_hand_computed():
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    spec = ('type: "Convolution" convolution_param { num_output: 1 kernel_size: 2 } '
            + blobs_text([[[[1, 0], [0, -1]]]], [0.5]))
    check_forward(spec, [x], [np.full((1, 1, 2, 2), -3.5)])   # x[i,j] - x[i+1,j+1] + 0.5
    # stride 2, pad 1, rectangular kernel 1x2: windows [pad, x] -> x[.,0]*w1, ...
    spec = ('type: "Convolution" convolution_param { num_output: 1 kernel_h: 1 kernel_w: 2 '
            'pad_h: 0 pad_w: 1 stride_h: 2 stride_w: 2 bias_term: false } ' + blobs_text([[[[10, 1]]]]))
    check_forward(spec, [x], [[[[[0, 12], [6, 78]]]]])


def test_conv_default_fillers_and_shapes():
    layer, _, tops = setup('type: "Convolution" convolution_param { num_output: 6 kernel_size: 3 group: 2 }',
                           [np.ones((2, 4, 5, 5))])
    assert [b.shape for b in layer.blobs] == [(6, 2, 3, 3), (6,)]
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()   # constant 0
    assert tops[0].shape == (2, 6, 3, 3)
    layer, _, _ = setup('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 3 '
                        'group: 2 bias_term: false }', [np.ones((2, 4, 5, 5))])
    assert [b.shape for b in layer.blobs] == [(4, 3, 3, 3)]


def test_conv_axis_2_leading_dims_are_batch():
    x = rng(3).standard_normal((2, 3, 4, 5, 5))
    spec = conv_spec(kernel=(3,), pad=(1,), extra="axis: 2")
    layer, bottoms, tops = setup(spec, [x], dtype=np.float64)
    layer.forward(bottoms, tops)
    assert tops[0].shape == (2, 3, 4, 5, 5)
    w, b = layer.blobs[0].data, layer.blobs[1].data
    ref = naive_conv(x.reshape(6, 4, 5, 5), w, b, (1, 1), (1, 1), (1, 1), 1)
    np.testing.assert_allclose(tops[0].data.reshape(6, 4, 5, 5), ref, rtol=1e-12, atol=1e-12)
    check_gradient(spec, [x[:1, :2]])


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
def test_conv_multiple_bottoms_share_weights(kind):
    spec = conv_spec(kind, 4, (3,), (2,), (1,), (), 2)
    a, b = rng(4).standard_normal((2, 2, 4, 5, 5))
    layer, bottoms, tops = setup(spec, [a, b], num_tops=2, dtype=np.float64)
    layer.forward(bottoms, tops)
    single = forward(spec, [b], dtype=np.float64)[0]
    np.testing.assert_allclose(tops[1].data, single, rtol=1e-12)
    check_gradient(spec, [a, b], num_tops=2)


GRAD_CASES = [
    ((2, 4, 5, 5), 4, (3,), (), (1,), (), 2),               # group, pad
    ((2, 2, 6, 6), 3, (3,), (2,), (1,), (), 1),             # stride
    ((1, 2, 7, 6), 2, (2, 3), (1, 2), (1, 0), (2, 1), 1),   # rectangular, dilation
    ((2, 4, 3, 3), 4, (1,), (), (), (), 2),                 # pointwise with groups
    ((1, 2, 3, 4, 4), 2, (2,), (1, 2, 1), (1,), (), 1),     # 3-D
    ((2, 4, 5, 5), 4, (3,), (), (1,), (), 4),               # depthwise, stride 1
    ((2, 3, 6, 5), 3, (3,), (2,), (1,), (), 3),             # depthwise, stride 2
]


@pytest.mark.parametrize("kind", ["Convolution", "Deconvolution"])
@pytest.mark.parametrize("case", GRAD_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_conv_gradients(kind, case):
    check_gradient(conv_spec(kind, *case[1:]), [rng(5).standard_normal(case[0])])


FLIPPED_CASES = [
    ((2, 4, 6, 5), 2, (3,), (), (1,), (), 1),
    ((2, 6, 5, 6), 4, (2, 3), (), (0, 1), (), 2),           # rectangular, groups, no pad in h
    ((2, 3, 4, 5, 4), 3, (2, 3, 2), (), (1, 0, 1), (), 1),  # 3-D
    ((3, 4, 9), 4, (3,), (), (2,), (), 1),                  # 1-D, pad = kernel - 1
]


@pytest.mark.parametrize("case", FLIPPED_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_conv_gradients_through_flipped_kernels(case):
    """Stride 1 with at least as many inputs as outputs: both gradients come from the column
    buffer of dy under the flipped kernels (the weights' through a reversed view of dW)."""
    spec = conv_spec("Convolution", *case[1:])
    layer, _, _ = setup(spec, [rng(7).standard_normal(case[0])])
    assert layer._flipped_geometry() is not None
    check_gradient(spec, [rng(7).standard_normal(case[0])])


def test_unpadded_layers_take_the_column_gradient():
    """The flipped kernels cover every input position: for an unpadded layer whose input has
    far more positions than its output (LeNet's second layer, 12 x 12 -> 8 x 8, 2.25x) that
    multiplies dy's zero padding, so its input gradient goes through col2im; a padded layer of
    the same size keeps the flipped kernels."""
    x = rng(3).standard_normal((2, 20, 12, 12))
    lenet, _, _ = setup(conv_spec("Convolution", 50, (5,), (), (), (), 1), [x])
    same, _, _ = setup(conv_spec("Convolution", 50, (5,), (), (2,), (), 1), [x])
    assert lenet.geometry.image_size > convolution.FLIPPED_MAX_EXTRA * lenet.geometry.col_size
    assert lenet._flipped_geometry() is None
    assert same._flipped_geometry() is not None
    check_gradient(conv_spec("Convolution", 6, (5,), (), (), (), 1), [rng(4).standard_normal((2, 4, 9, 9))])


ROW_SHIFT_CASES = FLIPPED_CASES + [
    ((5, 3, 6, 4), 4, (3,), (), (1,), (), 1),               # C < O: flipped, too
    ((2, 4, 5, 6), 2, (1, 3), (), (0, 1), (), 1),           # one kernel row: columns
    ((2, 4, 7, 6), 2, (3,), (2, 1), (1,), (), 1),           # stride 2: col2im
]


@pytest.mark.parametrize("threads, chunk", [(1, 1 << 20), (3, 1)], ids=["one-chunk", "three-threads-items"])
@pytest.mark.parametrize("case", ROW_SHIFT_CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_conv_backward_by_shifted_rows(case, threads, chunk, monkeypatch):
    """With any depth allowed, every backward pass through the flipped kernels with two
    kernel rows or more goes by shifted rows: both gradients equal those of the column
    paths (float64) and pass finite differences, in one chunk and in chunks of one item on
    three threads."""
    monkeypatch.setattr(row_shift, "MIN_ROW_DEPTH", 1)
    _chunks_on_threads(monkeypatch, chunk, threads)
    calls = _recorded(monkeypatch, row_shift, "row_product", lambda *a: a[2])
    shape, o, kernel, stride = case[:4]
    spec = conv_spec("Convolution", *case[1:])
    x, dy = rng(9).standard_normal(shape), None
    grads = []
    for rows in (False, True):
        monkeypatch.setattr(row_shift, "MIN_KERNEL_ROWS", 2 if rows else 1 << 30)
        layer, bottoms, tops = setup(spec, [x], dtype=np.float64)
        layer.forward(bottoms, tops)
        dy = rng(10).standard_normal(tops[0].shape) if dy is None else dy
        tops[0].diff = dy.copy()
        layer.backward(tops, [True], bottoms)
        grads.append([bottoms[0].diff.copy()] + [blob.diff.copy() for blob in layer.blobs])
    applies = kernel[0] > 1 and spatial(stride, len(shape) - 2, 1)[0] == 1
    assert bool(calls) == applies
    for a, b in zip(*grads):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    check_gradient(spec, [x])


@pytest.mark.parametrize("shape", [(7, 5, 6, 9), (3, 8, 17), (2, 6, 3, 4, 5), (1, 3, 2, 2), (20, 9, 16, 16), (4, 1, 5, 5)])
def test_bias_gradient_sums_on_threads_give_the_bits_of_one_sum(shape, monkeypatch):
    """Channel ranges summed on three threads: each channel's terms in the order of one
    ``sum`` over the whole array."""
    dy = rng(30).standard_normal(shape).astype(np.float32) * np.float32(1e3)
    want = dy.sum(axis=(0,) + tuple(range(2, dy.ndim)), dtype=np.float32)
    monkeypatch.setattr(convolution, "PARALLEL_SUM_ELEMENTS", 1)
    monkeypatch.setattr(parallel, "_threads", 3)
    got = convolution.channel_sums(dy)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_shifted_rows_bits_do_not_depend_on_the_threads(monkeypatch):
    """A 32 -> 32 5x5 layer (its backward by shifted rows, in panels): the same bits on one
    and on four threads, however the batch is chunked."""
    panels = _recorded(monkeypatch, row_shift, "row_product", lambda *a: a[5] if a[6] else 0)
    x = rng(3).standard_normal((8, 32, 8, 8)).astype(np.float32)
    dy = rng(4).standard_normal((8, 32, 8, 8)).astype(np.float32)
    spec = conv_spec("Convolution", 32, (5,), (), (2,), (), 1)
    results = []
    for threads, chunk in ((1, 1 << 20), (4, 1), (4, 1 << 20)):
        monkeypatch.setattr(convolution, "CACHE_COL_ELEMENTS", chunk)
        with parallel.limited(threads):
            layer, bottoms, tops = setup(spec, [x])
            layer.forward(bottoms, tops)
            tops[0].diff = dy.copy()
            layer.backward(tops, [True], bottoms)
            results.append([tops[0].data.copy(), bottoms[0].diff.copy()])
    assert any(panels)      # some chunks in panels (of widths up to shallow_panel(32, 160))
    assert all(w <= convolution.shallow_panel(32, 160) for w in panels)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("rows, depth, n", [(32, 160, 5), (32, 320, 16), (8, 64, 8), (16, 96, 7), (7, 383, 2)])
def test_shallow_panels_give_the_bits_of_one_product(rows, depth, n):
    """A shallow product by shifted rows in panels (see convolution.PANEL_MAX_DEPTH) has the
    bits of the same product in one piece, whatever the number of items (its width)."""
    width = convolution.shallow_panel(rows, depth)
    assert width is not None and width % 16 == 0
    g = rng(rows + depth)
    geo = im2col.ConvGeometry((16, 16), (16, 16), (5, 5), (1, 1), (2, 2), (1, 1))
    wr = g.standard_normal((5, rows, depth)).astype(np.float32)
    for items in (n, n + 1, 3 * n):
        buf = g.standard_normal((depth, 20 * 16 * items)).astype(np.float32)
        count = convolution._whole_panels(rows, depth, 256 * items, width)
        whole, panels = (np.empty((rows, 256 * items), np.float32) for _ in range(2))
        with parallel.blas_single_threaded():
            row_shift.row_product(wr, buf, geo, items, whole)
            row_shift.row_product(wr, buf, geo, items, panels, width, count)
        assert count > 0 or items == n
        np.testing.assert_array_equal(panels.view(np.uint32), whole.view(np.uint32))


def test_conv_gradient_without_bias():
    check_gradient(conv_spec(kernel=(2,), extra="bias_term: false"), [rng(6).standard_normal((2, 3, 4, 4))])


@pytest.mark.parametrize("spec, shape, message", [
    ('num_output: 0 kernel_size: 3', (1, 2, 5, 5), "num_output"),
    ('num_output: 4 kernel_size: 3 group: 2', (1, 3, 5, 5), "multiple of group"),
    ('num_output: 3 kernel_size: 3 group: 2', (1, 4, 5, 5), "multiple of group"),
    ('num_output: 2', (1, 2, 5, 5), "kernel_size"),
    ('num_output: 2 kernel_size: 0', (1, 2, 5, 5), "nonzero"),
    ('num_output: 2 kernel_size: 3 kernel_size: 3', (1, 2, 5, 5, 5), "once per spatial"),
    ('num_output: 2 kernel_h: 3 kernel_w: 3', (1, 2, 5, 5, 5), "2D"),
    ('num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3', (1, 2, 5, 5), "not both"),
    ('num_output: 2 kernel_size: 3 stride: 0', (1, 2, 5, 5), "nonzero"),
    ('num_output: 2 kernel_size: 3 stride_h: 2', (1, 2, 5, 5), "nonzero"),
    ('num_output: 2 kernel_size: 7', (1, 2, 2, 2), "exceeds"),
])
def test_conv_parameter_errors(spec, shape, message):
    with pytest.raises(RistrettoError, match=message):
        setup(f'type: "Convolution" convolution_param {{ {spec} }}', [np.zeros(shape)])


def test_conv_preloaded_blobs_are_shape_checked_and_used():
    w = rng(7).standard_normal((2, 1, 2, 2)).astype(np.float32)
    spec = 'type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 bias_term: false } '
    x = rng(8).standard_normal((1, 1, 3, 3)).astype(np.float32)
    y = forward(spec + blobs_text(w), [x])[0]
    np.testing.assert_allclose(y, naive_conv(x, w, None, (1, 1), (0, 0), (1, 1), 1), rtol=1e-5)
    with pytest.raises(RistrettoError, match="shape of parameter blob 0"):
        setup(spec + blobs_text(w.reshape(2, 1, 4)), [x])
    with pytest.raises(RistrettoError, match="number of parameter blobs"):
        setup(spec + blobs_text(w, [1, 2]), [x])


def test_conv_reshape_errors():
    layer, bottoms, tops = setup(conv_spec(kernel=(3,)), [np.zeros((1, 2, 5, 5))])
    bottoms[0].data = np.zeros((1, 3, 5, 5))
    with pytest.raises(RistrettoError, match="incompatible"):
        layer.forward(bottoms, tops)
    bottoms[0].data = np.zeros((1, 2, 5))
    with pytest.raises(RistrettoError, match="num_axes"):
        layer.forward(bottoms, tops)
    with pytest.raises(RistrettoError, match="same shape"):
        setup(conv_spec(kernel=(3,)), [np.zeros((1, 2, 5, 5)), np.zeros((1, 2, 6, 5))], num_tops=2)
    with pytest.raises(RistrettoError, match="in-place"):
        setup(conv_spec(kernel=(1,), num_output=2), [np.zeros((1, 2, 5, 5))], in_place=True)


def test_conv_reshapes_with_the_input():
    layer, bottoms, tops = setup(conv_spec(kernel=(3,), stride=(2,)), [rng(9).standard_normal((1, 2, 5, 5))],
                                 dtype=np.float64)
    bottoms[0].data = rng(10).standard_normal((3, 2, 9, 7))
    layer.forward(bottoms, tops)
    ref = naive_conv(bottoms[0].data, layer.blobs[0].data, layer.blobs[1].data, (2, 2), (0, 0), (1, 1), 1)
    np.testing.assert_allclose(tops[0].data, ref, rtol=1e-12)


@pytest.mark.parametrize("base", [ConvolutionLayer, DeconvolutionLayer])
def test_forward_weights_hook_drives_forward_and_bottom_gradient(base):
    """Quantized subclasses substitute the weights; dx uses them, dW does not depend on them."""

    class Doubled(base):
        def forward_weights(self):
            w, b = super().forward_weights()
            return 2 * w, b

    kind = "Convolution" if base is ConvolutionLayer else "Deconvolution"
    spec = conv_spec(kind, 2, (3,), (2,), (1,), (), 1)
    x = rng(11).standard_normal((2, 2, 5, 5))
    plain, pb, pt = setup(spec, [x], dtype=np.float64)
    doubled, db_, dt = setup(spec, [x], dtype=np.float64,
                             layer=Doubled(layer_param(spec), rng=np.random.default_rng(1701)))
    for layer, bottoms, tops in ((plain, pb, pt), (doubled, db_, dt)):
        layer.forward(bottoms, tops)
        tops[0].diff = np.ones_like(tops[0].data)
        layer.backward(tops, [True], bottoms)
    b = plain.blobs[1].data.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(dt[0].data - b, 2 * (pt[0].data - b), rtol=1e-12)
    np.testing.assert_allclose(db_[0].diff, 2 * pb[0].diff, rtol=1e-12)
    np.testing.assert_allclose(doubled.blobs[0].diff, plain.blobs[0].diff, rtol=1e-12)


def test_param_gradients_accumulate_and_respect_propagate_flags():
    spec = conv_spec(kernel=(3,))
    x = rng(12).standard_normal((2, 2, 5, 5))
    layer, bottoms, tops = setup(spec, [x], dtype=np.float64)
    layer.forward(bottoms, tops)
    tops[0].diff = rng(13).standard_normal(tops[0].shape)
    layer.backward(tops, [True], bottoms)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(tops, [False], bottoms)
    for b, d in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * d)
    layer.param_propagate_down = [False, False]
    bottoms[0].diff[...] = 7
    layer.backward(tops, [True], bottoms)
    for b, d in zip(layer.blobs, once):
        np.testing.assert_allclose(b.diff, 2 * d)       # unchanged
    assert not np.any(bottoms[0].diff == 7)              # overwritten


# ================================================================== Deconvolution
def test_deconv_hand_computed():
    # one input pixel scatters the kernel, stride 2 spreads two pixels apart
    x = np.array([[[[1, 2]]]], np.float32)
    spec = ('type: "Deconvolution" convolution_param { num_output: 1 kernel_size: 2 stride: 2 } '
            + blobs_text([[[[1, 2], [3, 4]]]], [0.5]))
    check_forward(spec, [x], [[[[[1.5, 2.5, 2.5, 4.5], [3.5, 4.5, 6.5, 8.5]]]]])


# ================================================================== InnerProduct
def test_inner_product_hand_computed():
    x = np.array([[1, 2, 3], [0, -1, 1]], np.float32)
    w = np.array([[1, 0, 1], [2, 1, 0]], np.float32)
    spec = 'type: "InnerProduct" inner_product_param { num_output: 2 } ' + blobs_text(w, [10, 20])
    check_forward(spec, [x], [[[14, 24], [11, 19]]])
    spec = ('type: "InnerProduct" inner_product_param { num_output: 2 transpose: true } '
            + blobs_text(w.T, [10, 20]))
    check_forward(spec, [x], [[[14, 24], [11, 19]]])


@pytest.mark.parametrize("axis, shape, top", [(1, (2, 3, 2, 2), (2, 5)), (2, (2, 3, 4), (2, 3, 5)),
                                              (-1, (2, 3, 4), (2, 3, 5)), (0, (3, 2), (5,))])
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_axes_and_gradients(axis, shape, top, transpose):
    spec = (f'type: "InnerProduct" inner_product_param {{ num_output: 5 axis: {axis} '
            f'transpose: {str(transpose).lower()} {FILLERS} }}')
    x = rng(14).standard_normal(shape)
    layer, bottoms, tops = setup(spec, [x], dtype=np.float64)
    layer.forward(bottoms, tops)
    assert tops[0].shape == top
    k = int(np.prod(shape[axis % len(shape):]))
    w = layer.blobs[0].data.T if transpose else layer.blobs[0].data
    assert w.shape == (5, k)
    np.testing.assert_allclose(tops[0].data.reshape(-1, 5), x.reshape(-1, k) @ w.T + layer.blobs[1].data,
                               rtol=1e-12)
    check_gradient(spec, [x])


@pytest.mark.parametrize("seed", range(40))
def test_inner_product_random_shapes_have_the_bits_of_one_single_threaded_product(seed, monkeypatch):
    """Small batches run in row panels, on the engine's threads; whatever the shape, the
    top must be the bits of one BLAS product on one thread, plus the bias, as Caffe's GEMM
    then bias GEMM (a multi-threaded BLAS may split the sums otherwise)."""
    from threadpoolctl import threadpool_limits
    r = random.Random(seed)
    n, k = r.choice([1, 2, 3, 5, 8, 10, 16, 32, 64]), r.choice([7, 64, 500, 800, 1024, 2000, 4096])
    o, transpose, bias = r.choice([3, 10, 64, 500, 1000, 2048]), r.random() < 0.3, r.random() < 0.7
    monkeypatch.setattr(parallel, "_threads", r.choice([1, 2, 3]))
    spec = (f'type: "InnerProduct" inner_product_param {{ num_output: {o} transpose: '
            f'{str(transpose).lower()} bias_term: {str(bias).lower()} }}')
    values = rng(seed)
    layer, bottoms, tops = setup(spec, [values.standard_normal((n, k)).astype(np.float32)])
    for blob in layer.blobs:
        blob.data[...] = values.standard_normal(blob.shape)
    layer.forward(bottoms, tops)
    w = layer.blobs[0].data
    with threadpool_limits(1):
        want = bottoms[0].data @ (w if transpose else w.T)
    if bias:
        want += layer.blobs[1].data
    np.testing.assert_array_equal(tops[0].data.view(np.uint32), want.view(np.uint32))


def test_inner_product_input_size_is_fixed_at_setup():
    layer, bottoms, tops = setup(f'type: "InnerProduct" inner_product_param {{ num_output: 2 {FILLERS} }}',
                                 [np.zeros((2, 3, 4))])
    bottoms[0].data = np.zeros((5, 12))        # same K: fine
    layer.forward(bottoms, tops)
    assert tops[0].shape == (5, 2)
    bottoms[0].data = np.zeros((2, 3, 5))
    with pytest.raises(RistrettoError, match="incompatible with inner product"):
        layer.forward(bottoms, tops)


def test_inner_product_preloaded_blobs():
    w = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)    # legacy 4-D weights
    spec = 'type: "InnerProduct" inner_product_param { num_output: 2 bias_term: false } '
    y = forward(spec + blobs_text(w), [np.ones((1, 3), np.float32)])[0]
    np.testing.assert_array_equal(y, [[3, 12]])
    with pytest.raises(RistrettoError, match="parameter blob 0"):
        setup(spec + blobs_text(np.zeros((2, 2))), [np.ones((1, 3))])
    with pytest.raises(RistrettoError, match="num_output"):
        setup('type: "InnerProduct" inner_product_param { num_output: 0 }', [np.ones((1, 3))])


def test_inner_product_forward_weights_hook():
    class Negated(InnerProductLayer):
        def forward_weights(self):
            w, b = super().forward_weights()
            return -w, b

    spec = f'type: "InnerProduct" inner_product_param {{ num_output: 3 bias_term: false {FILLERS} }}'
    x = rng(15).standard_normal((2, 4))
    plain, pb, pt = setup(spec, [x], dtype=np.float64)
    neg, nb, nt = setup(spec, [x], dtype=np.float64,
                        layer=Negated(layer_param(spec), rng=np.random.default_rng(1701)))
    for layer, bottoms, tops in ((plain, pb, pt), (neg, nb, nt)):
        layer.forward(bottoms, tops)
        tops[0].diff = np.ones_like(tops[0].data)
        layer.backward(tops, [True], bottoms)
    np.testing.assert_allclose(nt[0].data, -pt[0].data)
    np.testing.assert_allclose(nb[0].diff, -pb[0].diff)
    np.testing.assert_allclose(neg.blobs[0].diff, plain.blobs[0].diff)


# ================================================================== Pooling
def pool_spec(pool, kernel=None, stride=None, pad=None, extra=""):
    fields = [f"pool: {pool}"]
    for name, v in (("kernel", kernel), ("stride", stride), ("pad", pad)):
        if v is None:
            continue
        if isinstance(v, tuple):
            fields += [f"{name}_h: {v[0]}", f"{name}_w: {v[1]}"]
        else:
            fields.append(f"{name}{'_size' if name == 'kernel' else ''}: {v}")
    return f'type: "Pooling" pooling_param {{ {" ".join(fields)} {extra} }}'


POOL_CASES = [
    # shape, kernel, stride, pad, ceil
    ((2, 2, 7, 7), 3, 2, 1, True),
    ((1, 2, 8, 8), 3, 2, 1, True),
    ((1, 2, 8, 8), 3, 2, 1, False),
    ((1, 2, 5, 5), 2, 2, 1, True),          # ceil gives 4, the pad rule clips to 3
    ((2, 1, 6, 7), (3, 2), (2, 1), (1, 0), True),
    ((1, 2, 7, 7), 2, 3, 0, True),          # stride > kernel, last window partly outside
    ((1, 1, 5, 5), 5, 1, 0, True),          # whole plane
    ((1, 2, 4, 4), 3, 1, 2, False),
]


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _pool_against_caffe_loops(pool, case, x, dy_seed):
    """Our layer's forward (with MAX's mask top) and backward against Caffe's loops, bit for bit."""
    _, kernel, stride, pad, ceil_mode = case
    spec = pool_spec(pool, kernel, stride, pad, "" if ceil_mode else "round_mode: FLOOR")
    top, arg, backward = caffe_pool(x, pool, _pair(kernel), _pair(stride), _pair(pad), ceil_mode)
    layer, bottoms, tops = setup(spec, [x], num_tops=2 if pool == "MAX" else 1)
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, top)
    if pool == "MAX":
        np.testing.assert_array_equal(tops[1].data, arg.astype(np.float32))
    dy = rng(dy_seed).standard_normal(top.shape).astype(np.float32)
    tops[0].diff = dy
    layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, backward(dy))


@pytest.mark.parametrize("case", [((1, 2, 7, 300), 3, 2, 1, True), ((1, 1, 2, 70000), 2, 2, 0, True)],
                         ids=["uint16 codes", "int64 codes"])
def test_max_pooling_of_wide_planes_with_wider_winner_codes(case):
    """Winners are recorded as 1 + their flat shift in the input plane (``i * W + j``), in the
    narrowest integer type that holds them: wide planes need 16 or 64 bits."""
    geo = pooling.PoolGeometry(case[0][2:], (1, 1), _pair(case[1]), _pair(case[2]), _pair(case[3]))
    assert geo.code_dtype() == (np.uint16 if case[0][3] == 300 else np.int64)
    x = rng(24).standard_normal(case[0]).astype(np.float32)
    x[0, 0, 0, :2] = x[0, 0, 1, 1]                     # ties
    _pool_against_caffe_loops("MAX", case, x, 25)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("case", POOL_CASES,
                         ids=lambda c: f"{c[0][2]}x{c[0][3]}k{c[1]}s{c[2]}p{c[3]}{'c' if c[4] else 'f'}")
def test_pooling_matches_caffe_loops_bit_for_bit(pool, case):
    x = rng(16).standard_normal(case[0]).astype(np.float32)
    x[0, 0, 0, :2] = x[0, 0, 1, 1]                     # ties
    _pool_against_caffe_loops(pool, case, x, 17)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("case", POOL_CASES,
                         ids=lambda c: f"{c[0][2]}x{c[0][3]}k{c[1]}s{c[2]}p{c[3]}{'c' if c[4] else 'f'}")
def test_pooling_plane_by_plane_on_several_threads_matches_caffe_loops(pool, case, monkeypatch):
    """Blocks of one plane each, shared among three threads: every block's phases, routing
    targets and results live in its own thread's work arrays, at the block's own offsets."""
    x = rng(20).standard_normal((3, 3) + case[0][2:]).astype(np.float32)
    x[1, 2, 0, :2] = x[1, 2, 1, 1]                     # ties
    monkeypatch.setattr(pooling, "PHASE_BLOCK_BYTES", 1)
    monkeypatch.setattr(pooling, "ROUTE_BLOCK_BYTES", 1)
    monkeypatch.setattr(pooling, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(parallel, "_threads", 3)
    _pool_against_caffe_loops(pool, case, x, 21)


def test_pooling_phases_keep_their_padding_only_for_the_same_layout():
    """The stride phases' cells outside the input are filled when the layout changes, not for
    every block: MAX (-inf) and AVE (0) pooling of the same geometry, two geometries whose
    phases have the same shape but other padded cells, and an AVE backward (which uses the
    same work array for its sums) in between, each time give Caffe's loops' results."""
    im2col.release_scratch()
    same_grid = [((2, 3, 7, 7), 3, 2, 0, True), ((2, 3, 5, 5), 3, 2, 1, True)]   # 3x3 results each
    geos = [pooling.PoolGeometry(s[2:], (3, 3), (k, k), (st, st), (p, p)) for s, k, st, p, _ in same_grid]
    assert geos[0].grid == geos[1].grid and geos[0].phase_regions() != geos[1].phase_regions()
    for step, (case, pool) in enumerate([(0, "MAX"), (0, "MAX"), (0, "AVE"), (1, "AVE"), (1, "AVE"),
                                         (0, "AVE"), (1, "MAX"), (1, "AVE"), (1, "MAX"), (0, "MAX")]):
        shape, kernel, stride, pad, ceil_mode = same_grid[case]
        x = rng(30 + step).standard_normal(shape).astype(np.float32)
        top, _, backward = caffe_pool(x, pool, _pair(kernel), _pair(stride), _pair(pad), ceil_mode)
        spec = pool_spec(pool, kernel, stride, pad)
        layer, bottoms, tops = setup(spec, [x])
        layer.forward(bottoms, tops)
        np.testing.assert_array_equal(tops[0].data, top)
        if step == 3:       # the AVE backward's sums fill the same work array
            dy = rng(40).standard_normal(top.shape).astype(np.float32)
            tops[0].diff = dy
            layer.backward(tops, [True], bottoms)
            np.testing.assert_array_equal(bottoms[0].diff, backward(dy))


def test_max_pooling_gradient_into_a_non_contiguous_array():
    """The routed gradient lands in a strided view (every other column of a wider array)
    exactly as in a fresh array, and nothing outside the view is touched."""
    shape, kernel, stride, pad, ceil_mode = POOL_CASES[0]
    x = rng(22).standard_normal(shape).astype(np.float32)
    top, arg, backward = caffe_pool(x, "MAX", _pair(kernel), _pair(stride), _pair(pad), ceil_mode)
    geo = pooling.PoolGeometry(shape[2:], top.shape[2:], _pair(kernel), _pair(stride), _pair(pad))
    _, k1 = pooling.max_pool_forward(x, geo)
    dy = rng(23).standard_normal(top.shape).astype(np.float32)
    wide = np.full(shape[:3] + (2 * shape[3],), 7.0, np.float32)
    pooling.route_backward(dy, k1, geo, out=wide[..., ::2])
    np.testing.assert_array_equal(wide[..., ::2], backward(dy))
    assert (wide[..., 1::2] == 7.0).all()


@pytest.mark.parametrize("case", POOL_CASES,
                         ids=lambda c: f"{c[0][2]}x{c[0][3]}k{c[1]}s{c[2]}p{c[3]}{'c' if c[4] else 'f'}")
def test_max_pooling_without_backward_state_gives_the_same_maxima_and_backward(case):
    # With no backward to come (scoring) the winners are not recorded; a backward called
    # anyway finds them again from the bottom.
    shape, kernel, stride, pad, ceil_mode = case
    x = rng(18).standard_normal(shape).astype(np.float32)
    x[0, 0, 0, :2] = x[0, 0, 1, 1]                     # ties
    x[-1, -1, -1, -1] = np.nan
    spec = pool_spec("MAX", kernel, stride, pad, "" if ceil_mode else "round_mode: FLOOR")
    top, _, backward = caffe_pool(x, "MAX", _pair(kernel), _pair(stride), _pair(pad), ceil_mode)
    layer, bottoms, tops = setup(spec, [x])
    layer.backward_state_needed = False
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, top)
    dy = rng(19).standard_normal(top.shape).astype(np.float32)
    tops[0].diff = dy
    layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, backward(dy))


def test_pooled_size_rules():
    assert pooled_size(5, 2, 2, 1, True, True) == 3      # 4 by ceil, then clipped
    assert pooled_size(8, 3, 2, 1, True, True) == 5
    assert pooled_size(8, 3, 2, 1, False, True) == 4
    assert pooled_size(5, 1, 3, 0, True, False) == 3     # no pad: no clipping, empty window


def test_max_pooling_hand_computed_ties_nan_and_empty_windows():
    x = np.array([[[[1, 3, 3, 0],
                    [3, 2, np.nan, 5],
                    [0, 0, -1, -1],
                    [0, 7, -1, -1]]]], np.float32)
    tops = check_forward(pool_spec("MAX", 2, 2), [x], [[[[[3, 5], [7, -1]]]]], num_tops=2)
    np.testing.assert_array_equal(tops[1], [[[[1, 7], [13, 10]]]])   # first 3 wins; NaN never
    # stride 3 over width 5 with kernel 1: the third window starts past the input (CEIL, no pad)
    x = np.arange(5, dtype=np.float32).reshape(1, 1, 1, 5) + 1
    tops = check_forward(pool_spec("MAX", 1, 3), [x], [[[[[1, 4, -FLT_MAX]]]]], num_tops=2)
    np.testing.assert_array_equal(tops[1], [[[[0, 3, -1]]]])
    layer, bottoms, tops = setup(pool_spec("MAX", 1, 3), [x])
    layer.forward(bottoms, tops)
    tops[0].diff = np.ones((1, 1, 1, 3), np.float32)
    layer.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, [[[[1, 0, 0, 1, 0]]]])
    y = forward(pool_spec("AVE", 1, 3), [x])[0]
    assert y[0, 0, 0, 2] == 0 and np.signbit(y[0, 0, 0, 2])          # 0 / -1, as in Caffe


def test_pooling_signs_of_zero_as_in_caffe():
    """Caffe's AVE sums start at +0, so windows of -0 average to +0; MAX keeps the -0 that
    beats the -FLT_MAX start."""
    x = np.full((1, 2, 5, 5), -0.0, np.float32)
    for pool, negative in (("AVE", False), ("MAX", True)):
        y = forward(pool_spec(pool, 3, 2), [x])[0]
        assert (y == 0).all() and (np.signbit(y) == negative).all()


def test_max_pooling_window_of_minus_infinity():
    x = np.full((1, 1, 2, 2), -np.inf, np.float32)
    tops = forward(pool_spec("MAX", 2, 2), [x], num_tops=2)
    assert tops[0].item() == -FLT_MAX and tops[1].item() == -1
    tops = forward(pool_spec("MAX", extra="global_pooling: true"), [x], num_tops=2)
    assert tops[0].item() == -FLT_MAX and tops[1].item() == -1
    # scoring (no winners recorded): windows of NaN and -inf only, in a strided 3x3 pooling
    x = rng(20).standard_normal((1, 2, 7, 7)).astype(np.float32)
    x[0, 0, :3, :3] = np.nan
    x[0, 1, 2:5, 2:5] = -np.inf
    layer, bottoms, tops = setup(pool_spec("MAX", 3, 2), [x])
    layer.backward_state_needed = False
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, caffe_pool(x, "MAX", (3, 3), (2, 2), (0, 0), True)[0])
    assert tops[0].data[0, 0, 0, 0] == -FLT_MAX and tops[0].data[0, 1, 1, 1] == -FLT_MAX


def test_ave_pooling_divisor_counts_padding_but_not_beyond():
    x = np.ones((1, 1, 5, 5), np.float32)
    y = forward(pool_spec("AVE", 2, 2, 1), [x])[0][0, 0]
    # windows: rows {-1,0},{1,2},{3,4}; the first row/column window holds one padding cell
    np.testing.assert_array_equal(y, [[0.25, 0.5, 0.5], [0.5, 1, 1], [0.5, 1, 1]])
    y = forward(pool_spec("AVE", 3, 2, 1), [np.ones((1, 1, 4, 4), np.float32)])[0][0, 0]
    # windows start at -1, 1, 3: valid rows 2, 3, 1; the last one (rows 3..5) reaches past the
    # padded extent (rows -1..4), so its divisor counts 2 rows, not 3
    ratio = np.array([2 / 3, 1, 1 / 2])
    np.testing.assert_allclose(y, np.outer(ratio, ratio), rtol=1e-6)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_global_pooling(pool):
    x = rng(18).standard_normal((2, 3, 4, 5)).astype(np.float32)
    want = x.max(axis=(2, 3)) if pool == "MAX" else x.mean(axis=(2, 3))
    check_forward(pool_spec(pool, extra="global_pooling: true"), [x], [want[..., None, None]])
    layer, bottoms, tops = setup(pool_spec(pool, extra="global_pooling: true"), [x])
    bottoms[0].data = rng(19).standard_normal((1, 3, 6, 2)).astype(np.float32)
    layer.forward(bottoms, tops)                  # the kernel follows the input size
    assert tops[0].shape == (1, 3, 1, 1)


@pytest.mark.parametrize("spec", [pool_spec("MAX", 3, 2), pool_spec("AVE", 3, 2, 1),
                                  pool_spec("MAX", extra="global_pooling: true"),
                                  pool_spec("AVE", extra="global_pooling: true")])
def test_pooling_an_empty_batch(spec):
    layer, bottoms, tops = setup(spec, [np.zeros((0, 3, 7, 7), np.float32)])
    layer.forward(bottoms, tops)
    assert tops[0].shape[:2] == (0, 3)
    tops[0].diff = np.zeros(tops[0].shape, np.float32)
    layer.backward(tops, [True], bottoms)
    assert bottoms[0].diff.shape == (0, 3, 7, 7)


@pytest.mark.parametrize("shape", [(1, 1, 13, 13), (1, 2, 13, 13), (3, 5, 7, 9), (10, 1000, 13, 13)])
def test_global_average_adds_in_caffe_order(shape):
    """Caffe sums each plane one value after another, in row-major order: the result must
    equal that sequence bit for bit (values of mixed magnitude make any other order differ)."""
    r = rng(21)
    x = (r.standard_normal(shape) * 10.0 ** r.uniform(-4, 4, shape)).astype(np.float32)
    sequential = np.cumsum(x.reshape(shape[0], shape[1], -1), axis=-1, dtype=np.float32)[..., -1]
    pairwise = x.sum(axis=(2, 3), dtype=np.float32)
    assert shape[2] * shape[3] < 9 or not np.array_equal(sequential, pairwise)   # the data can tell
    layer, bottoms, tops = setup(pool_spec("AVE", extra="global_pooling: true"), [x])
    layer.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data[..., 0, 0], sequential / np.float32(shape[2] * shape[3]))


def distinct(shape, seed=20):
    """Values 0.1 apart, so a +-0.01 finite-difference step never changes a maximum."""
    return rng(seed).permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0


@pytest.mark.parametrize("spec", [
    pool_spec("MAX", 3, 2, 1),
    pool_spec("MAX", (3, 2), (1, 2), (1, 1)),
    pool_spec("MAX", 2, 2, extra="round_mode: FLOOR"),
    pool_spec("MAX", extra="global_pooling: true"),
    pool_spec("AVE", 3, 2, 1),
    pool_spec("AVE", (2, 3), (2, 1), (0, 1)),
    pool_spec("AVE", 2, 3),
    pool_spec("AVE", extra="global_pooling: true"),
])
def test_pooling_gradients(spec):
    check_gradient(spec, [distinct((2, 2, 5, 5))])


def test_max_pooling_gradient_with_mask_top():
    check_gradient(pool_spec("MAX", 3, 2), [distinct((1, 2, 5, 5))], num_tops=2)


@pytest.mark.parametrize("spec, message", [
    (pool_spec("MAX", 2, extra="global_pooling: true"), "cannot be specified"),
    (pool_spec("MAX", extra="global_pooling: true pad: 1"), "only pad = 0"),
    (pool_spec("MAX"), "kernel_h and kernel_w, are required"),
    (pool_spec("MAX", extra="kernel_h: 2"), "kernel_h and kernel_w, are required"),
    (pool_spec("MAX", 2, extra="kernel_h: 2 kernel_w: 2"), "not both"),
    (pool_spec("MAX", 2, pad=2), "smaller than the kernel"),
    (pool_spec("STOCHASTIC", 3, pad=1), "padding implemented only"),
    (pool_spec("MAX", 2, extra="pad_h: 1"), "pad_h and pad_w"),
    (pool_spec("MAX", 0), "cannot be zero"),
])
def test_pooling_parameter_errors(spec, message):
    with pytest.raises(RistrettoError, match=message):
        setup(spec, [np.zeros((1, 1, 4, 4))])


def test_pooling_blob_count_and_axes_errors():
    with pytest.raises(RistrettoError, match="at most 1 top"):
        setup(pool_spec("AVE", 2), [np.zeros((1, 1, 4, 4))], num_tops=2)
    with pytest.raises(RistrettoError, match="4 axes"):
        setup(pool_spec("MAX", 2), [np.zeros((1, 4, 4))])


def test_stochastic_pooling_train_samples_proportionally_and_routes_gradient():
    plane = np.array([[1, 2], [3, 4]], np.float32)
    x = np.broadcast_to(plane, (1, 4000, 2, 2)).copy()
    layer, bottoms, tops = setup(pool_spec("STOCHASTIC", 2, 2), [x], phase=TRAIN)
    layer.forward(bottoms, tops)
    y = tops[0].data.ravel()
    freq = np.array([(y == v).mean() for v in (1, 2, 3, 4)])
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.03)
    dy = np.arange(1, 4001, dtype=np.float32)
    tops[0].diff = dy.reshape(tops[0].shape)
    layer.backward(tops, [True], bottoms)
    dx = bottoms[0].diff.reshape(4000, 4)
    np.testing.assert_array_equal(dx.sum(axis=1), dy)                  # all of it to one cell,
    np.testing.assert_array_equal(plane.ravel()[dx.argmax(axis=1)], y)   # the sampled one


def test_stochastic_pooling_train_clips_windows_to_the_input():
    x = np.zeros((1, 1, 3, 3), np.float32)
    x[0, 0, 2, 2] = 5                                  # the only positive cell, in a clipped window
    y = forward(pool_spec("STOCHASTIC", 2, 2), [x], phase=TRAIN)[0]
    np.testing.assert_array_equal(y, [[[[0, 0], [0, 5]]]])


def test_stochastic_pooling_test_phase():
    x = np.array([[[[1, 2, 0], [3, 4, 0], [0, 0, -1]]]], np.float32)
    # windows (k2 s2, ceil): {1,2,3,4} -> 30/10; {0,0} -> 0; {0,0} -> 0; {-1} -> sum < 0 -> 0
    check_forward(pool_spec("STOCHASTIC", 2, 2), [x], [[[[[3, 0], [0, 0]]]]])
    check_gradient(pool_spec("STOCHASTIC", 3, 2), [rng(21).uniform(0.5, 2, (1, 2, 5, 5))])


# ================================================================== LRN
def lrn_spec(size, alpha, beta, k, within=False):
    region = " norm_region: WITHIN_CHANNEL" if within else ""
    return f'type: "LRN" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k}{region} }}'


@pytest.mark.parametrize("size, channels", [(5, 7), (3, 2), (5, 3), (1, 3), (7, 9)])
def test_lrn_across_channels_reproduces_the_running_window(size, channels):
    x = (rng(22).standard_normal((2, channels, 3, 3)) * 3).astype(np.float32)
    y = forward(lrn_spec(size, 0.7, 0.75, 2), [x])[0]
    np.testing.assert_array_equal(y, caffe_lrn_across(x, size, 0.7, 0.75, 2))
    np.testing.assert_allclose(y, lrn_direct(x, size, 0.7, 0.75, 2, False), rtol=2e-6)


def test_lrn_within_channel_ignores_k():
    x = rng(23).standard_normal((2, 3, 5, 4)).astype(np.float32)
    for k in (1, 7):
        y = forward(lrn_spec(3, 0.6, 0.8, k, within=True), [x])[0]
        np.testing.assert_allclose(y, lrn_direct(x, 3, 0.6, 0.8, k, True), rtol=2e-6)


@pytest.mark.parametrize("spec", [
    lrn_spec(5, 0.9, 0.75, 2),
    lrn_spec(3, 2.0, 0.6, 1),
    lrn_spec(7, 1.5, 1.3, 1.5),
    lrn_spec(3, 0.9, 0.75, 2, within=True),
    lrn_spec(5, 2.0, 0.6, 1, within=True),
])
def test_lrn_gradients(spec):
    check_gradient(spec, [rng(24).standard_normal((2, 5, 4, 3))])


def test_lrn_errors():
    with pytest.raises(RistrettoError, match="odd"):
        setup(lrn_spec(4, 1, 0.75, 1), [np.zeros((1, 3, 2, 2))])
    with pytest.raises(RistrettoError, match="4 axes"):
        setup(lrn_spec(3, 1, 0.75, 1), [np.zeros((3, 2, 2))])


# ================================================================== OpenCV's dnn module
def test_forward_matches_opencv_dnn(tmp_path):
    """A net of our layers with random weights, saved as prototxt + caffemodel and run by
    OpenCV's independent Caffe importer. (OpenCV's importer drops LRN's ``k``, so k is 1.)"""
    f = FILLERS
    layers = [
        ("conv", f'type: "Convolution" bottom: "data" convolution_param {{ num_output: 6 kernel_size: 3 '
                 f'pad: 2 dilation: 2 group: 2 stride: 2 {f} }}'),
        ("conv2", f'type: "Convolution" bottom: "data" convolution_param {{ num_output: 5 kernel_h: 3 '
                  f'kernel_w: 2 pad_h: 1 pad_w: 0 stride_w: 2 stride_h: 1 {f} }}'),
        ("conv1x1", f'type: "Convolution" bottom: "conv" convolution_param {{ num_output: 3 '
                    f'kernel_size: 1 {f} }}'),
        ("pool", 'type: "Pooling" bottom: "conv" pooling_param { pool: MAX kernel_size: 3 stride: 2 '
                 'pad: 1 }'),
        ("ave", 'type: "Pooling" bottom: "conv" pooling_param { pool: AVE kernel_size: 3 stride: 2 '
                'pad: 1 }'),
        ("ave2", 'type: "Pooling" bottom: "data" pooling_param { pool: AVE kernel_size: 2 stride: 2 '
                 'pad: 1 }'),
        ("gave", 'type: "Pooling" bottom: "conv2" pooling_param { pool: AVE global_pooling: true }'),
        ("lrn", 'type: "LRN" bottom: "pool" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 }'),
        ("lrn2", 'type: "LRN" bottom: "pool" lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 '
                 'norm_region: WITHIN_CHANNEL }'),
        ("deconv", f'type: "Deconvolution" bottom: "pool" convolution_param {{ num_output: 4 kernel_size: 4 '
                   f'stride: 2 pad: 1 group: 2 {f} }}'),
        ("ip", f'type: "InnerProduct" bottom: "lrn" inner_product_param {{ num_output: 7 {f} }}'),
    ]
    text = 'name: "vision" input: "data" input_shape { dim: 2 dim: 4 dim: 16 dim: 15 } ' + " ".join(
        f'layer {{ name: "{name}" top: "{name}" {body} }}' for name, body in layers)
    param = text_format.Parse(text, caffe_pb2.NetParameter())
    upgrade_net_as_needed(param)
    net = Net(param, TEST, seed=5)
    x = rng(25).standard_normal((2, 4, 16, 15)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    (tmp_path / "net.prototxt").write_text(text)
    write_caffemodel(tmp_path / "net.caffemodel", net.to_proto())
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "net.prototxt"), str(tmp_path / "net.caffemodel"))
    cv_net.setInput(x)
    names = [name for name, _ in layers]
    for name, theirs in zip(names, cv_net.forward(names)):
        ours = net.blobs[name].data
        assert ours.shape == theirs.shape, name
        scale = np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= 1e-5 * scale, name
