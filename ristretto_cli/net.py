"""Net: builds a layer graph from a NetParameter and runs forward/backward, as Caffe's Net.

Construction follows Caffe step by step: filter layers by NetState, insert Split layers,
create each layer from the registry, connect blobs (in-place tops reuse the bottom blob),
set the layers up, register parameters (sharing by ParamSpec name), decide which layers
need backward, and collect the outputs (blobs nobody consumes, sorted by name).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.blob import Blob, shape_str
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.textformat import format_message
from ristretto_cli.layers import TEST, TRAIN, create_layer
from ristretto_cli.log import logger
from ristretto_cli.netstate import filter_net, insert_splits
from ristretto_cli.proto import caffe_pb2

SEMANTICS = ("ristretto", "caffe-cpu")


@dataclass
class LearnableParam:
    """A parameter blob the solver updates, with its multipliers (owners only)."""
    blob: Blob
    lr_mult: float
    decay_mult: float
    has_lr_mult: bool
    has_decay_mult: bool
    display_name: str


class Net:
    """A network built for one phase.

    ``param`` must already be upgraded (``ristretto_cli.io.read_net_param`` does that).
    ``phase``/``level``/``stages`` complete the net's own ``state`` as Caffe's tools do.
    ``semantics`` selects the Ristretto number-format rules ("ristretto" or "caffe-cpu").
    ``seed`` seeds every random draw of the net (dropout, fillers, stochastic rounding, data).
    """

    def __init__(self, param: caffe_pb2.NetParameter, phase: int | None = None, *,
                 level: int | None = None, stages=None, semantics: str = "ristretto",
                 seed: int | None = None, verbose: bool = False):
        if semantics not in SEMANTICS:
            raise RistrettoError(f"unknown semantics '{semantics}' (choose {' or '.join(SEMANTICS)})")
        self.semantics = semantics
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        say = logger.info if verbose else logger.debug

        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        if phase is not None:
            state.phase = phase
        if level is not None:
            state.level = level
        if stages:
            state.stage.extend(stages)
        self.state = state
        self.phase = state.phase
        self.name = param.name
        self.force_backward = param.force_backward

        filtered = filter_net(param, state, say)
        if verbose or logger.isEnabledFor(logging.DEBUG):      # the text costs: only when shown
            say("Initializing net from parameters: \n%s", format_message(filtered).rstrip("\n"))
        filtered = insert_splits(filtered)
        self.layers: list = []
        self.layer_names: list[str] = []
        self.bottom_vecs: list[list[Blob]] = []
        self.top_vecs: list[list[Blob]] = []
        self.bottom_need_backward: list[list[bool]] = []
        self.layer_need_backward: list[bool] = []
        self.blobs: dict[str, Blob] = {}
        #: Every top blob in creation order, with its loss weight, the anonymous tops of loss
        #: layers included as ``(automatic)`` (pycaffe's ``_blob_names`` lists them).
        self.blob_entries: list[tuple[str, Blob, float]] = []
        self.blob_loss_weights: dict[str, float] = {}
        self.input_names: list[str] = []
        self.params: list[Blob] = []              # every parameter blob, per layer in order
        self.param_owners: list[int] = []         # -1 for owners, else index into params
        self.param_layer_indices: list[tuple[int, int]] = []
        self.learnable_params: list[LearnableParam] = []
        self._learnable_index: list[int] = []     # params index -> learnable index
        self._param_names: dict[str, int] = {}
        self._blob_need_backward: dict[str, bool] = {}
        available: set[str] = set()

        memory_used = 0     # top elements so far, as Caffe's "Memory required for data"
        entry_of: dict[int, int] = {}       # id(blob) -> its index in blob_entries
        for layer_id, lp in enumerate(filtered.layer):
            if not lp.HasField("phase"):
                lp.phase = self.phase
            say("Creating layer %s", lp.name)      # Caffe's layer factory, then its net
            layer = create_layer(lp, phase=self.phase, semantics=semantics,
                                 rng=np.random.default_rng(self._rng.integers(2**63)))
            self.layers.append(layer)
            self.layer_names.append(lp.name)
            say("Creating Layer %s", lp.name)
            need_backward = False
            bottoms, bottom_need = [], []
            if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
                raise RistrettoError("propagate_down param must be specified either 0 or "
                                     "bottom_size times", layer=lp.name)
            for j, name in enumerate(lp.bottom):
                if name not in available:
                    raise RistrettoError(f"unknown bottom blob '{name}' (bottom index {j})", layer=lp.name)
                available.discard(name)
                say("%s <- %s", lp.name, name)
                blob_nb = self._blob_need_backward[name]
                bottom_need.append(bool(lp.propagate_down[j]) if len(lp.propagate_down) else blob_nb)
                need_backward |= blob_nb
                bottoms.append(self.blobs[name])
            tops, top_names = [], []
            for j, name in enumerate(lp.top):
                if j < len(lp.bottom) and name == lp.bottom[j]:
                    say("%s -> %s (in-place)", lp.name, name)
                    tops.append(self.blobs[name])
                elif name in self.blobs:
                    raise RistrettoError(f"top blob '{name}' produced by multiple sources", layer=lp.name)
                else:
                    say("%s -> %s", lp.name, name)
                    blob = Blob(name=name)
                    self.blobs[name] = blob
                    self._blob_need_backward[name] = False
                    tops.append(blob)
                    if lp.type == "Input":
                        self.input_names.append(name)
                available.add(name)
                top_names.append(name)
            if layer.is_loss:
                while len(tops) < layer.required_tops():
                    tops.append(Blob(name="(automatic)"))
                    top_names.append(None)
            if layer.creates_inner_layer:
                say("Creating layer %s", lp.name)
            try:
                layer.setup(bottoms, tops)
            except RistrettoError as exc:
                raise exc.located(layer=lp.name) from None
            say("Setting up %s", lp.name)
            for j, (t, name, w) in enumerate(zip(tops, top_names, layer.loss_weights)):
                say("Top shape: %s", shape_str(t.shape))
                if w:
                    say("    with loss weight %g", w)
                memory_used += t.count
                if name is not None:
                    self.blob_loss_weights[name] = w
                if j < len(bottoms) and t is bottoms[j]:     # in place: the blob's own entry
                    self.blob_entries[entry_of[id(t)]] = (t.name, t, float(w))
                else:
                    entry_of[id(t)] = len(self.blob_entries)
                    self.blob_entries.append((t.name, t, float(w)))
            say("Memory required for data: %d", memory_used * np.dtype(np.float32).itemsize)
            self.bottom_vecs.append(bottoms)
            self.top_vecs.append(tops)
            self.bottom_need_backward.append(bottom_need)

            num_params = len(layer.blobs)
            if len(lp.param) > num_params:
                raise RistrettoError("too many params specified for layer", layer=lp.name)
            layer.param_propagate_down = []
            for p in range(num_params):
                # The prototxt's specs, as Caffe reads them here: a layer's own additions
                # (BatchNorm's lr_mult 0) only count for the updates (_append_param).
                spec = lp.param[p] if p < len(lp.param) else caffe_pb2.ParamSpec()
                layer.param_propagate_down.append(spec.lr_mult != 0)
                need_backward |= spec.lr_mult != 0
            for p in range(num_params):
                self._append_param(layer_id, p)
            self.layer_need_backward.append(need_backward)
            if need_backward:
                for name in top_names:
                    if name is not None:
                        self._blob_need_backward[name] = True

        self._analyse_backward(say)
        self._fused_relus = self._find_fused_relus()
        self._gated_relus = self._find_gated_relus()
        #: Functions of a layer index run around each layer's forward and backward, as Caffe's
        #: Net callbacks (``before_forward``, ``after_forward``, ``before_backward``,
        #: ``after_backward``). While any is set, no ReLU runs inside its neighbour, so each
        #: layer's pass is seen on its own.
        self.callbacks: dict[str, list] = {k: [] for k in (
            "before_forward", "after_forward", "before_backward", "after_backward")}
        self._alias_concat_bottoms()
        if self.force_backward:
            for i, layer in enumerate(self.layers):
                self.layer_need_backward[i] = True
                for j, blob in enumerate(self.bottom_vecs[i]):
                    self.bottom_need_backward[i][j] |= layer.allow_force_backward(j)
                    self._blob_need_backward[blob.name] = (self._blob_need_backward.get(blob.name, False)
                                                           or self.bottom_need_backward[i][j])
                layer.param_propagate_down = [True] * len(layer.blobs)
        for layer, need in zip(self.layers, self.layer_need_backward):
            layer.backward_state_needed = need
        self.output_names = sorted(available)
        for name in self.output_names:
            say("This network produces output %s", name)
        self._share_weights()
        say("Network initialization done.")

    # ------------------------------------------------------------ construction helpers
    def _append_param(self, layer_id: int, param_id: int) -> None:
        layer = self.layers[layer_id]
        lp = layer.param
        spec = lp.param[param_id] if param_id < len(lp.param) else caffe_pb2.ParamSpec()
        name = spec.name
        net_param_id = len(self.params)
        self.params.append(layer.blobs[param_id])
        self.param_layer_indices.append((layer_id, param_id))
        if not name or name not in self._param_names:
            self.param_owners.append(-1)
            if name:
                self._param_names[name] = net_param_id
            self._learnable_index.append(len(self.learnable_params))
            self.learnable_params.append(LearnableParam(
                layer.blobs[param_id], spec.lr_mult, spec.decay_mult, spec.HasField("lr_mult"),
                spec.HasField("decay_mult"), name or f"{layer.name}[{param_id}]"))
            return
        owner_id = self._param_names[name]
        self.param_owners.append(owner_id)
        owner_layer, owner_param = self.param_layer_indices[owner_id]
        owner_blob = self.layers[owner_layer].blobs[owner_param]
        this_blob = layer.blobs[param_id]
        owner_name = self.layers[owner_layer].name
        if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
            if owner_blob.count != this_blob.count:
                raise RistrettoError(
                    f"cannot share param '{name}' owned by layer '{owner_name}'; count mismatch: "
                    f"owner shape {shape_str(owner_blob.shape)}, sharing shape {shape_str(this_blob.shape)}",
                    layer=layer.name)
        elif owner_blob.shape != this_blob.shape:
            raise RistrettoError(
                f"cannot share param '{name}' owned by layer '{owner_name}'; shape mismatch: "
                f"owner shape {shape_str(owner_blob.shape)}, sharing shape {shape_str(this_blob.shape)}",
                layer=layer.name)
        learnable_id = self._learnable_index[owner_id]
        self._learnable_index.append(learnable_id)
        owner = self.learnable_params[learnable_id]
        if spec.HasField("lr_mult"):
            if owner.has_lr_mult and owner.lr_mult != spec.lr_mult:
                raise RistrettoError(f"shared param '{name}' has mismatched lr_mult", layer=layer.name)
            owner.has_lr_mult, owner.lr_mult = True, spec.lr_mult
        if spec.HasField("decay_mult"):
            if owner.has_decay_mult and owner.decay_mult != spec.decay_mult:
                raise RistrettoError(f"shared param '{name}' has mismatched decay_mult", layer=layer.name)
            owner.has_decay_mult, owner.decay_mult = True, spec.decay_mult

    def _share_weights(self) -> None:
        """Sharers use the owner's arrays: same data and diff memory (views if shapes differ)."""
        for i, owner_id in enumerate(self.param_owners):
            if owner_id < 0:
                continue
            layer_id, param_id = self.param_layer_indices[i]
            owner_blob = self.params[owner_id]
            this_blob = self.params[i]
            if this_blob.shape == owner_blob.shape:
                shared = owner_blob
            else:  # PERMISSIVE sharing with equal counts: a reshaped alias
                shared = Blob(name=this_blob.name, data=owner_blob.data.reshape(this_blob.shape))
                shared.diff = owner_blob.diff.reshape(this_blob.shape)
            self.layers[layer_id].blobs[param_id] = shared
            self.params[i] = shared

    def _analyse_backward(self, say) -> None:
        under_loss: set[str] = set()
        skip_backprop: set[str] = set()
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            contributes = False
            skip = True
            for t, w in zip(self.top_vecs[i], layer.loss_weights):
                if w != 0 or t.name in under_loss:
                    contributes = True
                if t.name not in skip_backprop:
                    skip = False
                if contributes and not skip:
                    break
            if self.layer_need_backward[i] and skip:
                self.layer_need_backward[i] = False
                self.bottom_need_backward[i] = [False] * len(self.bottom_vecs[i])
            if not contributes:
                self.layer_need_backward[i] = False
            say("%s %s backward computation.", self.layer_names[i],
                "needs" if self.layer_need_backward[i] else "does not need")
            for j, b in enumerate(self.bottom_vecs[i]):
                if contributes:
                    under_loss.add(b.name)
                else:
                    self.bottom_need_backward[i][j] = False
                if not self.bottom_need_backward[i][j]:
                    skip_backprop.add(b.name)

    def _alias_concat_bottoms(self) -> None:
        """Lets a Concat's bottoms become views of its top, so that their producers write
        their values in place and the Concat copies nothing (SqueezeNet's fire modules): for
        each bottom that only layers writing their tops in place write, all before the Concat,
        whose array no other blob holds, that the Concat takes once, and that nothing after
        the Concat writes, the top included. Only the values are shared; the gradients stay
        apart as in Caffe. The Concat checks the view on every pass and copies otherwise. None
        in a net with a layer that changes its bottoms (Ristretto's input trimming would reach
        the Concat's bottoms through its top, and any view or Split of it)."""
        if any(layer.writes_bottoms for layer in self.layers):
            return
        writers: dict[int, list[int]] = {}
        for j, tops in enumerate(self.top_vecs):
            for t in tops:
                writers.setdefault(id(t), []).append(j)
        arrays: dict[int, int] = {}
        for blob in {id(b): b for b in self.blobs.values()}.values():
            arrays[id(blob.data)] = arrays.get(id(blob.data), 0) + 1
        aliased: set[int] = set()
        for i, layer in enumerate(self.layers):
            bottoms = self.bottom_vecs[i]
            if layer.type != "Concat" or len(bottoms) < 2:
                continue
            top_written_later = any(j > i for j in writers.get(id(self.top_vecs[i][0]), []))
            flags = []
            for b in bottoms:
                by = writers.get(id(b), [])
                ok = (not top_written_later and by and all(j < i for j in by)
                      and all(self.layers[j].writes_top_in_place for j in by)
                      and sum(x is b for x in bottoms) == 1 and arrays.get(id(b.data)) == 1
                      and id(b) not in aliased)
                if ok:
                    aliased.add(id(b))
                flags.append(bool(ok))
            layer.alias_bottoms = tuple(flags)

    def _find_fused_relus(self) -> set[int]:
        """Indices of the in-place ReLUs (negative_slope 0) that the layer just before them
        applies while computing its top, chunk by chunk in cache, instead of a whole pass of
        their own: where that layer supports it and has this one top, and neither adds to the
        loss (nothing then reads the top between the two). Same values either way."""
        fused = set()
        for i in range(1, len(self.layers)):
            layer, before = self.layers[i], self.layers[i - 1]
            top = self.top_vecs[i - 1]
            if (before.fuses_relu and layer.type == "ReLU" and len(top) == 1
                    and layer.param.relu_param.negative_slope == 0
                    and len(self.bottom_vecs[i]) == len(self.top_vecs[i]) == 1
                    and self.bottom_vecs[i][0] is top[0] and self.top_vecs[i][0] is top[0]
                    and not any(before.loss_weights) and not any(layer.loss_weights)):
                fused.add(i)
        return fused

    def _find_gated_relus(self) -> dict[int, tuple[tuple[int, int], ...]]:
        """Per layer, ``(bottom index, ReLU index)`` for the in-place ReLUs (negative_slope 0)
        whose backward that layer can run while it writes the bottom's gradient: the ReLU's
        blob has that layer as its only reader after it, nothing later writes the blob, and
        neither layer adds to the loss. Between the two backward passes nothing else then
        reads or writes the blob's gradient, so the values are the same either way."""
        gated: dict[int, list[tuple[int, int]]] = {}
        for r, relu in enumerate(self.layers):
            if (relu.type != "ReLU" or relu.param.relu_param.negative_slope != 0
                    or len(self.bottom_vecs[r]) != 1 or len(self.top_vecs[r]) != 1
                    or self.bottom_vecs[r][0] is not self.top_vecs[r][0] or any(relu.loss_weights)):
                continue
            blob = self.top_vecs[r][0]
            readers = [(i, j) for i in range(r + 1, len(self.layers))
                       for j, b in enumerate(self.bottom_vecs[i]) if b is blob]
            written = any(t is blob for i in range(r + 1, len(self.layers)) for t in self.top_vecs[i])
            if len(readers) != 1 or written:
                continue
            i, j = readers[0]
            if self.layers[i].gates_relu and not any(self.layers[i].loss_weights):
                gated.setdefault(i, []).append((j, r))
        return {i: tuple(pairs) for i, pairs in gated.items()}

    # ------------------------------------------------------------------ running
    def forward(self, start: int = 0, end: int | None = None) -> np.float32:
        """Run layers ``start..end`` (inclusive); returns the summed weighted loss (float32).
        A fused ReLU runs inside the layer before it when both are in the range."""
        end = len(self.layers) - 1 if end is None else end
        loss = np.float32(0)
        before, after = self.callbacks["before_forward"], self.callbacks["after_forward"]
        fused = self._fused_relus if not (before or after) else ()
        applied = False                         # the layer before applied this one's ReLU
        with parallel.blas_single_threaded():   # the engine's threads share the work
            for i in range(start, end + 1):
                if applied:
                    applied = False
                    continue
                for run in before:
                    run(i)
                layer = self.layers[i]
                layer.rectify_top = i + 1 in fused and i + 1 <= end
                layer.rectified_top = False
                try:
                    loss += layer.forward(self.bottom_vecs[i], self.top_vecs[i])
                finally:
                    layer.rectify_top = False
                applied = layer.rectified_top
                for run in after:
                    run(i)
        return loss

    def backward(self, start: int | None = None, end: int = 0) -> None:
        """Run the backward passes of layers ``start`` down to ``end`` (inclusive). A gated
        ReLU's backward runs inside the layer that reads its blob when both are in the range
        and both pass a gradient to that blob."""
        start = len(self.layers) - 1 if start is None else start
        before, after = self.callbacks["before_backward"], self.callbacks["after_backward"]
        gated = self._gated_relus if not (before or after) else {}
        done = set()                            # ReLUs whose backward a later layer ran
        with parallel.blas_single_threaded():
            for i in range(start, end - 1, -1):
                for run in before:              # every layer, as Caffe's BackwardFromTo
                    run(i)
                if self.layer_need_backward[i] and i not in done:
                    self._backward_layer(i, end, gated, done)
                for run in after:
                    run(i)

    def _backward_layer(self, i: int, end: int, gated: dict, done: set) -> None:
        """Layer ``i``'s backward, with the backward of the ReLUs in ``gated`` that read its
        bottoms (added to ``done``) where both are in the range."""
        layer, need = self.layers[i], self.bottom_need_backward[i]
        pairs = [(j, r) for j, r in gated.get(i, ())
                 if r >= end and need[j] and self.layer_need_backward[r]
                 and self.bottom_need_backward[r][0]]
        flags = {j for j, _ in pairs}
        layer.gate_bottoms = tuple(j in flags for j in range(len(need))) if pairs else ()
        layer.gated_bottoms = False
        try:
            layer.backward(self.top_vecs[i], need, self.bottom_vecs[i])
        finally:
            layer.gate_bottoms = ()
        if pairs and layer.gated_bottoms:
            done.update(r for _, r in pairs)

    def forward_backward(self) -> np.float32:
        loss = self.forward()
        self.backward()
        return loss

    @contextmanager
    def frozen_params(self):
        """A stretch of forward passes only (scoring). Parameter arrays are read-only: a write
        raises instead of going unnoticed, so layers may keep what they derive from the
        weights (Ristretto's trimmed copies) without comparing them again on every pass; and
        layers skip state that only a backward pass uses (max pooling's winners). Layers
        whose forward updates their own blobs (BatchNorm) keep writable blobs."""
        token = object()
        flipped = []
        needed = [layer.backward_state_needed for layer in self.layers]
        try:
            for layer in self.layers:
                layer.backward_state_needed = False
            for layer in self.layers:
                if not layer.blobs or layer.writes_blobs_in_forward:
                    continue
                mine = True       # a blob someone else made read-only could change when they
                for blob in layer.blobs:  # make it writable again: no token for that layer
                    if blob.data.flags.writeable:
                        blob.data.flags.writeable = False
                        flipped.append(blob.data)
                    else:
                        mine = mine and any(blob.data is a for a in flipped)
                if mine:
                    layer.frozen_params = token
            yield self
        finally:
            for layer, need in zip(self.layers, needed):
                layer.backward_state_needed = need
                if layer.frozen_params is token:
                    layer.frozen_params = None
            for a in flipped:
                a.flags.writeable = True

    def reshape(self) -> None:
        for i, layer in enumerate(self.layers):
            layer.reshape(self.bottom_vecs[i], self.top_vecs[i])

    def clear_param_diffs(self) -> None:
        for p in self.learnable_params:
            p.blob.diff[...] = 0

    # --------------------------------------------------------------- inspection
    def layer_by_name(self, name: str):
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    @property
    def input_blobs(self) -> list[Blob]:
        return [self.blobs[n] for n in self.input_names]

    @property
    def output_blobs(self) -> list[Blob]:
        return [self.blobs[n] for n in self.output_names]

    def reseed(self, *key: int) -> None:
        """Give every layer a fresh generator derived from ``key`` (and its position).

        The solver calls this per iteration so that a resumed run draws exactly what an
        uninterrupted one would.
        """
        for i, layer in enumerate(self.layers):
            layer.rng = np.random.default_rng([*key, i])

    def state_dict(self) -> dict:
        """Per-layer resumable state (data cursors, generators), keyed by layer name."""
        out = {}
        for layer in self.layers:
            state = layer.state_dict()
            if state is not None:
                out[layer.name] = state
        return out

    def load_state_dict(self, state: dict) -> None:
        for layer in self.layers:
            if layer.name in state:
                layer.load_state_dict(state[layer.name])

    # ------------------------------------------------------------------ weights
    def copy_trained_layers_from(self, source: caffe_pb2.NetParameter, path: str | None = None, *,
                                 hdf5: bool | None = None) -> None:
        """Load parameter blobs by layer name, as Caffe's CopyTrainedLayersFrom: a repeated name
        takes the first such layer, or the last for HDF5 weights. As there, only HDF5 weights
        (``hdf5``; by default read off ``path``'s content) may leave out a parameter the net
        shares with another layer; a binary file has every blob."""
        from ristretto_cli.io.blobproto import blob_shape, blob_to_array, shape_equals
        from ristretto_cli.io.files import hdf5_file_signature
        if hdf5 is None:
            hdf5 = path is not None and hdf5_file_signature(path)
        shared = ({self.param_layer_indices[i] for i, owner in enumerate(self.param_owners) if owner >= 0}
                  if hdf5 else set())
        for src in source.layer:
            # Caffe's binary loader takes the first layer of that name, its HDF5 loader the last.
            ids = [i for i, n in enumerate(self.layer_names) if n == src.name]
            if not ids:
                logger.info("Ignoring source layer %s", src.name)
                continue
            target_id = ids[-1] if hdf5 else ids[0]
            target = self.layers[target_id]
            # HDF5 weights omit parameters a layer shares with another (Caffe allows that).
            placeholders = {i for i in range(len(target.blobs)) if (target_id, i) in shared and (
                i >= len(src.blobs) or (not len(src.blobs[i].data) and not src.blobs[i].HasField("shape")))}
            if len(src.blobs) > len(target.blobs) or any(
                    i not in placeholders for i in range(len(src.blobs), len(target.blobs))):
                raise RistrettoError(
                    f"incompatible number of blobs: the weights file has {len(src.blobs)}, "
                    f"the net has {len(target.blobs)}", path=path, layer=src.name)
            for i, (bp, blob) in enumerate(zip(src.blobs, target.blobs)):
                if i in placeholders:
                    continue
                if not shape_equals(bp, blob.shape):
                    raise RistrettoError(
                        f"cannot copy param {i} weights: shape mismatch; the weights file has "
                        f"{shape_str(blob_shape(bp))}, the net expects {shape_str(blob.shape)}",
                        path=path, layer=src.name)
                blob.data[...] = blob_to_array(bp).reshape(blob.shape)

    def share_trained_layers_with(self, other: Net) -> None:
        """Use ``other``'s parameter arrays for layers of the same name (test nets share the
        train net's weights this way)."""
        for layer in other.layers:
            target = self.layer_by_name(layer.name)
            if target is None or not layer.blobs:
                continue
            if len(target.blobs) != len(layer.blobs):
                raise RistrettoError("incompatible number of blobs", layer=layer.name)
            for i, blob in enumerate(layer.blobs):
                if target.blobs[i].shape != blob.shape:
                    raise RistrettoError(
                        f"cannot share param {i}: shape mismatch ({shape_str(blob.shape)} vs "
                        f"{shape_str(target.blobs[i].shape)})", layer=layer.name)
                target.blobs[i].data = blob.data

    def to_proto(self, write_diff: bool = False) -> caffe_pb2.NetParameter:
        """The net as a caffemodel NetParameter: every layer's parameter copy plus its blobs."""
        from ristretto_cli.io.blobproto import array_to_blob
        out = caffe_pb2.NetParameter(name=self.name)
        for layer in self.layers:
            lp = out.layer.add()
            lp.CopyFrom(layer.param)
            del lp.blobs[:]
            for blob in layer.blobs:
                lp.blobs.add().CopyFrom(array_to_blob(blob.data, blob.diff if write_diff else None))
        return out

    def __repr__(self) -> str:
        phase = "TRAIN" if self.phase == TRAIN else "TEST"
        return f"<Net {self.name!r} phase={phase} layers={len(self.layers)}>"


__all__ = ["Net", "LearnableParam", "SEMANTICS", "TRAIN", "TEST"]
