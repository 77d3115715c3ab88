"""Solver snapshots: binary ``.solverstate`` (a SolverState) and HDF5 ``.solverstate.h5``."""

from __future__ import annotations

import os

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.atomic import atomic_output, atomic_write_bytes
from ristretto_cli.io.blobproto import array_to_blob, blob_to_array, check_blob
from ristretto_cli.io.files import HDF5_SNAPSHOT_HINT, parse_binary, read_bytes, serialize_binary
from ristretto_cli.io.hdf5util import (
    load_float_dataset,
    load_int,
    load_string,
    open_h5,
    require_h5py,
    save_float_dataset,
    save_int,
    save_string,
)
from ristretto_cli.proto import caffe_pb2

WHAT = "solver state"
H5_WHAT = "HDF5 solver state"


def read_solverstate(path):
    """A SolverState: HDF5 when the name ends with ``.h5`` (as Caffe decides), else binary."""
    path = os.fspath(path)
    if path.endswith(".h5"):
        return read_solverstate_h5(path)
    data = read_bytes(path)
    if not data:
        raise RistrettoError(f"not a valid {WHAT}: the file is empty", path=path)
    state = parse_binary(data, caffe_pb2.SolverState(), path, WHAT)
    for i, bp in enumerate(state.history):
        try:
            check_blob(bp)
        except RistrettoError as exc:
            raise RistrettoError(f"not a valid {WHAT}: history blob {i}: {exc.message}",
                                 path=path) from None
    return state


def read_solverstate_h5(path):
    """Datasets iter / learned_net (optional) / current_step / history/0..N-1 as a SolverState."""
    h5py = require_h5py(path)
    with open_h5(path, H5_WHAT) as f:
        state = caffe_pb2.SolverState()
        state.iter = load_int(f, "iter", path, H5_WHAT)
        if "learned_net" in f:
            state.learned_net = load_string(f, "learned_net", path, H5_WHAT)
        state.current_step = load_int(f, "current_step", path, H5_WHAT)
        history = f.get("history")
        if not isinstance(history, h5py.Group):
            raise RistrettoError(f"not a valid {H5_WHAT}: it has no history group", path=path)
        names = set(history)
        expected = {str(i) for i in range(len(names))}
        if names != expected:
            raise RistrettoError(f"not a valid {H5_WHAT}: history datasets must be named 0.."
                                 f"{len(names) - 1}, found {sorted(names)}", path=path)
        for i in range(len(names)):
            array = load_float_dataset(history[str(i)], f"history/{i}", path, H5_WHAT)
            state.history.append(array_to_blob(array))
    return state


def write_solverstate(path, state) -> None:
    """Write a SolverState as binary protobuf, atomically."""
    atomic_write_bytes(path, serialize_binary(state, path, WHAT, hint=HDF5_SNAPSHOT_HINT))


def write_solverstate_h5(path, state) -> None:
    """Write a SolverState in Caffe's HDF5 layout, atomically."""
    h5py = require_h5py(path)
    arrays = [blob_to_array(bp) for bp in state.history]
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        save_int(f, "iter", state.iter)
        if state.HasField("learned_net"):
            save_string(f, "learned_net", state.learned_net)
        save_int(f, "current_step", state.current_step)
        history = f.create_group("history", track_order=True)
        for i, array in enumerate(arrays):
            save_float_dataset(history, str(i), array)
