"""The Im2col layer: its top is the convolution column buffer, per item ``(C * prod(kernel),
*output)``. Forward against a direct loop over (channel, kernel offset, output position), 2-D
and N-D, with pad/stride/dilation and a channel axis other than 1; backward (col2im) against
the loop's transpose and finite differences; Caffe's parameter checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import check_forward, check_gradient, forward, setup

from ristretto_cli.errors import RistrettoError
from ristretto_cli.net import TEST, Net
from ristretto_cli.proto import caffe_pb2

RNG = np.random.default_rng(11)


def c_div(a: int, b: int) -> int:
    """C integer division (truncation toward zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q


def reference(x, kernel, stride, pad, dilation, axis=1):
    """Direct loops: top[..., c * K + flat(k), *o] = x[..., c, o * s - p + k * d] (0 outside)."""
    lead, c, image = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
    out = tuple(c_div(i + 2 * p - (d * (k - 1) + 1), s) + 1
                for i, k, s, p, d in zip(image, kernel, stride, pad, dilation))
    xs = x.reshape((-1, c) + image)
    offsets = list(itertools.product(*map(range, kernel)))
    top = np.zeros((xs.shape[0], c * len(offsets)) + out, x.dtype)
    for n, ch, (r, k) in itertools.product(range(xs.shape[0]), range(c), enumerate(offsets)):
        for o in itertools.product(*map(range, out)):
            src = tuple(oo * s - p + kk * d for oo, s, p, kk, d in zip(o, stride, pad, k, dilation))
            if all(0 <= v < size for v, size in zip(src, image)):
                top[(n, ch * len(offsets) + r) + o] = xs[(n, ch) + src]
    return top.reshape(lead + top.shape[1:])


def reference_backward(dy, x_shape, kernel, stride, pad, dilation, axis=1):
    """The transpose of ``reference``: each input cell sums the gradients of its copies."""
    lead, c, image = x_shape[:axis], x_shape[axis], x_shape[axis + 1:]
    offsets = list(itertools.product(*map(range, kernel)))
    out = dy.shape[axis + 1:]
    dys = dy.reshape((-1, c * len(offsets)) + out)
    dx = np.zeros((dys.shape[0], c) + image)
    for n, ch, (r, k) in itertools.product(range(dys.shape[0]), range(c), enumerate(offsets)):
        for o in itertools.product(*map(range, out)):
            src = tuple(oo * s - p + kk * d for oo, s, p, kk, d in zip(o, stride, pad, k, dilation))
            if all(0 <= v < size for v, size in zip(src, image)):
                dx[(n, ch) + src] += dys[(n, ch * len(offsets) + r) + o]
    return dx.reshape(lead + (c,) + image)


def spec(kernel, stride=(), pad=(), dilation=(), extra=""):
    fields = [f"{name}: {v}" for name, values in
              (("kernel_size", kernel), ("stride", stride), ("pad", pad), ("dilation", dilation))
              for v in values]
    return f'type: "Im2col" convolution_param {{ {" ".join(fields)} {extra} }}'


def per_axis(values, nsp, default):
    values = tuple(values) or (default,)
    return values * nsp if len(values) == 1 else values


def test_hand_computed_2x2_windows():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    # rows: kernel offsets (0,0) (0,1) (1,0) (1,1); columns: the 2x2 output positions
    want = np.array([[[0, 1], [3, 4]], [[1, 2], [4, 5]], [[3, 4], [6, 7]], [[4, 5], [7, 8]]])
    check_forward(spec((2,)), [x], [want[None]])


CASES = [
    # (bottom shape, kernel, stride, pad, dilation, extra)
    ((2, 3, 6, 5), (3,), (2,), (1,), (), ""),
    ((2, 3, 6, 5), (3,), (2,), (1,), (), "force_nd_im2col: true"),
    ((1, 2, 7, 6), (3, 2), (1, 2), (2, 0), (2, 1), ""),
    ((2, 2, 5, 5), (1,), (), (), (), ""),
    ((2, 2, 4, 5, 4), (2, 3, 2), (2, 1, 1), (1,), (1, 1, 2), ""),
    ((3, 2, 9), (4,), (3,), (1,), (2,), ""),
]


@pytest.mark.parametrize("shape, kernel, stride, pad, dilation, extra", CASES)
def test_forward_and_backward_match_direct_loops(shape, kernel, stride, pad, dilation, extra):
    nsp = len(shape) - 2
    k, s, p, d = (per_axis(kernel, nsp, None), per_axis(stride, nsp, 1), per_axis(pad, nsp, 0),
                  per_axis(dilation, nsp, 1))
    x = RNG.standard_normal(shape).astype(np.float32)
    layer, b, t = setup(spec(kernel, stride, pad, dilation, extra), [x])
    layer.forward(b, t)
    want = reference(x, k, s, p, d)
    assert t[0].shape == want.shape
    np.testing.assert_array_equal(t[0].data, want)      # copies only: exact
    dy = RNG.standard_normal(want.shape).astype(np.float32)
    t[0].diff = dy
    layer.backward(t, [True], b)
    np.testing.assert_allclose(b[0].diff, reference_backward(dy, shape, k, s, p, d), rtol=1e-5, atol=1e-6)


def test_channel_axis_other_than_one():
    x = RNG.standard_normal((2, 3, 2, 4, 5))
    (top,) = forward(spec((2,), extra="axis: 2"), [x])
    want = reference(x, (2, 2), (1, 1), (0, 0), (1, 1), axis=2)
    assert top.shape == want.shape == (2, 3, 8, 3, 4)
    np.testing.assert_allclose(top, want)
    check_gradient(spec((2,), extra="axis: -3"), [RNG.standard_normal((2, 2, 2, 3, 3))])


def test_kernel_h_and_w():
    x = RNG.standard_normal((1, 2, 5, 6))
    (top,) = forward('type: "Im2col" convolution_param { kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 '
                     'pad_h: 1 pad_w: 0 }', [x])
    np.testing.assert_allclose(top, reference(x, (3, 2), (2, 1), (1, 0), (1, 1)))


def test_output_of_zero_positions():
    # C truncation: (4 - 5) / 1 + 1 = 0 positions; the gradient is then zero
    layer, b, t = setup(spec((5,)), [RNG.standard_normal((1, 2, 4, 4))])
    layer.forward(b, t)
    assert t[0].shape == (1, 50, 0, 0)
    t[0].diff = np.zeros(t[0].shape)
    layer.backward(t, [True], b)
    np.testing.assert_array_equal(b[0].diff, np.zeros((1, 2, 4, 4)))


@pytest.mark.parametrize("shape, kernel, stride, pad, dilation", [
    ((2, 2, 5, 5), (3,), (2,), (1,), ()),
    ((2, 2, 4, 5), (2, 3), (1, 2), (1, 0), (2, 1)),
    ((1, 2, 3, 4, 3), (2,), (1,), (1,), ()),
])
def test_gradient(shape, kernel, stride, pad, dilation):
    check_gradient(spec(kernel, stride, pad, dilation), [RNG.standard_normal(shape)])


@pytest.mark.parametrize("param, shape, match", [
    ("", (1, 2, 4, 4), "kernel_size must be specified once"),
    ("kernel_size: 2 kernel_size: 2 kernel_size: 2", (1, 2, 4, 4), "kernel_size specified 3 times"),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", (1, 2, 4, 4), "not both"),
    ("kernel_h: 2 kernel_w: 2", (1, 2, 4, 4, 4), "only be used for 2D"),
    ("kernel_size: 0", (1, 2, 4, 4), "filter dimensions must be nonzero"),
    ("kernel_size: 2 stride: 0", (1, 2, 4, 4), "stride dimensions must be nonzero"),
    ("kernel_size: 2 stride: 1 stride: 1 stride: 1", (1, 2, 4, 4), "stride must be specified once"),
    ("kernel_size: 2 axis: 3", (1, 2, 4, 4), "at least one spatial axis"),
    ("kernel_size: 2 axis: 4", (1, 2, 4, 4), "out of range"),
    ("kernel_size: 7", (1, 2, 4, 4), "kernel extent exceeds"),
])
def test_parameter_checks(param, shape, match):
    with pytest.raises(RistrettoError, match=match) as err:
        setup(f'type: "Im2col" convolution_param {{ {param} }}', [np.zeros(shape)])
    assert err.value.layer == "layer"


def test_im2col_times_reshaped_weights_is_the_convolution():
    """In a net: an InnerProduct-like product of the columns with Convolution's weights
    reproduces Convolution on the same input (rows ordered as the weight layout)."""
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 5 } } }
    layer { name: "cols" type: "Im2col" bottom: "x" top: "cols"
            convolution_param { kernel_size: 3 stride: 2 pad: 1 } }
    layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
            convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false
                                weight_filler { type: "gaussian" } } }
    """
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    x = RNG.standard_normal((2, 3, 6, 5)).astype(np.float32)
    net.blobs["x"].data[...] = x
    net.forward()
    cols = net.blobs["cols"].data
    assert cols.shape == (2, 27, 3, 3)
    w = net.layer_by_name("conv").blobs[0].data.reshape(4, 27)
    np.testing.assert_allclose(np.einsum("ok,nkhw->nohw", w, cols), net.blobs["y"].data,
                               rtol=1e-4, atol=1e-5)
