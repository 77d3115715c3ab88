"""A pycaffe-compatible Python API: change one import and pycaffe scripts run on NumPy.

    from ristretto_cli import pycaffe as caffe
    caffe.set_mode_cpu()
    net = caffe.Net('deploy.prototxt', 'weights.caffemodel', caffe.TEST)
    net.blobs['data'].data[...] = image_batch
    out = net.forward()                       # {'prob': array(...)}

Also pycaffe's ``caffe.io`` (``Transformer``, ``load_image``, ...), ``caffe.proto``,
``Net.forward_all`` / ``forward_backward_all``, ``Classifier``, ``Detector``, the solvers
(``get_solver``, ``SGDSolver``, ...), net specifications (``NetSpec``, ``layers``,
``params``, ``to_proto``, ``coord_map.crop``), ``caffe.draw`` (needs pydot; images need
Graphviz) and Caffe 1.0's other module names
(``init_log``, ``log``, ``Timer``, ``__version__``, the NCCL stand-ins of a build without
NCCL). The submodules also import by name: ``from ristretto_cli.pycaffe.proto import
caffe_pb2`` for ``from caffe.proto import caffe_pb2``.

Beyond pycaffe: ``semantics='caffe-cpu'`` selects the compatibility rules of the Ristretto
number formats (see docs), and ``seed=`` seeds every random draw of the net.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import time
import warnings
from collections import OrderedDict

import numpy as np

from ristretto_cli import proto
from ristretto_cli import pycaffe_coordmap as coord_map
from ristretto_cli import pycaffe_draw as draw
from ristretto_cli import pycaffe_io as io
from ristretto_cli import pycaffe_netspec as net_spec
from ristretto_cli.blob import BlobView as PyBlob
from ristretto_cli.errors import LayerCodeError, RistrettoError
from ristretto_cli.io import (
    read_net_param,
    read_solver_param,
    read_weights,
    write_caffemodel,
    write_caffemodel_h5,
)
from ristretto_cli.layers import LAYER_TYPES
from ristretto_cli.net import Net as _EngineNet
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.pycaffe_netspec import NetSpec, layers, params, to_proto
from ristretto_cli.solver.lr_policy import learning_rate

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

# pycaffe's submodules under their dotted names too, so that ``from caffe.proto import
# caffe_pb2`` becomes ``from ristretto_cli.pycaffe.proto import caffe_pb2`` (and the same for
# ``io``, ``net_spec``, ``coord_map`` and ``draw``), as ``os.path`` is registered.
for _name, _module in (("io", io), ("net_spec", net_spec), ("coord_map", coord_map), ("draw", draw),
                       ("proto", proto), ("proto.caffe_pb2", caffe_pb2)):
    sys.modules.setdefault(f"{__name__}.{_name}", _module)
del _name, _module

#: Caffe 1.0's CAFFE_VERSION.
__version__ = "1.0.0"

_random_seed: int | None = None
_solver_count = 1
_solver_rank = 0
_multiprocess = False


class _RuntimeError(RistrettoError, RuntimeError):
    """Where pycaffe raises RuntimeError (a file it cannot open)."""


class _ValueError(RistrettoError, ValueError):
    """Where pycaffe raises ValueError (a layer name it cannot find)."""


def _check_file(path) -> str:
    """pycaffe's CheckFile: the file must open before anything is read."""
    path = os.fsdecode(path)
    try:
        with open(path, "rb"):
            pass
    except OSError:
        raise _RuntimeError(f"Could not open file {path}") from None
    return path


def _layer_code_passes(method):
    """pycaffe lets a Python layer's own exception through unchanged (the CLI prints one line)."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except LayerCodeError as exc:
            raise exc.original from None
    return wrapper


def set_mode_cpu() -> None:
    """Everything runs on the CPU; kept for pycaffe scripts."""


def set_mode_gpu() -> None:
    warnings.warn("no GPU backend is available: running on the CPU", RuntimeWarning, stacklevel=2)


def set_device(device_id: int) -> None:
    """Accepted for compatibility (CPU only)."""


def layer_type_list() -> list[str]:
    """The layer types a net may use (prototxt ``type`` strings), sorted."""
    return sorted(LAYER_TYPES)


def set_random_seed(seed: int) -> None:
    """Seed the nets created afterwards (fillers, dropout, stochastic rounding, data)."""
    global _random_seed
    _random_seed = int(seed)


_GLOG_LEVELS = (logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


def init_log(level: int | None = None, stderr: bool = True) -> None:
    """Show the log on stderr from glog level ``level`` up (0 INFO, 1 WARNING, 2 ERROR,
    3 FATAL; default ``$GLOG_minloglevel`` or 0). Always stderr: ``stderr`` is accepted
    for pycaffe's signature, no glog files are written."""
    from ristretto_cli import log as _log
    if level is None:
        level = int(os.environ.get("GLOG_minloglevel", 0))
    _log.configure()
    _log.logger.setLevel(_GLOG_LEVELS[min(max(int(level), 0), 3)])


def log(message: str) -> None:
    """One INFO line in the log (``init_log`` shows it)."""
    from ristretto_cli.log import logger
    logger.info("%s", message)


def has_nccl() -> bool:
    """No NCCL: multi-GPU training is not available."""
    return False


def solver_count() -> int:
    return _solver_count


def set_solver_count(count: int) -> None:
    """Recorded only (one process, one solver)."""
    global _solver_count
    _solver_count = int(count)


def solver_rank() -> int:
    return _solver_rank


def set_solver_rank(rank: int) -> None:
    global _solver_rank
    _solver_rank = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    global _multiprocess
    _multiprocess = bool(multiprocess)


class NCCL:
    """pycaffe's NCCL in a build without NCCL: constructed, does nothing (also when given to
    ``solver.add_callback``)."""

    def __init__(self, solver, uid):
        self.solver = solver
        self.uid = uid


class Timer:
    """pycaffe's Timer: ``start()``, ``stop()``, ``ms`` (the last start to stop; stops a
    running timer; 0 before any start). Fractional milliseconds, where Caffe's CPU timer
    gives whole ones."""

    def __init__(self):
        self._running = False
        self._has_run = False
        self._start = self._stop = 0.0

    def start(self) -> None:
        if not self._running:
            self._start = time.perf_counter()
            self._running = self._has_run = True

    def stop(self) -> None:
        if self._running:
            self._stop = time.perf_counter()
            self._running = False

    @property
    def ms(self) -> float:
        if not self._has_run:
            warnings.warn("Timer has never been run before reading time.", RuntimeWarning, stacklevel=2)
            return 0.0
        self.stop()
        return (self._stop - self._start) * 1000.0


class Layer:
    """Base class of Python layers (``type: "Python"``, see ``layers/python_layer.py``), as
    pycaffe's ``caffe.Layer``. The net sets ``param_str``, ``phase`` and ``blobs`` (parameter
    blobs; ``self.blobs.add_blob(*shape)``) before ``setup``; override ``setup``, ``reshape``,
    ``forward`` and ``backward``."""

    def __init__(self, param=None):
        self.layer_param = param

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom, top) -> None:
        """Once, before the first reshape: read ``param_str``, check the bottoms."""

    def reshape(self, bottom, top) -> None:
        """Before every forward: ``top[i].reshape(*shape)``."""

    def forward(self, bottom, top) -> None:
        raise NotImplementedError("this Python layer has no forward")

    def backward(self, top, propagate_down, bottom) -> None:
        raise NotImplementedError("this Python layer has no backward")


def _engine_blobs(blobs) -> list:
    return [b._blob if isinstance(b, PyBlob) else b for b in blobs]


class PyLayer:
    """A layer as pycaffe shows it: ``type``, ``blobs``, ``setup`` (LayerSetUp) and
    ``reshape``, the last two with pycaffe blobs (e.g. ``[net.blobs['data']]``)."""

    def __init__(self, layer):
        self._layer = layer

    @property
    def type(self) -> str:
        return self._layer.type

    @property
    def blobs(self) -> list[PyBlob]:
        return [PyBlob(b) for b in self._layer.blobs]

    @_layer_code_passes
    def setup(self, bottom, top) -> None:
        self._layer.layer_setup(_engine_blobs(bottom), _engine_blobs(top))

    @_layer_code_passes
    def reshape(self, bottom, top) -> None:
        self._layer.reshape(_engine_blobs(bottom), _engine_blobs(top))

    def __repr__(self) -> str:
        return f"<Layer {self._layer.name!r} type={self.type}>"


def _py_layer(layer):
    """A Python layer is the object its module's class built, as in pycaffe."""
    impl = getattr(layer, "impl", None) if layer.type == "Python" else None
    return impl if impl is not None else PyLayer(layer)


class Net:
    """pycaffe's Net.

    Accepts ``Net(model, weights, phase)`` and pycaffe's
    ``Net(network_file, phase, level=0, stages=None, weights=None)`` (positionally or by
    keyword), plus ``semantics`` and ``seed``. Files that cannot be opened: RuntimeError.
    """

    @_layer_code_passes
    def __init__(self, model_file=None, *args, weights: str | None = None, phase: int | None = None,
                 level: int = 0, stages=None, semantics: str = "ristretto", seed: int | None = None,
                 network_file=None):
        if model_file is None:
            model_file = network_file
        if model_file is None:
            raise TypeError("Net needs a model definition (network_file)")
        if args and isinstance(args[0], (str, bytes, os.PathLike)):    # Net(model, weights, phase)
            if len(args) > 2:
                raise TypeError("Net(model, weights, phase)")
            weights = args[0]
            phase = args[1] if len(args) == 2 else phase
        elif len(args) > 4:
            raise TypeError("Net(network_file, phase, level=0, stages=None, weights=None)")
        else:                                   # pycaffe's keywords, positionally
            given = dict(zip(("phase", "level", "stages", "weights"), args))
            phase = given.get("phase", phase)
            level = given.get("level", level)
            stages = given.get("stages", stages)
            weights = given.get("weights", weights)
        if phase is None:
            raise TypeError("Net needs a phase (caffe.TRAIN or caffe.TEST)")
        model_file = _check_file(model_file)
        if weights:
            weights = _check_file(weights)
        param = read_net_param(model_file)
        self._net = _EngineNet(param, int(phase), level=level, stages=list(stages or []),
                               semantics=semantics, seed=seed if seed is not None else _random_seed,
                               verbose=True)   # Caffe's set-up lines, as pycaffe logs them
        if weights:
            self.copy_from(weights)

    @classmethod
    def _wrapping(cls, engine_net: _EngineNet) -> Net:
        """The pycaffe view of an engine net built elsewhere (a solver's)."""
        net = cls.__new__(cls)
        net._net = engine_net
        return net

    # ------------------------------------------------------------------ pycaffe surface
    @property
    def blobs(self) -> OrderedDict:
        # As pycaffe's dict of (_blob_names, _blobs): a repeated '(automatic)' keeps its first
        # place and its last blob.
        return OrderedDict((name, PyBlob(b)) for name, b, _ in self._net.blob_entries)

    @property
    def params(self) -> OrderedDict:
        return OrderedDict((layer.name, [PyBlob(b) for b in layer.blobs])
                           for layer in self._net.layers if layer.blobs)

    @property
    def layers(self) -> list:
        return [_py_layer(layer) for layer in self._net.layers]

    @property
    def layer_dict(self) -> OrderedDict:
        return OrderedDict((layer.name, _py_layer(layer)) for layer in self._net.layers)

    @property
    def _layer_names(self) -> list[str]:
        return list(self._net.layer_names)

    @property
    def _blob_names(self) -> list[str]:
        return [name for name, _, _ in self._net.blob_entries]

    @property
    def top_names(self) -> OrderedDict:
        """Layer name -> the names of its top blobs."""
        return OrderedDict((name, [b.name for b in tops])
                           for name, tops in zip(self._net.layer_names, self._net.top_vecs))

    @property
    def bottom_names(self) -> OrderedDict:
        """Layer name -> the names of its bottom blobs."""
        return OrderedDict((name, [b.name for b in bottoms])
                           for name, bottoms in zip(self._net.layer_names, self._net.bottom_vecs))

    @property
    def inputs(self) -> list[str]:
        return list(self._net.input_names)

    @property
    def outputs(self) -> list[str]:
        return list(self._net.output_names)

    @property
    def blob_loss_weights(self) -> OrderedDict:
        return OrderedDict((name, w) for name, _, w in self._net.blob_entries)

    @property
    def _blob_loss_weights(self) -> list[float]:
        return [w for _, _, w in self._net.blob_entries]

    @property
    def _blobs(self) -> list[PyBlob]:
        """Every blob, in the order of ``_blob_names``."""
        return [PyBlob(b) for _, b, _ in self._net.blob_entries]

    def _blob_ids(self, blobs) -> list[int]:
        order = [b for _, b, _ in self._net.blob_entries]
        return [next(k for k, known in enumerate(order) if known is b) for b in blobs]

    def _top_ids(self, i: int) -> list[int]:
        """Layer ``i``'s tops as indices into ``_blob_names``."""
        return self._blob_ids(self._net.top_vecs[i])

    def _bottom_ids(self, i: int) -> list[int]:
        """Layer ``i``'s bottoms as indices into ``_blob_names``."""
        return self._blob_ids(self._net.bottom_vecs[i])

    @property
    def _inputs(self) -> list[int]:
        """The inputs as indices into ``_blob_names``."""
        return [self._blob_names.index(name) for name in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        """The outputs as indices into ``_blob_names``."""
        return [self._blob_names.index(name) for name in self.outputs]

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
            raise _ValueError(f"no layer named '{name}'") from None

    @_layer_code_passes
    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Set the inputs given as keywords (all of them, as pycaffe requires, or none), run
        forward, return the output blobs (and ``blobs``)."""
        if kwargs and set(kwargs) != set(self.inputs):
            raise RistrettoError(f"Input blob arguments do not match net inputs: given {sorted(kwargs)}, "
                                 f"the net's inputs are {self.inputs}")
        for name, value in kwargs.items():
            value = np.asarray(value)
            blob = self._net.blobs[name]
            if value.shape[:1] != blob.shape[:1]:      # pycaffe checks the batch, then broadcasts
                raise RistrettoError(f"Input is not batch sized: input '{name}' has shape {value.shape}, "
                                     f"the net expects {blob.shape}; reshape the blob first")
            blob.data[...] = value
        start_i = self._layer_index(start, 0)
        end_i = self._layer_index(end, len(self._net.layers) - 1)
        self._net.forward(start_i, end_i)
        names = set(self.outputs if end is None else self._net.layers[end_i].param.top) | set(blobs or [])
        return {name: self._net.blobs[name].data for name in names}

    @_layer_code_passes
    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """Set the output diffs given as keywords (all of them, as pycaffe requires, or none),
        run backward, return the input diffs (and ``diffs``)."""
        if kwargs and set(kwargs) != set(self.outputs):
            raise RistrettoError(f"Top diff arguments do not match net outputs: given {sorted(kwargs)}, "
                                 f"the net's outputs are {self.outputs}")
        for name, value in kwargs.items():
            value = np.asarray(value)
            if value.shape[:1] != self._net.blobs[name].shape[:1]:
                raise RistrettoError(f"diff '{name}' is not batch sized: {value.shape} for a blob of "
                                     f"shape {self._net.blobs[name].shape}")
            self._net.blobs[name].diff[...] = value
        start_i = self._layer_index(start, len(self._net.layers) - 1)
        end_i = self._layer_index(end, 0)
        self._net.backward(start_i, end_i)
        names = set(self.inputs if end is None else self._net.layers[end_i].param.bottom) | set(diffs or [])
        return {name: self._net.blobs[name].diff for name in names}

    def _batch(self, arrays: dict):
        """``arrays`` (name -> values for many items) in batches of the net's batch size
        (the first blob's), the last one padded with zeros."""
        if not arrays:
            return
        num = len(next(iter(arrays.values())))
        size = next(iter(self._net.blobs.values())).shape[0]
        for i in range(0, num, size):
            batch = {}
            for name, values in arrays.items():
                part = np.asarray(values[i:i + size])
                if len(part) < size:
                    part = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:], part.dtype)])
                batch[name] = part
            yield batch

    @staticmethod
    def _stacked(collected: dict, count: int) -> dict:
        return {name: np.asarray(parts)[:count] for name, parts in collected.items()}

    @_layer_code_passes
    def forward_all(self, blobs=None, **kwargs) -> dict:
        """``forward`` over inputs of any number of items, batch by batch (the last padded);
        the outputs (and ``blobs``) for every item."""
        if not kwargs:
            raise RistrettoError("forward_all needs the inputs as keywords, e.g. "
                                 "forward_all(data=images); a net that reads its own data: forward()")
        outs = {name: [] for name in set(self.outputs) | set(blobs or [])}
        for batch in self._batch(kwargs):
            for name, values in self.forward(blobs=blobs, **batch).items():
                outs[name].extend(values.copy())
        count = len(next(iter(kwargs.values())))
        return self._stacked(outs, count)

    @_layer_code_passes
    def forward_backward_all(self, blobs=None, diffs=None, **kwargs) -> tuple[dict, dict]:
        """``forward`` then ``backward`` batch by batch: keywords naming inputs are fed
        forward, those naming outputs are their gradients. The outputs (and ``blobs``) and
        the input gradients (and ``diffs``) for every item."""
        if not kwargs:
            raise RistrettoError("forward_backward_all needs the inputs (and output gradients) "
                                 "as keywords, e.g. forward_backward_all(data=images, prob=grads)")
        outs = {name: [] for name in set(self.outputs) | set(blobs or [])}
        grads = {name: [] for name in set(self.inputs) | set(diffs or [])}
        forward = self._batch({k: v for k, v in kwargs.items() if k in self.inputs})
        backward = self._batch({k: v for k, v in kwargs.items() if k in self.outputs})
        for fb, bb in itertools.zip_longest(forward, backward, fillvalue={}):
            for name, values in self.forward(blobs=blobs, **fb).items():
                outs[name].extend(values.copy())
            for name, values in self.backward(diffs=diffs, **bb).items():
                grads[name].extend(values.copy())
        count = len(next(iter(kwargs.values())))
        return self._stacked(outs, count), self._stacked(grads, count)

    @_layer_code_passes
    def _forward(self, start: int, end: int) -> float:
        """Layers ``start`` to ``end`` (indices, inclusive) forward; the loss."""
        return float(self._net.forward(start, end))

    @_layer_code_passes
    def _backward(self, start: int, end: int) -> None:
        """Layers ``start`` down to ``end`` (indices, inclusive) backward."""
        self._net.backward(start, end)

    def clear_param_diffs(self) -> None:
        self._net.clear_param_diffs()

    # Caffe's Net callbacks: ``run(layer_index)`` around every layer's forward or backward
    # pass, the solver's passes included; a net never forgets them.
    def before_forward(self, run) -> None:
        self._net.callbacks["before_forward"].append(run)

    def after_forward(self, run) -> None:
        self._net.callbacks["after_forward"].append(run)

    def before_backward(self, run) -> None:
        self._net.callbacks["before_backward"].append(run)

    def after_backward(self, run) -> None:
        self._net.callbacks["after_backward"].append(run)

    def set_input_arrays(self, data, labels) -> None:
        """Feed the net's first layer, which must be a MemoryData layer, with ``data`` (N x C
        x H x W) and ``labels`` (N values)."""
        first = self._net.layers[0] if self._net.layers else None
        if first is None or first.type != "MemoryData":
            raise _RuntimeError("set_input_arrays may only be called if the first layer is a "
                                "MemoryData layer")
        try:
            first.reset(data, labels)
        except RistrettoError as exc:           # pycaffe: std::runtime_error
            raise _RuntimeError(str(exc)) from exc

    _set_input_arrays = set_input_arrays     # pycaffe's name for the unchecked call

    @_layer_code_passes
    def reshape(self) -> None:
        self._net.reshape()

    def copy_from(self, weights: str) -> None:
        self._net.copy_trained_layers_from(read_weights(str(weights)), path=str(weights))

    def share_with(self, other: Net) -> None:
        self._net.share_trained_layers_with(other._net)

    def save(self, path: str) -> None:
        write_caffemodel(str(path), self._net.to_proto())

    def save_hdf5(self, path: str) -> None:
        """The weights as HDF5 (``Net::ToHDF5``: shared parameters stored by their owner)."""
        from ristretto_cli.solver.snapshot import h5_layers
        write_caffemodel_h5(str(path), h5_layers(self._net, with_diff=False))

    def load_hdf5(self, path: str) -> None:
        self.copy_from(path)

    def __repr__(self) -> str:
        return repr(self._net)


def _image_transformer(net: Net, mean, input_scale, raw_scale, channel_swap) -> io.Transformer:
    """The Transformer of ``(H, W, K)`` images for the net's first input, as pycaffe's
    Classifier and Detector set it up."""
    in_ = net.inputs[0]
    transformer = io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """pycaffe's Classifier: a TEST net with its input's Transformer, predicting from
    ``(H, W, K)`` images (``caffe.io.load_image``), optionally over ten crops each."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        self.transformer = _image_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[in_].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class scores per image: each image resized to ``image_dims``, then its centre crop
        of the input's size, or the mean over its ten crops (``caffe.io.oversample``)."""
        h, w = (int(d) for d in self.image_dims)
        images = np.stack([io.resize_image(im, (h, w)) for im in inputs])
        if oversample:
            images = io.oversample(images, self.crop_dims)
        else:
            ch, cw = (int(d) for d in self.crop_dims)
            top, left = io.centre_crop_origin((h, w), (ch, cw))
            images = images[:, top:top + ch, left:left + cw, :]
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, im) for im in images])
        scores = self.forward_all(**{in_: batch})[self.outputs[0]]
        if oversample:
            scores = scores.reshape((len(scores) // 10, 10, -1)).mean(1)
        return scores


class Detector(Net):
    """pycaffe's Detector (R-CNN style): classifies windows of images, each warped to the
    net's input size, optionally with ``context_pad`` pixels of surrounding context (the
    part past the image filled with the mean, as R-CNN's feature extraction)."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        super().__init__(model_file, pretrained_file, TEST)
        self.transformer = _image_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def configure_crop(self, context_pad) -> None:
        """The crop size (the input's, as ``(H, W, K)``), the context border, and the mean in
        image space (unscaled, channels in the image's order) that fills context past the
        image."""
        in_ = self.inputs[0]
        shape = self.blobs[in_].data.shape
        self.crop_dims = np.array((shape[2], shape[3], shape[1]))
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, np.float32)
            return
        crop_mean = np.array(mean, dtype=np.float32).transpose(1, 2, 0)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, np.argsort(swap)]
        raw_scale = self.transformer.raw_scale.get(in_)
        if raw_scale is not None:
            crop_mean = crop_mean / raw_scale
        self.crop_mean = crop_mean

    def crop(self, im, window) -> np.ndarray:
        """The window ``(ymin, xmin, ymax, xmax)`` of an ``(H, W, K)`` image; with context,
        the box grown so that ``context_pad`` input pixels on each side are context, resized
        and placed in a mean-filled crop of the input's size (R-CNN's arithmetic; halves
        round to even)."""
        window = np.asarray(window)
        if not self.context_pad:
            return im[window[0]:window[2], window[1]:window[3]]
        size = int(self.blobs[self.inputs[0]].width)        # square inputs, as pycaffe assumes
        scale = size / (1.0 * size - 2 * self.context_pad)
        half_h = (window[2] - window[0] + 1) / 2.0
        half_w = (window[3] - window[1] + 1) / 2.0
        centre = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = size / (box[2] - box[0] + 1)
        scale_w = size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0.0, -box[0]) * scale_h))     # rows of context past the image
        pad_x = int(round(max(0.0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w]).astype(int)
        clip_h, clip_w = box[2] - box[0] + 1, box[3] - box[1] + 1
        crop_h = min(int(round(clip_h * scale_h)), size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), size - pad_x)
        context = io.resize_image(im[box[0]:box[2], box[1]:box[3]], (crop_h, crop_w))
        out = np.ones(self.crop_dims, np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context
        return out

    def detect_windows(self, images_windows) -> list[dict]:
        """``(image file, windows)`` pairs -> one ``{'window', 'prediction', 'filename'}`` per
        window, in order."""
        pairs = [(name, list(windows)) for name, windows in images_windows]
        crops = []
        for name, windows in pairs:
            image = io.load_image(name)
            crops.extend(self.crop(image, window) for window in windows)
        if not crops:
            return []
        in_ = self.inputs[0]
        batch = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        predictions = self.forward_all(**{in_: batch})[self.outputs[0]]
        detections = []
        for name, windows in pairs:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[len(detections)],
                                   "filename": name})
        return detections

    def detect_selective_search(self, image_fnames) -> list[dict]:
        """``detect_windows`` over the windows that selective search proposes for each image
        file, from the separate ``selective_search_ijcv_with_python`` package (which runs
        MATLAB), called with absolute paths as pycaffe does."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ImportError as exc:
            raise ImportError("detect_selective_search needs the selective_search_ijcv_with_python "
                              "package (and MATLAB); give windows to detect_windows instead") from exc
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows))


# ----------------------------------------------------------------------------- solvers
class Solver:
    """pycaffe's Solver: ``net``, ``test_nets``, ``iter``, ``max_iter``, ``param``, ``lr``,
    ``step(n)``, ``solve()``, ``restore(path)``, ``snapshot()``, ``apply_update()``,
    ``share_weights(net)``, ``add_callback(on_start, on_gradients_ready)``. Logs as
    ``caffe train`` does; no progress bar."""

    #: The update rule this class stands for (None: the solver file's ``type``).
    solver_type: str | None = None

    def __init__(self, solver_file, *, semantics: str = "ristretto"):
        self._start(read_solver_param(str(solver_file)), semantics)

    @_layer_code_passes
    def _start(self, param: caffe_pb2.SolverParameter, semantics: str) -> None:
        from ristretto_cli.solver import Solver as _EngineSolver
        if self.solver_type is not None:
            param.type = self.solver_type
        self._solver = _EngineSolver(param, semantics=semantics, show_progress=False)
        self.net = Net._wrapping(self._solver.net)
        self.test_nets = [Net._wrapping(n) for n in self._solver.test_nets]

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def max_iter(self) -> int:
        return self._solver.param.max_iter

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        return self._solver.param

    @property
    def lr(self) -> float:
        """The learning rate the next update uses (the policy at ``iter``), as pycaffe's
        ``SGDSolver.lr``; like Caffe's GetLearningRate it moves a ``multistep`` policy to its
        next step once ``iter`` reaches it."""
        rate, self._solver.current_step = learning_rate(self._solver.param, self._solver.iter,
                                                        self._solver.current_step)
        return float(rate)

    @property
    def engine(self):
        """The underlying ``ristretto_cli.solver.Solver``."""
        return self._solver

    @_layer_code_passes
    def step(self, iters: int) -> None:
        self._solver.step(int(iters))

    @_layer_code_passes
    def solve(self, resume_file=None) -> None:
        if resume_file:
            self.restore(resume_file)
        self._solver.solve()

    @_layer_code_passes
    def restore(self, state_file) -> None:
        self._solver.restore(str(state_file))

    def snapshot(self) -> None:
        self._solver.snapshot()

    def apply_update(self) -> None:
        self._solver.apply_update()

    def add_callback(self, on_start, on_gradients_ready=None) -> None:
        """Caffe's Solver::Step calls ``on_start()`` each iteration before its passes and
        ``on_gradients_ready()`` before the update. An ``NCCL`` alone: nothing to do."""
        if on_gradients_ready is None:
            if isinstance(on_start, NCCL):
                return
            raise TypeError("add_callback(on_start, on_gradients_ready)")
        self._solver.callbacks.append((on_start, on_gradients_ready))

    def share_weights(self, net: Net) -> None:
        """Let ``net`` use this solver's weights (by layer name), as a test net does."""
        net.engine.share_trained_layers_with(self._solver.net)


def _solver_class(kind: str, base: type[Solver] = Solver) -> type[Solver]:
    """pycaffe's solver class of one update rule."""
    doc = f"pycaffe's ``{kind}Solver``: the {kind} update rule, whatever the file's ``type`` says."
    return type(f"{kind}Solver", (base,), {"solver_type": kind, "__doc__": doc})


# As in pycaffe, the other update rules are subclasses of SGDSolver.
SGDSolver = _solver_class("SGD")
NesterovSolver = _solver_class("Nesterov", SGDSolver)
AdaGradSolver = _solver_class("AdaGrad", SGDSolver)
RMSPropSolver = _solver_class("RMSProp", SGDSolver)
AdaDeltaSolver = _solver_class("AdaDelta", SGDSolver)
AdamSolver = _solver_class("Adam", SGDSolver)
_SOLVER_CLASSES = {cls.solver_type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                                     AdaDeltaSolver, AdamSolver)}


def get_solver(solver_file, *, semantics: str = "ristretto") -> Solver:
    """The solver of the type the file names (SGD when it names none), as an object of that
    type's class (``SGDSolver``, ``AdamSolver``, ...), as pycaffe's."""
    param = read_solver_param(str(solver_file))        # read once: its type picks the class
    solver = object.__new__(_SOLVER_CLASSES.get(param.type, Solver))
    solver._start(param, semantics)
    return solver


__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Classifier", "Detector", "Layer", "NCCL",
           "Net", "NesterovSolver", "NetSpec", "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN",
           "Timer", "coord_map", "draw", "get_solver", "has_nccl", "init_log", "io", "layer_type_list",
           "layers", "log", "net_spec", "params", "proto", "set_device", "set_mode_cpu", "set_mode_gpu",
           "set_multiprocess", "set_random_seed", "set_solver_count", "set_solver_rank",
           "solver_count", "solver_rank", "to_proto"]
