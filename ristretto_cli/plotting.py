"""What every plot of the tool shares: the optional matplotlib import, a bare Agg figure,
atomic PNG writing with a JSON summary of what was drawn stored in the file, and reading
that summary (and the pixel size) back so a test — or a user — can verify a picture."""

from __future__ import annotations

import io
import json
import struct
import zlib

from ristretto_cli.errors import RistrettoError

DPI = 100


def require_matplotlib(option: str = "plotting") -> None:
    """A clear error (before any work) when the optional dependency is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise RistrettoError(f"{option} needs matplotlib, an optional extra: "
                             "pip install 'ristretto-cli[plot]'") from None


def new_figure(width: int, height: int):
    """A matplotlib Figure of ``width`` x ``height`` pixels on the Agg canvas (no pyplot state)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str, key: str, summary: dict) -> None:
    """Write ``fig`` to ``path`` atomically, with ``summary`` as a PNG text chunk under ``key``."""
    from ristretto_cli.io import atomic_write_bytes
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI,
                metadata={"Software": "ristretto-cli", key: json.dumps(summary, sort_keys=True)})
    atomic_write_bytes(path, buf.getvalue())


def read_png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG file."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk."""
    kind, payload = read_png_chunks(data)[0]
    if kind != b"IHDR":
        raise ValueError("PNG without IHDR first")
    return struct.unpack(">II", payload[:8])


def read_png_summary(data: bytes, key: str) -> dict | None:
    """The summary ``save_png`` stored under ``key``, or None."""
    for kind, payload in read_png_chunks(data):
        name, _, rest = payload.partition(b"\0")
        if name.decode("latin-1") != key:
            continue
        if kind == b"tEXt":
            return json.loads(rest.decode("latin-1"))
        if kind == b"zTXt":
            return json.loads(zlib.decompress(rest[1:]).decode("latin-1"))
        if kind == b"iTXt":
            compressed = rest[0]
            _lang, _, rest = rest[2:].partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            return json.loads((zlib.decompress(text) if compressed else text).decode("utf-8"))
    return None
