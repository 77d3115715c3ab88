"""Set-up checks and shapes of Convolution, Deconvolution, Pooling and LRN against Caffe 1.0's
LayerSetUp/Reshape (base_conv_layer.cpp, conv_layer.cpp, deconv_layer.cpp, pooling_layer.cpp,
lrn_layer.cpp). Shapes are hand-computed from Caffe's formulas."""

from __future__ import annotations

import numpy as np
import pytest
from layer_check import setup

from ristretto_cli.errors import RistrettoError

INT_MAX = 2**31 - 1


def conv(fields, kind="Convolution"):
    return f'type: "{kind}" convolution_param {{ {fields} }}'


def pool(fields):
    return f'type: "Pooling" pooling_param {{ {fields} }}'


@pytest.mark.parametrize("kind, fields, shape, top", [
    # per-axis kernel extent d*(k-1)+1, C division: (5+2-2)/1+1, (6-3)/2+1, (7+4-2)/3+1
    ("Convolution", "kernel_size: 2 dilation: 1 dilation: 2 dilation: 1 pad: 1 pad: 0 pad: 2 "
     "stride: 1 stride: 2 stride: 3", (1, 2, 5, 6, 7), (1, 3, 6, 2, 4)),
    # (2-3)/2 truncates toward zero: 0 + 1
    ("Convolution", "kernel_size: 3 stride: 2", (1, 2, 2, 9), (1, 3, 1, 4)),
    ("Convolution", "kernel_size: 2 stride: 2", (2, 2, 7), (2, 3, 3)),
    # a 0-spatial-axis convolution (axis: -1 of a 2-D blob): no kernel_size needed
    ("Convolution", "", (4, 2), (4, 3)),
    # deconvolution: s*(in-1) + d*(k-1)+1 - 2p
    ("Deconvolution", "kernel_size: 3 stride: 2 pad: 1 dilation: 2", (1, 2, 3, 4), (1, 3, 7, 9)),
    ("Deconvolution", "kernel_h: 1 kernel_w: 3 stride_h: 3 stride_w: 1 pad_w: 1", (1, 2, 3, 4),
     (1, 3, 7, 4)),
])
def test_conv_output_shapes(kind, fields, shape, top):
    _, _, tops = setup(conv(f"num_output: 3 {fields}", kind), [np.zeros(shape)])
    assert tops[0].shape == top


@pytest.mark.parametrize("fields, message", [
    # uint32 values above INT_MAX are negative ints in Caffe: its CHECK_GTs fail
    (f"num_output: {INT_MAX + 1} kernel_size: 1", "num_output"),
    (f"num_output: 2 kernel_size: {INT_MAX + 2}", "filter dimensions"),
    (f"num_output: 2 kernel_size: 1 stride: {INT_MAX + 1}", "stride"),
    (f"num_output: 2 kernel_size: 1 stride_h: {INT_MAX + 1} stride_w: 1", "stride"),
    ("num_output: 2 kernel_size: 3 pad: 1 pad: 1 pad: 1", "pad must be specified once"),
    ("num_output: 2 kernel_size: 3 dilation: 1 dilation: 1 dilation: 1", "dilation must be"),
    ("num_output: 2 kernel_size: 3 stride: 1 stride: 1 stride: 1", "stride must be"),
    ("num_output: 2 kernel_size: 3 pad_h: 1 pad: 1", "not both"),
    ("num_output: 2 kernel_size: 3 axis: 4", "out of range"),
])
def test_conv_setup_errors(fields, message):
    for kind in ("Convolution", "Deconvolution"):
        with pytest.raises(RistrettoError, match=message):
            setup(conv(fields, kind), [np.zeros((1, 2, 5, 5))])


def test_conv_kernel_extent_beyond_the_input():
    with pytest.raises(RistrettoError, match="layer"):   # Caffe: Blob::Reshape's shape >= 0
        setup(conv("num_output: 2 kernel_size: 2 pad: 2", "Deconvolution"), [np.zeros((1, 2, 1, 5))])
    _, _, tops = setup(conv("num_output: 2 kernel_size: 2"), [np.zeros((1, 2, 1, 5))])
    assert tops[0].shape == (1, 2, 0, 4)                  # 0 is a valid size in Caffe


@pytest.mark.parametrize("fields, shape, top", [
    ("kernel_size: 2 stride: 2 pad: 1", (1, 1, 5, 5), (1, 1, 3, 3)),      # ceil 4, clipped
    # any pad clips both axes: W's last window (start 6 >= 5) goes though pad_w is 0
    ("kernel_h: 2 kernel_w: 1 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0", (1, 1, 5, 5), (1, 1, 3, 2)),
    ("kernel_h: 2 kernel_w: 1 stride_h: 2 stride_w: 3", (1, 1, 5, 5), (1, 1, 3, 3)),  # no clip
    ("kernel_size: 3 pad: 1", (1, 1, 1, 1), (1, 1, 1, 1)),
    ("kernel_size: 4 pad: 1", (1, 1, 1, 1), (1, 1, 0, 0)),
])
def test_pooling_output_shapes(fields, shape, top):
    _, _, tops = setup(pool(f"pool: MAX {fields}"), [np.zeros(shape)])
    assert tops[0].shape == top


@pytest.mark.parametrize("shape", [(1, 2, 0, 3), (1, 2, 3, 0)])
def test_global_pooling_of_an_empty_plane_is_an_error(shape):
    # Caffe: kernel = (H, W) of the bottom, then CHECK_GT(kernel, 0)
    for method in ("MAX", "AVE"):
        with pytest.raises(RistrettoError, match="cannot be zero"):
            setup(pool(f"pool: {method} global_pooling: true"), [np.zeros(shape)])


@pytest.mark.parametrize("fields, num_tops, message", [
    ("pool: AVE kernel_size: 5 pad: 1", 1, "larger"),     # Caffe: Blob::Reshape's shape >= 0
    ("pool: STOCHASTIC kernel_size: 2", 2, "at most 1 top"),
    ("pool: AVE global_pooling: true stride: 2", 1, "only pad = 0 and stride = 1"),
])
def test_pooling_setup_errors(fields, num_tops, message):
    with pytest.raises(RistrettoError, match=message):
        setup(pool(fields), [np.zeros((1, 1, 1, 1))], num_tops=num_tops)


def test_lrn_local_size_must_be_a_positive_c_int():
    for size in (INT_MAX + 2, 0, 2):        # INT_MAX + 2 is -INT_MAX in Caffe's int: -1 % 2
        with pytest.raises(RistrettoError, match="odd"):
            setup(f'type: "LRN" lrn_param {{ local_size: {size} }}', [np.zeros((1, 3, 2, 2))])


@pytest.mark.parametrize("size", [1, 3, 7])
def test_lrn_within_channel_keeps_the_shape(size):
    spec = f'type: "LRN" lrn_param {{ local_size: {size} norm_region: WITHIN_CHANNEL }}'
    _, _, tops = setup(spec, [np.zeros((2, 3, 2, 1))])
    assert tops[0].shape == (2, 3, 2, 1)
