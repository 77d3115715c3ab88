"""Snapshot files of a solver: ``<prefix>_iter_N.caffemodel[.h5]`` + ``.solverstate[.h5]``.

The state holds Caffe's fields (iter, learned_net, current_step, history) and, in the
``resume_state`` extension, what a bit-exact resume needs beyond them: the solver's seed and
the data cursors / generator states of every net (``Net.state_dict``), as JSON. Caffe ignores
the extension (an unknown protobuf field, an extra HDF5 dataset), so it still reads our files.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2

RESUME_FORMAT = 1
_H5_RESUME = "resume_state"


def snapshot_filename(prefix: str, it: int, extension: str) -> str:
    return f"{prefix}_iter_{it}{extension}"


def check_snapshot_prefix(prefix: str) -> None:
    """Fail before training when snapshots could not be written (Caffe probes with a file)."""
    from ristretto_cli.io import check_writable
    try:
        check_writable(snapshot_filename(prefix, 0, ".tempfile"))
    except RistrettoError as exc:
        raise RistrettoError(f"Cannot write to snapshot prefix '{prefix}': {exc.message}. Make "
                             "sure that the directory exists and is writeable.") from None


def h5_layers(net, with_diff: bool):
    """Per layer ``(name, arrays, diffs)`` for HDF5 weights: shared (non-owned) parameters
    have no data entry, as Caffe's Net::ToHDF5 writes; diffs are written for all."""
    arrays = [[] for _ in net.layers]
    diffs = [[] for _ in net.layers]
    for i, (layer_id, _) in enumerate(net.param_layer_indices):
        blob = net.params[i]
        arrays[layer_id].append(blob.data if net.param_owners[i] < 0 else None)
        diffs[layer_id].append(blob.diff)
    return [(name, arrays[k], diffs[k] if with_diff else None)
            for k, name in enumerate(net.layer_names)]


def write_model(net, prefix: str, it: int, fmt: int, with_diff: bool) -> str:
    from ristretto_cli.io import write_caffemodel, write_caffemodel_h5
    if fmt == caffe_pb2.SolverParameter.HDF5:
        path = snapshot_filename(prefix, it, ".caffemodel.h5")
        logger.info("Snapshotting to HDF5 file %s", path)
        write_caffemodel_h5(path, h5_layers(net, with_diff))
    else:
        path = snapshot_filename(prefix, it, ".caffemodel")
        logger.info("Snapshotting to binary proto file %s", path)
        write_caffemodel(path, net.to_proto(write_diff=with_diff))
    return path


def make_state(it: int, learned_net: str, current_step: int, history, resume: dict):
    from ristretto_cli.io import array_to_blob
    state = caffe_pb2.SolverState(iter=it, learned_net=learned_net, current_step=current_step)
    for h in history:
        state.history.append(array_to_blob(h))
    state.resume_state = json.dumps({"format": RESUME_FORMAT, **resume}).encode()
    return state


def write_state(state, prefix: str, fmt: int) -> str:
    from ristretto_cli.io import atomic_output, write_solverstate, write_solverstate_h5
    if fmt == caffe_pb2.SolverParameter.HDF5:
        path = snapshot_filename(prefix, state.iter, ".solverstate.h5")
        logger.info("Snapshotting solver state to HDF5 file %s", path)
        # Caffe's layout, plus the resume state as one more dataset; renamed into place
        # only when both are written.
        with atomic_output(path) as tmp:
            write_solverstate_h5(tmp, state)
            import h5py
            with h5py.File(tmp, "a") as f:
                if _H5_RESUME not in f:
                    f.create_dataset(_H5_RESUME, data=np.bytes_(state.resume_state))
    else:
        path = snapshot_filename(prefix, state.iter, ".solverstate")
        logger.info("Snapshotting solver state to binary proto file %s", path)
        write_solverstate(path, state)
    return path


def read_state(path: str):
    """The SolverState of ``path`` (HDF5 when the name ends with .h5), resume state included."""
    from ristretto_cli.io import read_solverstate
    state = read_solverstate(path)
    if path.endswith(".h5") and not state.HasField("resume_state"):
        import h5py
        with h5py.File(path, "r") as f:
            if _H5_RESUME in f:
                state.resume_state = bytes(np.asarray(f[_H5_RESUME][()]).reshape(-1)[0])
    return state


def resume_info(state, path: str) -> dict | None:
    """The decoded resume extension, or None for a state written by Caffe."""
    if not state.HasField("resume_state"):
        return None
    try:
        info = json.loads(state.resume_state.decode())
    except (UnicodeDecodeError, ValueError):
        raise RistrettoError("not a valid solver state: resume_state is not JSON", path=path) from None
    if not isinstance(info, dict) or info.get("format") != RESUME_FORMAT:
        raise RistrettoError(f"unsupported resume_state format {info.get('format')!r} "
                             "(written by a different version?)", path=path)
    return info


def learned_net_path(learned_net: str, state_path: str) -> str:
    """``learned_net`` as stored (relative to the working folder, as Caffe reads it), else the
    file of that name beside the state file (a run resumed from another folder)."""
    if os.path.exists(learned_net) or os.path.isabs(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(state_path), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise RistrettoError(f"the snapshot's weights file '{learned_net}' was not found (nor "
                         f"'{beside}')", path=state_path)


def restore_history(history: list[np.ndarray], state, path: str) -> None:
    """Copy the state's history blobs into the solver's (same count; same value count)."""
    from ristretto_cli.io import blob_to_array
    if len(state.history) != len(history):
        raise RistrettoError(f"Incorrect length of history blobs: the state has "
                             f"{len(state.history)}, this solver needs {len(history)} (a "
                             "different solver type or net?)", path=path)
    for i, (h, bp) in enumerate(zip(history, state.history)):
        values = blob_to_array(bp)
        if values.size != h.size:
            raise RistrettoError(f"history blob {i} has {values.size} values, the parameter "
                                 f"has {h.size}", path=path)
        h[...] = values.reshape(h.shape)
