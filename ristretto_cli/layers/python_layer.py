"""Python layers (``type: "Python"``): a class of a Python module does the layer's work, as
in Caffe built with ``WITH_PYTHON_LAYER``.

``python_param { module: "m" layer: "C" param_str: "..." }`` imports ``m`` (from
``sys.path``: the working directory when run as a script, ``PYTHONPATH``) and builds
``m.C(layer_param)``; the object then gets ``param_str``, ``phase`` and ``blobs`` (its
parameter blobs: ``blobs.add_blob(*shape)`` adds a zero-filled one, which nets save, load
and train like any layer's) and is called as Caffe calls it: ``setup(bottom, top)`` once,
``reshape(bottom, top)`` before every forward, ``forward(bottom, top)`` and
``backward(top, propagate_down, bottom)``. Blobs come as pycaffe's (``.data``, ``.diff``,
``.reshape(*shape)``, ``.num`` ...), see ``ristretto_cli.blob.BlobView``. The usual base
class is ``ristretto_cli.pycaffe.Layer`` (``caffe.Layer``).

An error raised by the layer's code stops the net with one line naming the layer and the
error; ``--debug`` shows where it came from. It is a ``LayerCodeError`` that keeps the original
exception, which the pycaffe API raises unchanged, as pycaffe does.
"""

from __future__ import annotations

import importlib

from ristretto_cli.blob import Blob, BlobView
from ristretto_cli.errors import LayerCodeError, RistrettoError
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register


class ParamBlobs:
    """A Python layer's ``self.blobs``: its parameter blobs as pycaffe shows them."""

    def __init__(self, blobs: list[Blob]):
        self._blobs = blobs

    def add_blob(self, *shape) -> None:
        """A new zero-filled parameter blob of this shape."""
        self._blobs.append(Blob(tuple(int(d) for d in shape)))

    def __len__(self) -> int:
        return len(self._blobs)

    def __getitem__(self, index: int) -> BlobView:
        return BlobView(self._blobs[index])

    def __iter__(self):
        return (BlobView(b) for b in self._blobs)


@register("Python")
class PythonLayer(Layer):
    #: The layer's code may change its own blobs whenever it likes.
    writes_blobs_in_forward = True

    def layer_setup(self, bottom, top):
        pp = self.param.python_param
        if not pp.module or not pp.layer:
            raise self.error("python_param needs both module and layer")
        try:
            module = importlib.import_module(pp.module)
        except ImportError as exc:
            raise self.error(f"cannot import the Python module '{pp.module}' ({exc}); it must be "
                             f"on the module path (PYTHONPATH)") from exc
        cls = getattr(module, pp.layer, None)
        if cls is None:
            raise self.error(f"the Python module '{pp.module}' has no '{pp.layer}'")
        self.impl = self._call(cls, self.param, what="creating it")
        self.impl.param_str = pp.param_str
        self.impl.phase = self.phase
        self.impl.blobs = ParamBlobs(self.blobs)
        self._call(self.impl.setup, _views(bottom), _views(top), what="setup")

    def reshape(self, bottom, top):
        self._call(self.impl.reshape, _views(bottom), _views(top), what="reshape")

    def forward_cpu(self, bottom, top):
        self._call(self.impl.forward, _views(bottom), _views(top), what="forward")

    def backward_cpu(self, top, propagate_down, bottom):
        self._call(self.impl.backward, _views(top), list(propagate_down), _views(bottom), what="backward")

    def _call(self, fn, *args, what: str):
        """``fn(*args)``; the layer code's errors as one line naming this layer."""
        try:
            return fn(*args)
        except RistrettoError:
            raise
        except Exception as exc:
            raise LayerCodeError(f"Python layer {self.param.python_param.layer} ({what}): "
                                 f"{type(exc).__name__}: {exc}", exc, layer=self.name) from exc


def _views(blobs: list[Blob]) -> list[BlobView]:
    return [BlobView(b) for b in blobs]
