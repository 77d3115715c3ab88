"""Reading input files: clear errors for missing/unreadable files, content sniffing, and
protobuf wire parsing with a clear error."""

from __future__ import annotations

import errno
import os

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from ristretto_cli.errors import RistrettoError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# Caffe reads binary protos with a total bytes limit of INT_MAX (io.cpp kProtoReadBytesLimit).
PROTO_BYTES_LIMIT = 2**31 - 1
#: What to say when a snapshot (weights, solver state) outgrows the limit.
HDF5_SNAPSHOT_HINT = "; use the HDF5 format (snapshot_format: HDF5)"

# Bytes that never occur in a text prototxt (C0 controls other than \t \n \v \f \r).
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13))


def read_bytes(path, what: str = "cannot read") -> bytes:
    """The whole file; else RistrettoError ``"<what>: No such file or directory"`` (or the
    system's reason) naming the path."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            reason = "No such file or directory"
        elif exc.errno == errno.EISDIR:
            reason = "is a directory, not a file"
        else:
            reason = exc.strerror or str(exc)
        raise RistrettoError(f"{what}: {reason}", path=path) from None


def is_hdf5(data: bytes) -> bool:
    """Whether ``data`` is an HDF5 file: the signature at offset 0, 512, 1024, 2048, ...
    (where HDF5 looks for it when a user block precedes the superblock)."""
    if data[:8] == HDF5_SIGNATURE:
        return True
    offset = 512
    while offset + 8 <= len(data):
        if data[offset:offset + 8] == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


def hdf5_file_signature(path) -> bool:
    """``is_hdf5`` on a file without reading all of it (False when it cannot be read)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if f.read(8) == HDF5_SIGNATURE:
                return True
            offset = 512
            while offset + 8 <= size:
                f.seek(offset)
                if f.read(8) == HDF5_SIGNATURE:
                    return True
                offset *= 2
    except OSError:
        return False
    return False


def looks_like_text(data: bytes) -> bool:
    """No NUL or other binary control bytes: protobuf text (binary protobuf practically
    always holds such bytes in its tags and lengths)."""
    return data.translate(None, _BINARY_BYTES) == data


def decode_text(data: bytes) -> str:
    """File bytes as str: UTF-8, with stray bytes (e.g. Latin-1 in comments) kept as
    surrogates so that only a string field holding them is an error."""
    return data.decode("utf-8", errors="surrogateescape")


def parse_binary(data: bytes, message, path, what: str):
    """Parse protobuf wire bytes into ``message``; RistrettoError "not a valid <what>"."""
    if len(data) > PROTO_BYTES_LIMIT:
        raise RistrettoError(f"cannot read {what}: it is {len(data)} bytes, over the 2 GB limit "
                             f"of binary protobuf files ({PROTO_BYTES_LIMIT} bytes)", path=path)
    try:
        message.ParseFromString(data)
    except DecodeError:
        hint = " (it looks like a text file)" if looks_like_text(data) else ""
        raise RistrettoError(f"not a valid {what}: truncated or corrupt protobuf data{hint}",
                             path=path) from None
    bad = first_undecodable_text(message)
    if bad is not None:
        raise RistrettoError(f"not a valid {what}: corrupt protobuf data ({bad} is not UTF-8 text)",
                             path=path)
    return message


def first_undecodable_text(message, prefix: str = "") -> str | None:
    """The path (``layer[3].bottom[0]``) of the first string field whose bytes are not
    UTF-8, else None. Protobuf parses such a field and gives its raw bytes when it is read;
    a damaged file would otherwise fail wherever those are first used as text."""
    for field in message.DESCRIPTOR.fields:
        name = prefix + field.name
        repeated = field.is_repeated
        if field.type not in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_STRING):
            continue
        if not (len(getattr(message, field.name)) if repeated else message.HasField(field.name)):
            continue
        values = getattr(message, field.name) if repeated else [getattr(message, field.name)]
        for i, value in enumerate(values):
            where = f"{name}[{i}]" if repeated else name
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                bad = first_undecodable_text(value, where + ".")
                if bad is not None:
                    return bad
            elif not isinstance(value, str):        # the raw bytes, where they are not UTF-8
                return where
    return None


def serialize_binary(message, path, what: str, wire: bytes | None = None, hint: str = "") -> bytes:
    """``message`` as wire bytes (or ``wire`` as given), refused over the 2 GB limit: protobuf
    would write such a file, but neither Caffe nor we could read it back."""
    data = message.SerializeToString() if wire is None else wire
    if len(data) > PROTO_BYTES_LIMIT:
        raise RistrettoError(f"cannot write {what}: it would be {len(data)} bytes, over the 2 GB "
                             f"limit of binary protobuf files ({PROTO_BYTES_LIMIT} bytes) that "
                             f"Caffe can read{hint}",
                             path=os.fspath(path))
    return data
