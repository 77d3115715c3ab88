"""Atomic file output: write a temporary file beside the target, then rename it into place.

A crash, an error or Ctrl-C while writing never leaves a half-written file under the final
name; the temporary file is removed on any failure. All problems are RistrettoErrors naming
the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator

from ristretto_cli.errors import RistrettoError


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "folder does not exist"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EROFS:
        return "read-only file system"
    return (exc.strerror or str(exc)).lower()


def check_writable(path) -> None:
    """Verify up front that ``path`` could be written, without creating or deleting it."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    if not path or path.endswith(os.sep):
        raise RistrettoError("cannot write: the path names a folder, not a file", path=path)
    if os.path.isdir(path):
        raise RistrettoError("cannot write: is a directory", path=path)
    if not os.path.exists(folder):
        raise RistrettoError("cannot write: folder does not exist", path=path)
    if not os.path.isdir(folder):
        raise RistrettoError("cannot write: folder is not a directory", path=path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RistrettoError("cannot write: permission denied (folder not writable)", path=path)


def _final_mode(path: str) -> int:
    """Mode of the written file: that of the file it replaces, else 0666 minus the umask."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``.

    For writers that need a file name (HDF5). On any exception the temporary file is
    deleted and ``path`` is left as it was.
    """
    path = os.fspath(path)
    check_writable(path)
    folder = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as exc:
        raise RistrettoError(f"cannot write: {_reason(exc)}", path=path) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise RistrettoError(f"cannot write: {_reason(exc)}", path=path) from None
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
