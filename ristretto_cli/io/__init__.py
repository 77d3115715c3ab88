"""Reading and writing every Caffe file kind, with the legacy upgrade chain.

net/solver prototxt (text), binary NetParameter, caffemodel (binary or HDF5), binaryproto
blobs (mean files), solver states (binary or HDF5). All writes are atomic; all problems a
user can fix are RistrettoErrors naming the file (and line:column for text).
"""

from ristretto_cli.io.atomic import atomic_output, atomic_write_bytes, atomic_write_text, check_writable
from ristretto_cli.io.binaryproto import read_blob_file, read_blob_proto, write_mean_file
from ristretto_cli.io.blobproto import (
    array_to_blob,
    blob_diff_to_array,
    blob_shape,
    blob_to_array,
    shape_equals,
)
from ristretto_cli.io.caffemodel import read_weights, write_caffemodel, write_caffemodel_h5
from ristretto_cli.io.prototxt import read_net_param, read_solver_param, write_net_text, write_text_message
from ristretto_cli.io.solverstate import read_solverstate, write_solverstate, write_solverstate_h5
from ristretto_cli.io.textformat import format_message, parse_text
from ristretto_cli.io.upgrade import net_needs_upgrade, upgrade_net, upgrade_net_as_needed, upgrade_solver

__all__ = [
    "array_to_blob", "atomic_output", "atomic_write_bytes", "atomic_write_text", "blob_diff_to_array",
    "blob_shape", "blob_to_array", "check_writable", "format_message", "net_needs_upgrade",
    "parse_text", "read_blob_file", "read_blob_proto", "read_net_param", "read_solver_param",
    "read_solverstate", "read_weights", "shape_equals", "upgrade_net", "upgrade_net_as_needed",
    "upgrade_solver", "write_caffemodel", "write_caffemodel_h5", "write_mean_file",
    "write_net_text", "write_solverstate", "write_solverstate_h5", "write_text_message",
]
