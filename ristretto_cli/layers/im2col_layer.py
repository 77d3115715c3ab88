"""Im2col: a convolution's column buffer as a layer's top (the layer Caffe tests its im2col
with, and a building block for hand-made convolutions)."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import canonical_axis, count
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.convolution import spatial_params
from ristretto_cli.layers.im2col import ConvGeometry, col2im, conv_out_size, im2col, scratch, to_cols
from ristretto_cli.layers.registry import register


@register("Im2col")
class Im2colLayer(Layer):
    """Reads kernel, stride, pad and dilation from ``convolution_param`` as Convolution does
    (``axis`` = the channel axis, one or more spatial axes after it; ``force_nd_im2col``
    changes nothing numerically). Per item (every index before the channel axis) the top is
    the ``(C * prod(kernel), *output)`` column buffer: row ``(c, k...)`` holds, at each output
    position, the input value under kernel offset ``k`` of channel ``c`` (0 in the padding).
    Backward is col2im: each input cell sums the gradients of every place it was copied to."""
    exact_bottoms = 1
    exact_tops = 1
    inplace_allowed = False

    def layer_setup(self, bottom, top):
        p = self.param.convolution_param
        shape = bottom[0].shape
        self.channel_axis = canonical_axis(p.axis, len(shape), "im2col axis")
        nsp = len(shape) - self.channel_axis - 1
        if nsp < 1:
            raise self.error(f"Im2col needs at least one spatial axis after the channel axis "
                             f"{self.channel_axis} of a {len(shape)}-D bottom")
        self.num_spatial_axes = nsp
        self.kernel, self.stride, self.pad, self.dilation = spatial_params(self, p, nsp)

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        axis, nsp = self.channel_axis, self.num_spatial_axes
        if len(shape) != axis + 1 + nsp:
            raise self.error(f"bottom num_axes may not change (was {axis + 1 + nsp}, now {len(shape)})")
        image = tuple(int(s) for s in shape[axis + 1:])
        cols = tuple(conv_out_size(i, k, s, p, d) for i, k, s, p, d in
                     zip(image, self.kernel, self.stride, self.pad, self.dilation))
        if any(o < 0 for o in cols):
            raise self.error(f"kernel extent exceeds the padded input: output size {cols} for "
                             f"input {image}")
        self.geometry = ConvGeometry(image, cols, self.kernel, self.stride, self.pad, self.dilation)
        self.num = count(shape, 0, axis)
        self.channels = int(shape[axis])
        top[0].reshape(shape[:axis] + (self.channels * count(self.kernel),) + cols)

    def forward_cpu(self, bottom, top):
        geo, n, c = self.geometry, self.num, self.channels
        rows, positions = c * geo.kernel_size, geo.col_size
        y = top[0].data.reshape(n, rows, positions)
        if y.size == 0:
            return
        x = bottom[0].data.reshape((n, c) + geo.image)
        col = im2col(x, geo, False, out=scratch("im2col_layer", (rows, n * positions), x.dtype))
        np.copyto(y, col.reshape(rows, n, positions).transpose(1, 0, 2))

    def backward_cpu(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        geo, n, c = self.geometry, self.num, self.channels
        dy = top[0].diff
        if dy.size == 0:        # no window: nothing reaches the input
            bottom[0].diff = np.zeros(bottom[0].shape, dy.dtype)
            return
        rows = c * geo.kernel_size
        col = to_cols(dy.reshape((n, rows) + geo.cols), False,
                      scratch("im2col_layer", (rows, n * geo.col_size), dy.dtype))
        bottom[0].diff = col2im(col, geo, n, c, False).reshape(bottom[0].shape)
