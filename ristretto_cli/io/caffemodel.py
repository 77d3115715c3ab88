"""Weights files: binary ``.caffemodel`` (a NetParameter) and HDF5 ``.caffemodel.h5``.

The kind is decided by content (the HDF5 signature), as Caffe does, not by the name.
Binary files go through the net upgrade chain (old V1 caffemodels become ``layer`` form);
HDF5 files become a NetParameter with one layer per ``/data/<layer>`` group whose blobs
carry ``shape.dim`` (and ``diff`` from ``/diff`` when present). Every blob's value count is
checked against its shape on load.
"""

from __future__ import annotations

import os

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.atomic import atomic_output, atomic_write_bytes
from ristretto_cli.io.blobproto import array_to_blob, check_blob
from ristretto_cli.io.files import (
    HDF5_SNAPSHOT_HINT,
    hdf5_file_signature,
    looks_like_text,
    parse_binary,
    read_bytes,
    serialize_binary,
)
from ristretto_cli.io.hdf5util import load_float_dataset, open_h5, require_h5py, save_float_dataset
from ristretto_cli.io.upgrade import upgrade_net
from ristretto_cli.proto import caffe_pb2

WEIGHTS = "caffemodel"
H5_WEIGHTS = "Caffe HDF5 weights file"


def check_net_blobs(net, path, what: str = WEIGHTS) -> None:
    """Every stored blob's data/diff count must match its shape."""
    for layer in list(net.layer) + list(net.layers):
        for i, bp in enumerate(layer.blobs):
            try:
                check_blob(bp)
            except RistrettoError as exc:
                raise RistrettoError(f"not a valid {what}: param {i}: {exc.message}",
                                     path=path, layer=layer.name) from None


def read_binary_net(data: bytes, path, what: str = WEIGHTS, *, upgrade: bool = True):
    """A binary NetParameter from bytes, upgraded (unless ``upgrade=False``) and checked."""
    if not data:
        raise RistrettoError(f"not a valid {what}: the file is empty", path=path)
    net = parse_binary(data, caffe_pb2.NetParameter(), path, what)
    if len(net.layer) == 0 and len(net.layers) == 0:
        hint = " (it looks like a text file)" if looks_like_text(data) else ""
        raise RistrettoError(f"not a valid {what}: it holds no layers{hint}", path=path)
    if upgrade:
        upgrade_net(net, path)
    check_net_blobs(net, path, what)
    return net


def read_weights(path):
    """A weights file as an upgraded NetParameter: binary caffemodel or HDF5 (by content).

    For HDF5 files the layer order is the file's link order (creation order when the file
    tracks it, as files written here do; else HDF5's name order, which is the order Caffe
    itself iterates). A dataset missing below a layer's highest index (a weight-shared
    parameter that Caffe does not store) becomes an empty BlobProto.
    """
    path = os.fspath(path)
    if hdf5_file_signature(path):
        return read_weights_h5(path)
    return read_binary_net(read_bytes(path), path, WEIGHTS)


def _param_index(name: str) -> int | None:
    return int(name) if name.isdigit() and (name == "0" or not name.startswith("0")) else None


def read_weights_h5(path):
    """HDF5 weights (``/data/<layer>/<i>``, optional ``/diff``) as a NetParameter."""
    h5py = require_h5py(path)
    with open_h5(path, H5_WEIGHTS) as f:
        data = f.get("data")
        if not isinstance(data, h5py.Group):
            raise RistrettoError(f"not a valid {H5_WEIGHTS}: it has no /data group", path=path)
        diff = f.get("diff")
        net = caffe_pb2.NetParameter()
        for name in data:
            group = data[name]
            where = f"/data/{name}"
            if not isinstance(group, h5py.Group):
                raise RistrettoError(f"not a valid {H5_WEIGHTS}: {where} is not a group", path=path)
            datasets = {}
            for key in group:
                index = _param_index(key)
                if index is None:
                    raise RistrettoError(f"not a valid {H5_WEIGHTS}: {where}/{key} is not a "
                                         "parameter dataset (names are 0, 1, ...)", path=path)
                datasets[index] = group[key]
            diff_group = diff.get(name) if isinstance(diff, h5py.Group) else None
            layer = net.layer.add()
            layer.name = name
            for i in range(max(datasets) + 1 if datasets else 0):
                if i not in datasets:
                    layer.blobs.add()
                    continue
                array = load_float_dataset(datasets[i], f"{where}/{i}", path, H5_WEIGHTS)
                grad = None
                if isinstance(diff_group, h5py.Group) and str(i) in diff_group:
                    grad = load_float_dataset(diff_group[str(i)], f"/diff/{name}/{i}", path,
                                              H5_WEIGHTS)
                    if grad.shape != array.shape:
                        raise RistrettoError(f"not a valid {H5_WEIGHTS}: /diff/{name}/{i} shape "
                                             f"{grad.shape} differs from {where}/{i} shape "
                                             f"{array.shape}", path=path)
                layer.blobs.append(array_to_blob(array, grad))
    return net


def write_caffemodel(path, net) -> None:
    """Write ``net`` as a binary caffemodel, atomically."""
    atomic_write_bytes(path, serialize_binary(net, path, WEIGHTS, hint=HDF5_SNAPSHOT_HINT))


def write_caffemodel_h5(path, layers) -> None:
    """Write HDF5 weights as Caffe's ``Net::ToHDF5`` does, atomically.

    ``layers``: list of ``(layer_name, [arrays], [diffs] or None)``; every layer gets a
    ``/data/<name>`` group (also layers without parameters), array ``i`` becomes dataset
    ``"i"`` (an array given as None -- a weight-shared parameter owned elsewhere -- is not
    written). When any layer has diffs, a ``/diff`` group holds a group per layer with the
    diffs given.
    """
    h5py = require_h5py(path)
    layers = list(layers)
    names = [name for name, _, _ in layers]
    for name in names:
        if not name or "/" in name or name == ".":
            raise RistrettoError(f"layer name {name!r} cannot be an HDF5 group name; "
                                 "write the binary caffemodel format instead", path=path)
    if len(set(names)) != len(names):
        raise RistrettoError("two layers have the same name; HDF5 weights need unique names",
                             path=path)
    with_diff = any(diffs is not None for _, _, diffs in layers)
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        data = f.create_group("data", track_order=True)
        diff = f.create_group("diff", track_order=True) if with_diff else None
        for name, arrays, diffs in layers:
            group = data.create_group(name)
            diff_group = diff.create_group(name) if diff is not None else None
            for i, array in enumerate(arrays):
                if array is not None:
                    save_float_dataset(group, str(i), array)
            if diff_group is not None and diffs is not None:
                for i, grad in enumerate(diffs):
                    if grad is not None:
                        save_float_dataset(diff_group, str(i), np.asarray(grad))
