"""Net and solver definitions: reading (text, or binary for nets) with upgrades, writing text."""

from __future__ import annotations

import os

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.atomic import atomic_write_text
from ristretto_cli.io.caffemodel import check_net_blobs, read_binary_net, read_weights_h5
from ristretto_cli.io.files import decode_text, is_hdf5, looks_like_text, read_bytes
from ristretto_cli.io.textformat import format_message, parse_text
from ristretto_cli.io.upgrade import upgrade_net, upgrade_solver
from ristretto_cli.proto import caffe_pb2

NET = "NetParameter"


def _decode_text(data: bytes, path, kind: str) -> str:
    if not data.strip():
        raise RistrettoError(f"cannot parse {kind}: the file is empty", path=path)
    if not looks_like_text(data):
        raise RistrettoError(f"cannot parse {kind}: not a text file (binary content)", path=path)
    return decode_text(data)


def read_net_param(path, *, upgrade: bool = True):
    """A net definition as a NetParameter: protobuf text, or binary when the bytes are not
    text (or HDF5 weights); upgraded to the current format unless ``upgrade=False``.

    Text is recognised by the absence of control bytes other than whitespace: a binary net
    with layers always holds some (the tag of ``layer`` is A2 06, of ``layers`` 12), and a
    text file never does, so text errors are reported as such, with line and column.
    """
    path = os.fspath(path)
    data = read_bytes(path)
    if not data.strip():
        raise RistrettoError(f"cannot parse {NET}: the file is empty", path=path)
    if looks_like_text(data):
        net = parse_text(decode_text(data), caffe_pb2.NetParameter(), path)
        if upgrade:
            upgrade_net(net, path)
        check_net_blobs(net, path, "net definition")
        return net
    if is_hdf5(data):
        return read_weights_h5(path)
    return read_binary_net(data, path, "binary NetParameter", upgrade=upgrade)


def read_solver_param(path, *, upgrade: bool = True):
    """A solver definition (text), with ``solver_type`` and snapshot-prefix upgrades unless
    ``upgrade=False``."""
    path = os.fspath(path)
    text = _decode_text(read_bytes(path), path, "SolverParameter")
    solver = parse_text(text, caffe_pb2.SolverParameter(), path)
    return upgrade_solver(solver, path) if upgrade else solver


def write_net_text(path, net) -> None:
    """Write ``net`` as Caffe's ``WriteProtoToTextFile`` does (byte-identical), atomically."""
    atomic_write_text(path, format_message(net))


def write_text_message(path, message) -> None:
    """Any message (e.g. a SolverParameter) in Caffe's text format, atomically."""
    atomic_write_text(path, format_message(message))
