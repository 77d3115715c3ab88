"""A pycaffe-compatible Python API: change one import and pycaffe scripts run on NumPy.

    from ristretto_cli import pycaffe as caffe
    caffe.set_mode_cpu()
    net = caffe.Net('deploy.prototxt', 'weights.caffemodel', caffe.TEST)
    net.blobs['data'].data[...] = image_batch
    out = net.forward()                       # {'prob': array(...)}

Beyond pycaffe: ``semantics='caffe-cpu'`` selects the compatibility rules of the Ristretto
number formats (see docs), and ``seed=`` seeds every random draw of the net.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np

from ristretto_cli.blob import Blob
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import read_net_param, read_weights, write_caffemodel
from ristretto_cli.net import Net as _EngineNet
from ristretto_cli.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

_random_seed: int | None = None


def set_mode_cpu() -> None:
    """Everything runs on the CPU; kept for pycaffe scripts."""


def set_mode_gpu() -> None:
    warnings.warn("no GPU backend is available: running on the CPU", RuntimeWarning, stacklevel=2)


def set_device(device_id: int) -> None:
    """Accepted for compatibility (CPU only)."""


def set_random_seed(seed: int) -> None:
    """Seed the nets created afterwards (fillers, dropout, stochastic rounding, data)."""
    global _random_seed
    _random_seed = int(seed)


class PyBlob:
    """pycaffe's Blob: ``data`` and ``diff`` as NumPy arrays, plus the legacy 4-D accessors."""

    def __init__(self, blob: Blob):
        self._blob = blob

    @property
    def data(self) -> np.ndarray:
        return self._blob.data

    @data.setter
    def data(self, value) -> None:
        self._blob.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self._blob.diff

    @diff.setter
    def diff(self, value) -> None:
        self._blob.diff[...] = value

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def _legacy(self, axis: int) -> int:
        shape = self._blob.shape
        if len(shape) > 4:
            raise RistrettoError("legacy accessors need a blob of at most 4 axes")
        return shape[axis] if axis < len(shape) else 1  # Caffe pads missing axes with 1 on the right

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self._blob.reshape(shape)

    def __repr__(self) -> str:
        return f"<Blob shape={self.shape}>"


class PyLayer:
    """A layer as pycaffe shows it: ``type`` and ``blobs``."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def type(self) -> str:
        return self._layer.type

    @property
    def blobs(self) -> list[PyBlob]:
        return [PyBlob(b) for b in self._layer.blobs]

    def __repr__(self) -> str:
        return f"<Layer {self._layer.name!r} type={self.type}>"


class Net:
    """pycaffe's Net.

    Accepts ``Net(model, phase)``, ``Net(model, weights, phase)``,
    ``Net(model, phase, weights=w)`` and pycaffe's keyword spellings, plus ``level``,
    ``stages``, ``semantics`` and ``seed``.
    """

    def __init__(self, model_file, *args, weights: str | None = None, phase: int | None = None,
                 level: int = 0, stages=None, semantics: str = "ristretto", seed: int | None = None):
        if len(args) == 2:
            weights, phase = args
        elif len(args) == 1:
            if isinstance(args[0], (str, bytes)):
                weights = args[0]
            else:
                phase = args[0]
        elif len(args) > 2:
            raise TypeError("Net(model, [weights,] phase)")
        if phase is None:
            raise TypeError("Net needs a phase (caffe.TRAIN or caffe.TEST)")
        param = read_net_param(str(model_file))
        self._net = _EngineNet(param, int(phase), level=level, stages=list(stages or []),
                               semantics=semantics, seed=seed if seed is not None else _random_seed)
        if weights:
            self.copy_from(weights)

    # ------------------------------------------------------------------ pycaffe surface
    @property
    def blobs(self) -> OrderedDict:
        return OrderedDict((name, PyBlob(b)) for name, b in self._net.blobs.items())

    @property
    def params(self) -> OrderedDict:
        return OrderedDict((layer.name, [PyBlob(b) for b in layer.blobs])
                           for layer in self._net.layers if layer.blobs)

    @property
    def layers(self) -> list[PyLayer]:
        return [PyLayer(layer) for layer in self._net.layers]

    @property
    def layer_dict(self) -> OrderedDict:
        return OrderedDict((layer.name, PyLayer(layer)) for layer in self._net.layers)

    @property
    def _layer_names(self) -> list[str]:
        return list(self._net.layer_names)

    @property
    def inputs(self) -> list[str]:
        return list(self._net.input_names)

    @property
    def outputs(self) -> list[str]:
        return list(self._net.output_names)

    @property
    def blob_loss_weights(self) -> OrderedDict:
        return OrderedDict((name, self._net.blob_loss_weights.get(name, 0.0)) for name in self._net.blobs)

    @property
    def engine(self) -> _EngineNet:
        """The underlying ristretto_cli.net.Net."""
        return self._net

    def _layer_index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        try:
            return self._net.layer_names.index(name)
        except ValueError:
            raise RistrettoError(f"no layer named '{name}'") from None

    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Set the inputs given as keywords, run forward, return the output blobs (and ``blobs``)."""
        for name, value in kwargs.items():
            if name not in self._net.input_names:
                raise RistrettoError(f"'{name}' is not an input of the net (inputs: {self.inputs})")
            value = np.asarray(value)
            if value.shape != self._net.blobs[name].shape:
                raise RistrettoError(f"input '{name}' has shape {value.shape}, the net expects "
                                     f"{self._net.blobs[name].shape}; reshape the blob first")
            self._net.blobs[name].data[...] = value
        start_i = self._layer_index(start, 0)
        end_i = self._layer_index(end, len(self._net.layers) - 1)
        self._net.forward(start_i, end_i)
        names = set(self.outputs if end is None else self._net.layers[end_i].param.top) | set(blobs or [])
        return {name: self._net.blobs[name].data for name in names}

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """Set top diffs given as keywords, run backward, return the input diffs (and ``diffs``)."""
        for name, value in kwargs.items():
            self._net.blobs[name].diff[...] = value
        start_i = self._layer_index(start, len(self._net.layers) - 1)
        end_i = self._layer_index(end, 0)
        self._net.backward(start_i, end_i)
        names = set(self.inputs if end is None else self._net.layers[end_i].param.bottom) | set(diffs or [])
        return {name: self._net.blobs[name].diff for name in names}

    def reshape(self) -> None:
        self._net.reshape()

    def copy_from(self, weights: str) -> None:
        self._net.copy_trained_layers_from(read_weights(str(weights)), path=str(weights))

    def share_with(self, other: Net) -> None:
        self._net.share_trained_layers_with(other._net)

    def save(self, path: str) -> None:
        write_caffemodel(str(path), self._net.to_proto())

    def __repr__(self) -> str:
        return repr(self._net)


__all__ = ["Net", "TEST", "TRAIN", "set_device", "set_mode_cpu", "set_mode_gpu", "set_random_seed"]
