"""Many small groups (depthwise convolutions, as in MobileNet) go through one batched product
(``convolution._group_products``) instead of a Python call per group. NumPy then makes the
same BLAS call for every group, so the forward, the input gradient and the weight gradient
must keep their bits exactly: checked here against the groups taken one by one, at one and
two threads, through every path (row blocks of one item, batch chunks, the flipped-kernel
input gradient of stride 1, whole or in ranges of groups, the column gradient of stride 2).
Their values against direct loops and finite differences are in
``tests/test_layers_vision.py`` (depthwise cases)."""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import setup

from ristretto_cli import parallel
from ristretto_cli.layers import convolution

FILLERS = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 }'

DEPTHWISE = [
    # bottom shape, stride, multiplier (outputs per group); MobileNet-sized planes
    ((1, 32, 28, 28), 1, 1),
    ((1, 32, 28, 28), 2, 1),
    ((4, 24, 14, 14), 1, 1),
    ((4, 24, 14, 14), 2, 2),
    ((1, 40, 56, 56), 1, 1),     # the input gradient's column buffer in ranges of groups
    ((1, 48, 96, 96), 2, 1),     # the backward's column buffer in ranges of groups
]


def _pass(shape, stride, multiplier, threads, batched):
    c = shape[1]
    spec = (f'type: "Convolution" convolution_param {{ num_output: {c * multiplier} group: {c} '
            f'kernel_size: 3 pad: 1 stride: {stride} {FILLERS} }}')
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    calls = []
    real = convolution._batches_groups

    def batches(*args):
        calls.append(real(*args) if batched else False)
        return calls[-1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(convolution, "_batches_groups", batches)
        mp.setattr(parallel, "_threads", threads)
        layer, bottoms, tops = setup(spec, [x])
        layer.forward(bottoms, tops)
        tops[0].diff = np.random.default_rng(4).standard_normal(tops[0].shape).astype(np.float32)
        layer.backward(tops, [True], bottoms)
    return [a.copy() for a in (tops[0].data, bottoms[0].diff, layer.blobs[0].diff, layer.blobs[1].diff)], calls


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, stride, multiplier", DEPTHWISE, ids=lambda v: "x".join(map(str, v))
                         if isinstance(v, tuple) else str(v))
def test_batched_groups_keep_the_bits(shape, stride, multiplier, threads):
    batched, calls = _pass(shape, stride, multiplier, threads, batched=True)
    looped, _ = _pass(shape, stride, multiplier, threads, batched=False)
    assert calls and all(calls), "every product of these layers goes batched"
    for what, a, b in zip(("top", "bottom diff", "weight diff", "bias diff"), batched, looped):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=what)


def test_batched_groups_are_the_same_at_any_thread_count():
    one, _ = _pass((2, 16, 20, 20), 1, 1, 1, batched=True)
    two, _ = _pass((2, 16, 20, 20), 1, 1, 2, batched=True)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_large_groups_still_go_one_by_one():
    """AlexNet-sized groups (two of 128 x 1200 weights) keep a product each, where the panels
    and the swapped products apply."""
    assert not convolution._batches_groups(2, 128, 1200, 729)
    assert convolution._batches_groups(96, 1, 9, 3136)


@pytest.mark.parametrize("shape, stride, ranges", [((1, 40, 56, 56), 1, 3), ((1, 48, 96, 96), 2, 2)])
def test_big_depthwise_backwards_go_in_ranges_of_groups(shape, stride, ranges, monkeypatch):
    """The backward's column buffer (of dy under the flipped kernels at stride 1, of x at
    stride 2; 1.1 M and 1.0 M values) is built a range of groups at a time, within
    ROW_BLOCK_ELEMENTS."""
    sizes = []
    real = convolution.im2col

    def recording(x, geo, *args, **kw):
        sizes.append(kw["out"].size if "out" in kw else None)
        return real(x, geo, *args, **kw)
    monkeypatch.setattr(convolution, "im2col", recording)
    _pass(shape, stride, 1, 1, batched=True)
    backward = sizes[-ranges:]      # after the forward's row blocks
    assert len(backward) == ranges and all(n <= convolution.ROW_BLOCK_ELEMENTS for n in backward)
    # every channel's nine rows, over the input's positions (dy's flipped columns) at stride
    # 1, the output's at stride 2
    positions = shape[2] * shape[3] if stride == 1 else (shape[2] // 2) * (shape[3] // 2)
    assert sum(backward) == shape[1] * 9 * positions


@pytest.mark.parametrize("threads", [1, 2])
def test_depth_one_column_gradients_keep_the_input_gradients_bits(threads, monkeypatch):
    """A stride-2 depthwise layer's column gradient (products of depth one) by element-wise
    multiplication: after col2im the input gradient has the bits of the BLAS's products,
    zeros included (dy with a ReLU's exact zeros, weights of both signs)."""
    grads = []
    for via_blas in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            if via_blas:
                mp.setattr(convolution, "_column_gradient", convolution._group_products)
            mp.setattr(parallel, "_threads", threads)
            spec = ('type: "Convolution" convolution_param { num_output: 24 group: 24 kernel_size: 3 '
                    f'pad: 1 stride: 2 {FILLERS} }}')
            x = np.random.default_rng(5).standard_normal((3, 24, 30, 30)).astype(np.float32)
            layer, bottoms, tops = setup(spec, [x])
            layer.forward(bottoms, tops)
            dy = np.random.default_rng(6).standard_normal(tops[0].shape).astype(np.float32)
            tops[0].diff = np.maximum(dy, 0)          # half of dy exactly zero
            layer.backward(tops, [True], bottoms)
            grads.append(bottoms[0].diff.copy())
    assert (grads[0] == 0).any()
    np.testing.assert_array_equal(grads[0].view(np.uint32), grads[1].view(np.uint32))
