"""Python layers for tests/test_layers_python.py, written as pycaffe users write them
(``type: "Python"`` with ``python_param { module: "pylayers" layer: ... }``)."""

from __future__ import annotations

import json

import numpy as np

from ristretto_cli import pycaffe as caffe


class ScaleShift(caffe.Layer):
    """y = x * w + b with learnable scalars w (from param_str "scale") and b."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("ScaleShift takes one bottom")
        scale = json.loads(self.param_str or "{}").get("scale", 1.0)
        if len(self.blobs) == 0:            # not when the weights came with the net
            self.blobs.add_blob(1)
            self.blobs.add_blob(1)
            self.blobs[0].data[...] = scale

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.blobs[0].data[0] + self.blobs[1].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[...] += np.sum(top[0].diff * bottom[0].data)
        self.blobs[1].diff[...] += np.sum(top[0].diff)
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff * self.blobs[0].data[0]


class CountingData(caffe.Layer):
    """A data layer: batches of consecutive numbers and their parity as labels; TEST batches
    start at 1000 (``self.phase``)."""

    def setup(self, bottom, top):
        config = json.loads(self.param_str)
        self.batch, self.width = config["batch"], config["width"]
        self.next = 1000 if self.phase == caffe.TEST else 0

    def reshape(self, bottom, top):
        top[0].reshape(self.batch, self.width)
        top[1].reshape(self.batch)

    def forward(self, bottom, top):
        values = self.next + np.arange(self.batch * self.width).reshape(self.batch, self.width)
        top[0].data[...] = values / 1000.0
        top[1].data[...] = values[:, 0] % 2
        self.next += self.batch * self.width

    def backward(self, top, propagate_down, bottom):
        pass


class Broken(caffe.Layer):
    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].shape)

    def forward(self, bottom, top):
        raise ValueError("bad value in the input")
