"""Parameter: a learnable blob exposed as the layer's top, for layers that take a weight as a
bottom (an Eltwise or Scale with a learned operand)."""

from __future__ import annotations

from ristretto_cli.blob import Blob, count
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register


@register("Parameter")
class ParameterLayer(Layer):
    """One parameter blob of ``parameter_param.shape``, zero at the start (no filler; a weights
    file fills it); the top aliases its values from the first forward on.

    Caffe lets the top share the parameter's gradient memory as well, so that the layers above
    write the gradient straight into it. Here the top keeps a gradient array of its own, and
    backward adds it into the parameter's gradient: the same values after one backward pass
    (the solver zeroes parameter gradients first), and ``iter_size`` or two Parameter layers
    sharing one named parameter accumulate as for any other parameter.
    """
    exact_bottoms = 0
    exact_tops = 1
    #: The top is the parameter's own array: an in-place layer on it writes the parameter, as
    #: in Caffe, so scoring must not make the array read-only.
    writes_blobs_in_forward = True

    def layer_setup(self, bottom, top):
        shape = tuple(int(d) for d in self.param.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise self.error(f"parameter_param.shape has a negative dimension: {shape}")
        if self.blobs:
            # Given with the layer (Caffe skips the initialization); its values become the top's.
            if self.blobs[0].count != count(shape):
                raise self.error(f"the parameter blob has {self.blobs[0].count} values, "
                                 f"parameter_param.shape {shape} needs {count(shape)}")
        else:
            self.blobs.append(Blob(shape))
        self._shape = shape
        top[0].reshape(shape)

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        # Every pass: the solver updates the array in place, but a test net that takes the
        # train net's weights is given new arrays.
        data = self.blobs[0].data
        top[0].data = data if data.shape == self._shape else data.reshape(self._shape)

    def backward_cpu(self, top, propagate_down, bottom):
        if self.param_propagate_down and self.param_propagate_down[0]:
            param = self.blobs[0]
            param.diff += top[0].diff.reshape(param.shape)
