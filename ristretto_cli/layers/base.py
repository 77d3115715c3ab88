"""The Layer base class: blob-count checks, setup/reshape/forward/backward, loss weights.

A layer type is a subclass registered under its prototxt ``type`` string (see
``ristretto_cli.layers.registry``). The life cycle follows Caffe's:

* ``__init__``: copy the LayerParameter; load parameter blobs given in it (``blobs``).
* ``setup(bottom, top)``: check blob counts, ``layer_setup`` (read parameters, create
  parameter blobs with fillers), ``reshape``, then record the loss weights of the tops.
* ``forward(bottom, top)``: ``reshape`` then ``forward_cpu``; returns the weighted loss.
* ``backward(top, propagate_down, bottom)``: ``backward_cpu`` writes bottom diffs (overwrite)
  and *accumulates* into parameter diffs (``blob.diff += ...``), as Caffe does.

Arithmetic follows the dtype of the bottom data (float32 in nets; float64 in gradient
tests), so layer code never hard-codes float32 for computed values.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.blob import Blob
from ristretto_cli.errors import OutOfMemoryError, RistrettoError
from ristretto_cli.proto import caffe_pb2

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST


class Layer:
    #: prototxt type string; set by ``registry.register``.
    type: ClassVar[str] = ""
    # Blob-count constraints (None = unconstrained), checked in setup like Caffe's CheckBlobCounts.
    exact_bottoms: ClassVar[int | None] = None
    min_bottoms: ClassVar[int | None] = None
    max_bottoms: ClassVar[int | None] = None
    exact_tops: ClassVar[int | None] = None
    min_tops: ClassVar[int | None] = None
    max_tops: ClassVar[int | None] = None
    equal_bottom_top: ClassVar[bool] = False
    #: Loss layers: missing tops are added anonymously and top 0 defaults to loss weight 1.
    is_loss: ClassVar[bool] = False
    #: Layers that may not run in place (top i == bottom i).
    inplace_allowed: ClassVar[bool] = True
    #: Layers whose Caffe set-up builds an inner layer through the layer factory (a Softmax),
    #: which logs "Creating layer <name>" once more: the Net logs it at the same place.
    creates_inner_layer: ClassVar[bool] = False
    #: False for layers with no backward (Caffe aborts if the net needs it).
    has_backward: ClassVar[bool] = True
    #: False when no backward pass will follow the forwards (set by the Net from its
    #: backward analysis, and while scoring): layers may then skip what only backward uses.
    backward_state_needed: bool = True
    #: Layers whose forward writes their own blobs (BatchNorm's running averages): never frozen.
    writes_blobs_in_forward: ClassVar[bool] = False
    #: While ``Net.frozen_params()`` holds the blobs read-only: a token unique to that stretch,
    #: so a layer may keep what it derived from them instead of re-checking every pass.
    frozen_params: object | None = None

    #: True where ``forward_cpu`` writes its tops' values into the arrays the tops hold,
    #: whatever their strides, and never rebinds them: a Concat may then let such a top be a
    #: view of its own top, so that its values land there directly (see ``Net``).
    writes_top_in_place: ClassVar[bool] = False
    #: True where ``forward_cpu`` may change its bottoms' values (Ristretto's layers trim their
    #: inputs in place in TEST): a net with such a layer keeps every Concat's bottoms apart.
    writes_bottoms: ClassVar[bool] = False

    #: True where ``forward_cpu`` can rectify its single top while computing it: asked to by
    #: the net's ``rectify_top`` for a pass (see ``Net``'s ReLU fusion), it sets
    #: ``rectified_top`` once it did, else the net runs the ReLU itself.
    fuses_relu = False
    rectify_top = False
    rectified_top = False

    #: True where ``backward_cpu`` can pass a bottom's gradient through the in-place ReLU
    #: that produced the bottom while writing it (``neuron.gate_gradient``, in cache): asked
    #: to by the net's ``gate_bottoms`` (one flag per bottom) for a pass, it sets
    #: ``gated_bottoms`` once it did so for every flagged bottom, else the net runs the
    #: ReLU's backward itself (see ``Net``'s ReLU fusion).
    gates_relu = False
    gate_bottoms: tuple[bool, ...] = ()
    gated_bottoms = False

    def gates(self, index: int) -> bool:
        """Whether this pass gates bottom ``index``'s gradient (see ``gates_relu``)."""
        return index < len(self.gate_bottoms) and self.gate_bottoms[index]

    def __init__(self, param: caffe_pb2.LayerParameter, *, phase: int = TEST,
                 rng: np.random.Generator | None = None, semantics: str = "ristretto"):
        self.param = caffe_pb2.LayerParameter()
        self.param.CopyFrom(param)
        self.name = param.name
        self.phase = param.phase if param.HasField("phase") else phase
        self.rng = rng if rng is not None else np.random.default_rng()
        self.semantics = semantics
        self.blobs: list[Blob] = []
        self.loss_weights: list[float] = []
        #: per parameter blob: compute its gradient in backward (set by the Net)
        self.param_propagate_down: list[bool] = []
        if len(param.blobs):
            from ristretto_cli.io.blobproto import blob_to_array
            self.blobs = [Blob(data=blob_to_array(bp)) for bp in param.blobs]
            del self.param.blobs[:]

    # ----------------------------------------------------------------- life cycle
    @contextlib.contextmanager
    def _located(self):
        """Errors raised inside name this layer (a cause, such as a Python layer's own
        error, is kept). Running out of memory is one of them: an input or num_output far
        too large is a bad file like any other, and gets one line, not a traceback."""
        try:
            yield
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from exc.__cause__
        except MemoryError as exc:
            raise OutOfMemoryError(f"out of memory: {exc}", layer=self.name) from exc

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        with self._located():
            self._setup(bottom, top)

    def _setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        self.check_blob_counts(bottom, top)
        if not self.inplace_allowed:
            for b, t in zip(bottom, top):
                if b is t:
                    raise self.error(f"{self.type} layer does not allow in-place computation")
        self.layer_setup(bottom, top)
        self.reshape(bottom, top)
        if self.is_loss and not len(self.param.loss_weight):
            self.param.loss_weight.append(1.0)  # Caffe's LossLayer default, kept in the param copy
        self.set_loss_weights(top)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Read parameters, create parameter blobs. Runs once."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError

    def forward(self, bottom: list[Blob], top: list[Blob]) -> np.float32:
        """Reshape, compute, and return this layer's weighted loss (float32, as Caffe sums it)."""
        with self._located():
            self.reshape(bottom, top)
            with parallel.blas_single_threaded():
                self.forward_cpu(bottom, top)
        loss = np.float32(0)
        for t, w in zip(top, self.loss_weights):
            if w != 0:
                if not t.has_diff:      # a new shape dropped the weight the top's diff carries
                    t.diff[...] = w
                loss += np.float32(w) * np.float32(t.data.sum())
        return loss

    def forward_cpu(self, bottom: list[Blob], top: list[Blob]) -> None:
        raise NotImplementedError

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        if not self.has_backward:
            raise self.error(f"{self.type} layer has no backward pass, but the net needs one")
        with self._located(), parallel.blas_single_threaded():
            self.backward_cpu(top, propagate_down, bottom)

    def backward_cpu(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        raise self.error(f"{self.type} layer has no backward pass, but the net needs one")

    def allow_force_backward(self, bottom_index: int) -> bool:
        """Whether force_backward may propagate into this bottom (not into loss labels)."""
        return not (self.is_loss and bottom_index == 1)

    # ----------------------------------------------------------------- resumable state
    def state_dict(self) -> dict | None:
        """JSON-serialisable state beyond the parameter blobs that an exact resume needs
        (a data cursor, a generator's state); None when the layer has none."""
        return None

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""

    # ----------------------------------------------------------------- helpers
    def error(self, message: str) -> RistrettoError:
        return RistrettoError(message, layer=self.name)

    def check_blob_counts(self, bottom: list[Blob], top: list[Blob]) -> None:
        nb, nt = len(bottom), len(top)

        def check(n, exact, lo, hi, what):
            if exact is not None and n != exact:
                raise self.error(f"{self.type} layer takes {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"{self.type} layer takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"{self.type} layer takes at most {hi} {what} blob(s), got {n}")

        check(nb, self.exact_bottoms, self.min_bottoms, self.max_bottoms, "bottom")
        check(nt, self.exact_tops, self.min_tops, self.max_tops, "top")
        if self.equal_bottom_top and nb != nt:
            raise self.error(f"{self.type} layer needs as many top as bottom blobs ({nb} vs {nt})")

    def required_tops(self) -> int:
        """How many tops the layer must have (for anonymous loss tops)."""
        return self.exact_tops if self.exact_tops is not None else (self.min_tops or 0)

    def set_loss_weights(self, top: list[Blob]) -> None:
        weights = list(self.param.loss_weight)
        if weights and len(weights) != len(top):
            raise self.error("loss_weight must be unspecified or specified once per top blob")
        self.loss_weights = weights + [0.0] * (len(top) - len(weights))
        for t, w in zip(top, self.loss_weights):
            if w != 0:
                t.diff[...] = w

    def add_param_blob(self, shape, filler: caffe_pb2.FillerParameter | None,
                       default_filler: str = "constant", default_value: float = 0.0) -> Blob:
        """Create a parameter blob filled by ``filler`` (or the default filler)."""
        from ristretto_cli.fillers import fill
        if filler is None:
            filler = caffe_pb2.FillerParameter(type=default_filler, value=default_value)
        blob = Blob(data=fill(filler, tuple(shape), self.rng))
        self.blobs.append(blob)
        return blob

    def check_param_shapes(self, expected: list[tuple[int, ...]]) -> bool:
        """When blobs came with the LayerParameter: verify their shapes (Caffe aborts).

        Returns True when parameter blobs already exist (setup skips the fillers).
        """
        if not self.blobs:
            return False
        if len(self.blobs) != len(expected):
            raise self.error(f"incorrect number of parameter blobs: expected {len(expected)}, "
                             f"got {len(self.blobs)}")
        for i, (blob, shape) in enumerate(zip(self.blobs, expected)):
            if blob.shape != tuple(shape):
                raise self.error(f"incorrect shape of parameter blob {i}: expected "
                                 f"{tuple(shape)}, got {blob.shape}")
        return True

    def __repr__(self) -> str:
        return f"<{self.type} layer {self.name!r}>"
