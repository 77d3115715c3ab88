"""Protobuf text format: Caffe's exact output style, and parsing with located errors.

``format_message`` reproduces C++ ``TextFormat::Print`` byte for byte (fields in
field-number order, two-space indent, C-style float/double shortest-round-trip
formatting, C string escapes, unknown fields by number), so a prototxt written here is
identical to the one Caffe or Ristretto would write for the same message.
``parse_text`` wraps ``google.protobuf.text_format.Parse`` (same grammar and strictness as
C++ ``TextFormat::Parse``) and turns its errors into RistrettoError with line and column.
"""

from __future__ import annotations

import re

import numpy as np
from google.protobuf import empty_pb2, text_format, unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from ristretto_cli.errors import RistrettoError

_FD = FieldDescriptor

# C ``CEscape``: named escapes for \n \r \t " ' \, printable ASCII as is, every other byte
# (controls, DEL, and all bytes >= 0x80) as a 3-digit octal escape.
_CESCAPE = [chr(b) if 0x20 <= b < 0x7F else f"\\{b:03o}" for b in range(256)]
for _byte, _esc in ((0x0A, "\\n"), (0x0D, "\\r"), (0x09, "\\t"), (0x22, '\\"'), (0x27, "\\'"),
                    (0x5C, "\\\\")):
    _CESCAPE[_byte] = _esc

_INDENT = "  "
_UNKNOWN_RECURSION_LIMIT = 10


def c_escape(data: bytes) -> str:
    """C++ protobuf ``CEscape`` of a byte string."""
    return "".join(_CESCAPE[b] for b in data)


def format_floats(values) -> list[str]:
    """float32 values as C++ protobuf prints them: ``%.6g``, or ``%.9g`` when the short form
    does not parse back to the same float32; ``inf``/``-inf``/``nan``."""
    a = np.asarray(values, dtype=np.float32).ravel()
    if a.size == 0:
        return []
    wide = a.astype(np.float64)
    short = np.char.mod("%.6g", wide)
    with np.errstate(over="ignore", invalid="ignore"):
        back = short.astype(np.float64).astype(np.float32)
    redo = np.isfinite(a) & (back != a)
    if redo.any():
        short = short.astype(object)
        short[redo] = np.char.mod("%.9g", wide[redo])
    return _special_names(short.tolist(), a)


def format_doubles(values) -> list[str]:
    """float64 values as C++ protobuf prints them: ``%.15g``, else ``%.17g``."""
    a = np.asarray(values, dtype=np.float64).ravel()
    if a.size == 0:
        return []
    short = np.char.mod("%.15g", a)
    back = short.astype(np.float64)
    redo = np.isfinite(a) & (back != a)
    if redo.any():
        short = short.astype(object)
        short[redo] = np.char.mod("%.17g", a[redo])
    return _special_names(short.tolist(), a)


def _special_names(strings: list[str], a: np.ndarray) -> list[str]:
    """inf/-inf/nan spelled as C++ protobuf does (a NaN prints as ``nan`` whatever its sign)."""
    if not np.isfinite(a).all():
        for i in np.flatnonzero(~np.isfinite(a)):
            strings[i] = "nan" if np.isnan(a[i]) else ("inf" if a[i] > 0 else "-inf")
    return strings


def _format_scalars(field, values) -> list[str]:
    """Text of a scalar field's values (a list even for a singular field)."""
    ct = field.cpp_type
    if ct == _FD.CPPTYPE_FLOAT:
        return format_floats(values)
    if ct == _FD.CPPTYPE_DOUBLE:
        return format_doubles(values)
    if ct == _FD.CPPTYPE_BOOL:
        return ["true" if v else "false" for v in values]
    if ct == _FD.CPPTYPE_ENUM:
        by_number = field.enum_type.values_by_number
        return [by_number[v].name if v in by_number else str(v) for v in values]
    if ct == _FD.CPPTYPE_STRING:
        if field.type == _FD.TYPE_BYTES:
            return ['"' + c_escape(v) + '"' for v in values]
        return ['"' + c_escape(v.encode("utf-8")) + '"' for v in values]
    return [str(int(v)) for v in values]


def _print_message(msg, depth: int, out: list[str]) -> None:
    pad = _INDENT * depth
    for field, value in msg.ListFields():
        name = field.message_type.name if field.type == _FD.TYPE_GROUP else field.name
        if field.cpp_type == _FD.CPPTYPE_MESSAGE:
            for sub in (value if field.is_repeated else (value,)):
                out.append(f"{pad}{name} {{\n")
                _print_message(sub, depth + 1, out)
                out.append(f"{pad}}}\n")
        else:
            texts = _format_scalars(field, value if field.is_repeated else (value,))
            prefix = f"{pad}{name}: "
            out.extend(prefix + t + "\n" for t in texts)
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        _print_unknown(unknown, depth, out, _UNKNOWN_RECURSION_LIMIT)


def _print_unknown(fields, depth: int, out: list[str], budget: int) -> None:
    """Unknown fields as C++ prints them: by number, varints decimal, fixed as hex, a
    length-delimited value as a nested block when it parses as a message, else a string."""
    pad = _INDENT * depth
    for f in fields:
        num, wt, data = f.field_number, f.wire_type, f.data
        if wt == 0:
            out.append(f"{pad}{num}: {data & 0xFFFFFFFFFFFFFFFF}\n")
        elif wt == 5:
            out.append(f"{pad}{num}: 0x{data & 0xFFFFFFFF:08x}\n")
        elif wt == 1:
            out.append(f"{pad}{num}: 0x{data & 0xFFFFFFFFFFFFFFFF:016x}\n")
        elif wt == 2:
            nested = _parse_unknown(data) if data and budget > 0 else None
            if nested is not None:
                out.append(f"{pad}{num} {{\n")
                _print_unknown(nested, depth + 1, out, budget - 1)
                out.append(f"{pad}}}\n")
            else:
                out.append(f'{pad}{num}: "{c_escape(data)}"\n')
        elif wt == 3:
            out.append(f"{pad}{num} {{\n")
            _print_unknown(data, depth + 1, out, budget - 1)
            out.append(f"{pad}}}\n")


def _parse_unknown(data: bytes):
    holder = empty_pb2.Empty()
    try:
        holder.ParseFromString(data)
    except DecodeError:
        return None
    return unknown_fields.UnknownFieldSet(holder)


def format_message(msg) -> str:
    """The message in C++ ``TextFormat::Print`` form (what Caffe writes to a prototxt)."""
    out: list[str] = []
    _print_message(msg, 0, out)
    return "".join(out)


# --- parsing -----------------------------------------------------------------------------

_LOCATION = re.compile(r"^\d+:\d+ : ")
_SHORTER = [
    (re.compile(r'Message type "(?:caffe\.)?([\w.]+)" has no field named "(\w+)"\.?'),
     lambda m: f'unknown field "{m[2]}" in {m[1]}'),
    (re.compile(r'Message type "(?:caffe\.)?([\w.]+)" should not have multiple "(\w+)" fields\.?'),
     lambda m: f'field "{m[2]}" of {m[1]} given more than once (it is not a repeated field)'),
    (re.compile(r'Enum type "(?:caffe\.)?([\w.]+)" has no value named (\S+?)\.?$'),
     lambda m: f"unknown value {m[2]} for enum {m[1]}"),
    (re.compile(r'Enum type "(?:caffe\.)?([\w.]+)" has no value with number (-?\d+)\.?$'),
     lambda m: f"unknown value {m[2]} for enum {m[1]}"),
]


def _short_message(exc: text_format.ParseError, text: str) -> str:
    msg = _LOCATION.sub("", str(exc)).strip()
    line = exc.GetLine()
    if line is not None and msg.startswith("'"):
        lines = text.splitlines()
        echo = "'" + (lines[line - 1] if 0 < line <= len(lines) else "") + "': "
        if msg.startswith(echo):
            msg = msg[len(echo):]
        elif msg.startswith("'': "):
            msg = msg[4:]
    if "surrogates not allowed" in msg or "codec can't" in msg:
        return "a string holds bytes that are not UTF-8 (not supported)"
    for pattern, make in _SHORTER:
        m = pattern.search(msg)
        if m:
            return make(m)
    return f"syntax error: {msg}" if msg.startswith("Expected") else msg


def parse_text(text, message, path=None):
    """Parse protobuf text into ``message`` (Parse semantics: a non-repeated field given
    twice and unknown names are errors; required fields must be set). Returns ``message``.

    Errors become RistrettoError(path, line, column) with a short description.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="surrogateescape")
    kind = message.DESCRIPTOR.name
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise RistrettoError(f"cannot parse {kind}: {_short_message(exc, text)}", path=path,
                             line=exc.GetLine(), column=exc.GetColumn()) from None
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise RistrettoError(f"cannot parse {kind}: missing required field(s): {missing}", path=path)
    return message
