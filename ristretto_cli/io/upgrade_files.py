"""The ``upgrade_net_proto_text`` / ``upgrade_net_proto_binary`` / ``upgrade_solver_proto_text``
tools: read a net or solver in any legacy form, upgrade it, write it in the current form."""

from __future__ import annotations

import os

from ristretto_cli.io.atomic import check_writable
from ristretto_cli.io.caffemodel import read_binary_net, read_weights_h5, write_caffemodel
from ristretto_cli.io.files import hdf5_file_signature, read_bytes
from ristretto_cli.io.prototxt import read_net_param, read_solver_param, write_net_text, write_text_message
from ristretto_cli.io.upgrade import net_needs_upgrade, upgrade_net_as_needed, upgrade_solver_type
from ristretto_cli.log import logger


def upgrade_net_file(source, target, *, binary: bool) -> bool:
    """Upgrade ``source`` into ``target`` (text prototxt, or binary when ``binary``).

    The text tool reads a prototxt (or a binary net); the binary tool reads a binary
    NetParameter/caffemodel (or HDF5 weights). Returns False when part of the legacy
    content could not be carried over (logged; the file is still written, as Caffe does).
    """
    source, target = os.fspath(source), os.fspath(target)
    check_writable(target)
    if not binary:
        net = read_net_param(source, upgrade=False)
    elif hdf5_file_signature(source):
        net = read_weights_h5(source)
    else:
        net = read_binary_net(read_bytes(source), source, "binary NetParameter", upgrade=False)
    ok = True
    if net_needs_upgrade(net):
        ok = upgrade_net_as_needed(net, source)
        if not ok:
            logger.error("Encountered error(s) while upgrading prototxt; see details above.")
    else:
        logger.error("File already in latest proto format: %s", source)   # LOG(ERROR), as Caffe
    if binary:
        write_caffemodel(target, net)
        logger.info("Wrote upgraded NetParameter binary proto to %s", target)
    else:
        write_net_text(target, net)
        logger.info("Wrote upgraded NetParameter text proto to %s", target)
    return ok


def upgrade_solver_file(source, target) -> None:
    """Upgrade the solver prototxt ``source`` (``solver_type`` enum -> ``type`` string) into
    ``target``. Only the type is upgraded, as Caffe's tool: no snapshot_prefix is filled in.
    A solver already current is written unchanged (and logged as such)."""
    source, target = os.fspath(source), os.fspath(target)
    check_writable(target)
    solver = read_solver_param(source, upgrade=False)
    if not upgrade_solver_type(solver, source):
        logger.error("File already in latest proto format: %s", source)   # LOG(ERROR), as Caffe
    write_text_message(target, solver)
    logger.info("Wrote upgraded SolverParameter text proto to %s", target)
