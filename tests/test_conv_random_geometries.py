"""Convolution, Deconvolution and Pooling over random geometries.

The engine picks among several ways to run a convolution by its shapes (pointwise products,
column buffers in two layouts, batch chunks, row blocks, swapped and panelled products, the
input gradient by flipped kernels or by shifted rows, the column gradient and col2im). The
fixed cases elsewhere pin each path; here seeded draws (``draw_geometry``) combine kernels,
strides, pads, dilations, groups and sizes, small and large, and every pass is compared
with an independent float64 reference written per kernel offset: the forward as a sum of
shifted products, dW and dx as its adjoint. The large and typical draws reach every one of
those paths. Pooling is compared bit for bit with Caffe's loops (``caffe_pool`` in
test_layers_vision) over hypothesis's derandomized draws, windows that start past the image
included, whose NaN and infinite averages come without a NumPy warning, as Caffe's do.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_layers_vision import caffe_pool

from ristretto_cli import parallel
from ristretto_cli.layers.im2col import conv_out_size, deconv_out_size
from ristretto_cli.net import TRAIN, Net
from ristretto_cli.proto import caffe_pb2

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
#: max |ours - reference| / max |reference|, float32 sums against float64 ones
RTOL = 1e-5


# ------------------------------------------------------------------ float64 references
def _offset_slices(i, j, out, stride, dilation):
    return (slice(None), slice(None),
            slice(i * dilation[0], i * dilation[0] + (out[0] - 1) * stride[0] + 1, stride[0]),
            slice(j * dilation[1], j * dilation[1] + (out[1] - 1) * stride[1] + 1, stride[1]))


def _padded_extent(size, out, kernel, stride, pad, dilation):
    # Room for every window of the output grid, as with a pad at or past the kernel.
    return tuple(max(s + 2 * p, (o - 1) * st + d * (k - 1) + 1)
                 for s, o, k, st, p, d in zip(size, out, kernel, stride, pad, dilation))


def conv_forward(x, w, stride, pad, dilation, group):
    """Cross-correlation of ``x`` (N, C, H, W) with ``w`` (O, C/g, kh, kw), zero padding."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // group
    out = tuple(conv_out_size(s, k, st, p, d) for s, k, st, p, d in
                zip((h, wd), (kh, kw), stride, pad, dilation))
    ext = _padded_extent((h, wd), out, (kh, kw), stride, pad, dilation)
    xp = np.zeros((n, c) + ext)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    y = np.zeros((n, o) + out)
    for i in range(kh):
        for j in range(kw):
            patch = xp[_offset_slices(i, j, out, stride, dilation)]
            for g in range(group):
                y[:, g * og:(g + 1) * og] += np.einsum(
                    "nchw,oc->nohw", patch[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og, :, i, j])
    return y


def conv_adjoints(x_shape, w, dy, x, stride, pad, dilation, group):
    """(dx, dW) of ``conv_forward`` for the output gradient ``dy``."""
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    og = o // group
    out = dy.shape[2:]
    ext = _padded_extent((h, wd), out, (kh, kw), stride, pad, dilation)
    xp = np.zeros((n, c) + ext)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    for i in range(kh):
        for j in range(kw):
            sl = _offset_slices(i, j, out, stride, dilation)
            for g in range(group):
                dyg, cs = dy[:, g * og:(g + 1) * og], slice(g * cg, (g + 1) * cg)
                dw[g * og:(g + 1) * og, :, i, j] = np.einsum("nohw,nchw->oc", dyg, xp[sl][:, cs])
                dxp[sl][:, cs] += np.einsum("nohw,oc->nchw", dyg, w[g * og:(g + 1) * og, :, i, j])
    return dxp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd], dw


def _rel(ours, ref) -> float:
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return 0.0 if scale == 0.0 else float(np.max(np.abs(ours.astype(np.float64) - ref)) / scale)


# ------------------------------------------------------------------ the drawn geometries
def draw_geometry(seed: int, kind: str, deconvolution: bool = False) -> dict:
    """A convolution geometry from ``random.Random(seed)``. ``small``: anything goes.
    ``large``: enough channels and positions for the engine's chunks and panels. ``typical``:
    large, and the layers its faster paths are for (odd kernel, stride 1, "same" padding:
    the input gradient by flipped kernels or by shifted rows, swapped products). ``blocks``:
    column buffers past BLOCK_COL_ELEMENTS per item, convolved in blocks of output rows.
    Geometries without an output position (which Caffe rejects) are drawn again."""
    rnd = random.Random(seed)
    while True:
        g = _draw(rnd, kind)
        sizes = (deconv_out_size if deconvolution else conv_out_size)
        if all(sizes(*a) >= 1 for a in zip(g["size"], g["kernel"], g["stride"], g["pad"], g["dilation"])):
            return g


def _draw(rnd: random.Random, kind: str) -> dict:
    group = rnd.choice([1, 1, 2, 3])
    if kind == "small":
        per_in, per_out, n = rnd.randint(1, 4), rnd.randint(1, 4), rnd.randint(1, 4)
        size = (rnd.randint(1, 12), rnd.randint(1, 12))
    elif kind == "blocks":
        group = rnd.choice([1, 2])
        per_in, per_out, n = rnd.choice([16, 32]), rnd.choice([8, 16]), rnd.choice([1, 2])
        size = (rnd.randint(56, 72), rnd.randint(56, 72))
    else:
        per_in, per_out = rnd.choice([1, 3, 8, 16, 32, 64]), rnd.choice([4, 16, 32, 64])
        n = rnd.choice([1, 2] if per_in * per_out >= 1024 else [1, 2, 5, 12])
        size = (rnd.randint(8, 40), rnd.randint(8, 40))
    if kind in ("typical", "blocks"):
        k = rnd.choice([3, 5] if kind == "blocks" else [1, 3, 5, 5])
        kernel, stride, pad, dilation = (k, k), (1, 1), (k // 2, k // 2), (1, 1)
    else:
        kh = rnd.randint(1, 5)
        kernel = (kh, kh if rnd.random() < 0.5 else rnd.randint(1, 5))
        stride = (rnd.randint(1, 3), rnd.randint(1, 3))
        pad = (rnd.randint(0, kernel[0]), rnd.randint(0, kernel[1]))
        dilation = (rnd.choice([1, 1, 1, 2, 3]), rnd.choice([1, 1, 1, 2]))
    return dict(group=group, c=group * per_in, o=group * per_out, n=n, size=size, kernel=kernel,
                stride=stride, pad=pad, dilation=dilation, bias=rnd.random() < 0.7)


def _cases(kind: str, count: int, first: int) -> list:
    return [pytest.param(first + i, kind, id=f"{kind}-{first + i}") for i in range(count)]


def _net(kind: str, g: dict, bottom_shape) -> Net:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g["kernel"], g["stride"], g["pad"], g["dilation"]
    text = f"""
      name: "random" force_backward: true
      layer {{ name: "data" type: "Input" top: "data"
              input_param {{ shape {{ {" ".join(f"dim: {d}" for d in bottom_shape)} }} }} }}
      layer {{ name: "layer" type: "{kind}" bottom: "data" top: "out"
        convolution_param {{ num_output: {g["o"]} group: {g["group"]} kernel_h: {kh} kernel_w: {kw}
          stride_h: {sh} stride_w: {sw} pad_h: {ph} pad_w: {pw} dilation: {dh} dilation: {dw}
          bias_term: {"true" if g["bias"] else "false"} }} }}"""
    return Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN)


def _run(net: Net, x, seed: int):
    """Random parameters, one forward and one backward; (layer, y, dx, dW, db)."""
    rng = np.random.default_rng(seed)
    layer = net.layers[1]
    for blob in layer.blobs:
        blob.data[...] = rng.standard_normal(blob.shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    y = net.blobs["out"].data.copy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    net.clear_param_diffs()
    net.blobs["out"].diff[...] = dy
    net.backward()
    db = layer.blobs[1].diff.copy() if len(layer.blobs) > 1 else None
    return layer, y, dy, net.blobs["data"].diff.copy(), layer.blobs[0].diff.copy(), db


def _check(kind: str, g: dict, seed: int) -> None:
    shape = (g["n"], g["c"]) + g["size"]
    x = np.random.default_rng(seed + 1).standard_normal(shape).astype(np.float32)
    layer, y, dy, dx, dw, db = _run(_net(kind, g, shape), x, seed)
    w = layer.blobs[0].data.astype(np.float64)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    geo = (g["stride"], g["pad"], g["dilation"], g["group"])
    if kind == "Convolution":
        y_ref = conv_forward(x64, w, *geo)
        dx_ref, dw_ref = conv_adjoints(shape, w, dy64, x64, *geo)
    else:
        # A deconvolution of C inputs into O outputs is the adjoint of a convolution of O
        # inputs into C outputs with the same (C, O/g, kh, kw) weights.
        out = tuple(deconv_out_size(*a) for a in
                    zip(g["size"], g["kernel"], g["stride"], g["pad"], g["dilation"]))
        top_shape = (g["n"], g["o"]) + out
        y_ref, _ = conv_adjoints(top_shape, w, x64, np.zeros(top_shape), *geo)
        dx_ref = conv_forward(dy64, w, *geo)
        _, dw_ref = conv_adjoints(top_shape, w, x64, dy64, *geo)
    if g["bias"]:
        y_ref += layer.blobs[1].data.astype(np.float64)[None, :, None, None]
    assert y.shape == y_ref.shape
    assert _rel(y, y_ref) <= RTOL
    assert _rel(dx, dx_ref) <= RTOL
    assert _rel(dw, dw_ref) <= RTOL
    if g["bias"]:
        assert _rel(db, dy64.sum(axis=(0, 2, 3))) <= RTOL


CONVOLUTION_CASES = (_cases("small", 40, 0) + _cases("large", 10, 100) + _cases("typical", 24, 200)
                     + _cases("blocks", 3, 300))
DECONVOLUTION_CASES = _cases("small", 40, 400) + _cases("large", 10, 500) + _cases("typical", 10, 600)


@pytest.mark.parametrize("seed, kind", CONVOLUTION_CASES)
def test_convolution_random_geometry(seed, kind):
    _check("Convolution", draw_geometry(seed, kind), seed)


@pytest.mark.parametrize("seed, kind", DECONVOLUTION_CASES)
def test_deconvolution_random_geometry(seed, kind):
    _check("Deconvolution", draw_geometry(seed, kind, deconvolution=True), seed)


# ------------------------------------------------------------------ pooling
@st.composite
def pool_geometries(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return dict(pool=draw(st.sampled_from(["MAX", "AVE"])),
                shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)),
                       draw(st.integers(1, 9)), draw(st.integers(1, 9))),
                kernel=(kh, kw), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                pad=(draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))))


@settings(SETTINGS, max_examples=60)
@given(pool_geometries(), st.integers(0, 2**16))
def test_pooling_random_geometries_match_caffe_loops_bit_for_bit(g, seed):
    (kh, kw), (sh, sw), (ph, pw) = g["kernel"], g["stride"], g["pad"]
    assume(g["shape"][2] + 2 * ph >= kh and g["shape"][3] + 2 * pw >= kw)
    text = f"""
      name: "random" force_backward: true
      layer {{ name: "data" type: "Input" top: "data"
              input_param {{ shape {{ {" ".join(f"dim: {d}" for d in g["shape"])} }} }} }}
      layer {{ name: "pool" type: "Pooling" bottom: "data" top: "out"
        pooling_param {{ pool: {g["pool"]} kernel_h: {kh} kernel_w: {kw} stride_h: {sh}
                         stride_w: {sw} pad_h: {ph} pad_w: {pw} }} }}"""
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN)
    rng = np.random.default_rng(seed)
    # Few distinct values, so that maxima tie and the first winner must be kept.
    x = rng.integers(-3, 4, g["shape"]).astype(np.float32) * np.float32(0.5)
    net.blobs["data"].data[...] = x
    dy = rng.standard_normal(net.blobs["out"].shape).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.forward()
        y = net.blobs["out"].data.copy()
        net.blobs["out"].diff[...] = dy
        net.backward()
    assert [str(w.message) for w in caught] == []
    with np.errstate(divide="ignore", invalid="ignore"):    # the reference's empty windows
        top, _, backward = caffe_pool(x, g["pool"], g["kernel"], g["stride"], g["pad"])
        dx = backward(dy)
    assert y.shape == top.shape
    np.testing.assert_array_equal(y.view(np.uint32), top.view(np.uint32))
    np.testing.assert_array_equal(net.blobs["data"].diff.view(np.uint32), dx.view(np.uint32))


def test_average_pooling_of_empty_windows_is_silent_on_every_thread_count(monkeypatch):
    # Windows that start past the image (stride over kernel, CEIL mode, no pad) divide by
    # zero or a negative count, as in Caffe; where two of their infinities of opposite
    # signs meet in the backward's work arrays, NumPy would warn (a NaN that is then
    # dropped: the image cells are Caffe's).
    text = """
      name: "empty" force_backward: true
      layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 3 dim: 4 dim: 2 dim: 4 } } }
      layer { name: "pool" type: "Pooling" bottom: "data" top: "out"
        pooling_param { pool: AVE kernel_h: 1 kernel_w: 2 stride_h: 2 stride_w: 1 } }"""
    for threads in (1, 3):
        monkeypatch.setattr(parallel, "_threads", threads)
        net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TRAIN)
        rng = np.random.default_rng(threads)
        x = rng.standard_normal((3, 4, 2, 4)).astype(np.float32)
        dy = rng.standard_normal(net.blobs["out"].shape).astype(np.float32)
        net.blobs["data"].data[...] = x
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            net.forward()
            net.blobs["out"].diff[...] = dy
            net.backward()
        assert [str(w.message) for w in caught] == []
        with np.errstate(divide="ignore", invalid="ignore"):
            _, _, backward = caffe_pool(x, "AVE", (1, 2), (2, 1), (0, 0))
            dx = backward(dy)
        np.testing.assert_array_equal(net.blobs["data"].diff.view(np.uint32), dx.view(np.uint32))
