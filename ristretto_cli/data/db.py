"""Key-value databases of Datum records: LMDB and LevelDB readers and writers.

Readers walk the records in the DB's byte-wise key order (the default comparator of both
LMDB and LevelDB, so the order Caffe reads) and wrap around to the first key at the end,
as Caffe's DataLayer does. Writers buffer puts and commit every ``commit_every`` (1000)
of them, as Caffe's converters do, into a temporary folder beside the target that is
renamed into place only when the whole DB is written.

LevelDB support needs the optional ``plyvel`` package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import weakref
from collections.abc import Callable

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2

LMDB = "lmdb"
LEVELDB = "leveldb"
BACKENDS = (LMDB, LEVELDB)
COMMIT_EVERY = 1000

# Caffe's LevelDB options for new DBs (db_leveldb.cpp).
_LEVELDB_WRITE_BUFFER = 256 * 1024 * 1024
_LEVELDB_BLOCK_SIZE = 65536
_LMDB_INITIAL_MAP = 256 * 1024 * 1024


def backend_name(backend) -> str:
    """``lmdb``/``leveldb`` from a DataParameter.DB enum value or a (case-insensitive) name."""
    if isinstance(backend, int):
        if backend == caffe_pb2.DataParameter.LMDB:
            return LMDB
        if backend == caffe_pb2.DataParameter.LEVELDB:
            return LEVELDB
        raise RistrettoError(f"unknown DB backend {backend}")
    name = str(backend).strip().lower()
    if name not in BACKENDS:
        raise RistrettoError(f"unknown DB backend '{backend}' (choose lmdb or leveldb)")
    return name


def _require_plyvel(path):
    try:
        import plyvel
    except ImportError:
        raise RistrettoError("LevelDB needs the optional plyvel package "
                             "(pip install 'ristretto-cli[leveldb]'), or use an LMDB (backend: LMDB)",
                             path=path) from None
    return plyvel


def _looks_like_lmdb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


def _looks_like_leveldb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "CURRENT"))


def _check_source(path: str, backend: str) -> None:
    """Clear errors for the usual mistakes before the DB library reports something cryptic."""
    if not path:
        raise RistrettoError("no DB source given (data_param.source is empty)")
    if not os.path.exists(path):
        raise RistrettoError(f"cannot open {backend} DB: No such file or directory", path=path)
    if backend == LEVELDB and _looks_like_lmdb(path):
        raise RistrettoError("this is an LMDB but the backend is LEVELDB (Caffe's default): "
                             "add 'backend: LMDB' to data_param", path=path)
    if backend == LMDB and _looks_like_leveldb(path):
        raise RistrettoError("this is a LevelDB but the backend is LMDB: use 'backend: LEVELDB'",
                             path=path)
    if backend == LMDB and os.path.isdir(path) and not _looks_like_lmdb(path):
        raise RistrettoError("cannot open lmdb DB: the folder has no data.mdb", path=path)


# One open handle per DB folder and process: LevelDB allows a single opener (its LOCK file),
# and LMDB must not open one environment twice in a process.
_handles: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_handles_lock = threading.Lock()


class _LMDBHandle:
    def __init__(self, path: str):
        import lmdb
        self.path = path
        try:
            # lock=False: readers never write lock.mdb, so read-only folders work (Caffe's
            # ALLOW_LMDB_NOLOCK); nobody writes a training DB while it is read.
            self.env = lmdb.open(path, readonly=True, lock=False, readahead=False,
                                 max_readers=1024, subdir=os.path.isdir(path))
        except lmdb.Error as exc:
            raise RistrettoError(f"cannot open lmdb DB: {exc}", path=path) from None

    def entries(self) -> int:
        return int(self.env.stat()["entries"])


class _LevelDBHandle:
    def __init__(self, path: str):
        plyvel = _require_plyvel(path)
        self.path = path
        try:
            self.db = plyvel.DB(path, create_if_missing=False)
        except Exception as exc:  # plyvel raises its own IOError/Error types
            raise RistrettoError(f"cannot open leveldb DB: {exc}", path=path) from None

    def entries(self) -> int | None:
        return None


def _open_handle(path: str, backend: str):
    key = (os.path.realpath(path), backend)
    with _handles_lock:
        handle = _handles.get(key)
        if handle is None:
            handle = _LMDBHandle(path) if backend == LMDB else _LevelDBHandle(path)
            _handles[key] = handle
        return handle


class DBCursor:
    """A read cursor over one DB in key order that wraps around at the end.

    ``read(n)`` returns the next ``n`` (key, value) pairs; batches may straddle the end of
    the DB (and repeat records when ``n`` exceeds the DB size), exactly as Caffe's reader.
    ``on_restart`` is called each time the cursor goes back to the first key.
    ``records_read`` counts the records returned (tests use it to prove a cache works).
    Not thread-safe: one thread at a time (the prefetch thread, or the caller).
    """

    def __init__(self, path, backend, on_restart: Callable[[], None] | None = None):
        self.path = os.fspath(path)
        self.backend = backend_name(backend)
        _check_source(self.path, self.backend)
        self._handle = _open_handle(self.path, self.backend)
        self.on_restart = on_restart
        self.records_read = 0
        if self.backend == LMDB:
            self._txn = self._handle.env.begin(buffers=False)
            self._cur = self._txn.cursor()
            ok = self._cur.first()
        else:
            self._it = self._handle.db.raw_iterator()
            self._it.seek_to_first()
            ok = self._it.valid()
        if not ok:
            raise RistrettoError(f"the {self.backend} DB is empty (no records)", path=self.path)
        logger.info("Opened %s %s", self.backend, self.path)

    # -- position
    @property
    def key(self) -> bytes:
        return self._cur.key() if self.backend == LMDB else self._it.key()

    @property
    def value(self) -> bytes:
        return self._cur.value() if self.backend == LMDB else self._it.value()

    def seek_first(self) -> None:
        if self.backend == LMDB:
            self._cur.first()
        else:
            self._it.seek_to_first()

    def seek(self, key: bytes) -> None:
        """Position at ``key``, else at the next key after it, else at the first key."""
        if self.backend == LMDB:
            if not self._cur.set_range(key):
                self._cur.first()
        else:
            self._it.seek(key)
            if not self._it.valid():
                self._it.seek_to_first()

    def next(self) -> None:
        """Advance; past the last key go back to the first (and report it)."""
        if self.backend == LMDB:
            ok = self._cur.next()
        else:
            self._it.next()
            ok = self._it.valid()
        if not ok:
            if self.on_restart is not None:
                self.on_restart()
            self.seek_first()

    def read(self, n: int) -> list[tuple[bytes, bytes]]:
        out = []
        for _ in range(n):
            out.append((self.key, self.value))
            self.next()
        self.records_read += n
        return out

    # -- resumable position
    def get_state(self) -> dict:
        return {"key": self.key.hex()}

    def set_state(self, state: dict) -> None:
        self.seek(bytes.fromhex(state["key"]))

    def entries(self) -> int | None:
        """Number of records when the backend knows it cheaply (LMDB), else None."""
        return self._handle.entries()

    def close(self) -> None:
        if self.backend == LMDB:
            with contextlib.suppress(Exception):
                self._cur.close()
                self._txn.abort()
        else:
            with contextlib.suppress(Exception):
                self._it.close()


def db_entries(path, backend) -> int | None:
    """Number of records of a DB when known cheaply (LMDB), else None."""
    path = os.fspath(path)
    backend = backend_name(backend)
    _check_source(path, backend)
    return _open_handle(path, backend).entries()


def iterate_db(path, backend):
    """Every (key, value) pair once, in key order (no wrap-around)."""
    path = os.fspath(path)
    backend = backend_name(backend)
    _check_source(path, backend)
    handle = _open_handle(path, backend)
    if backend == LMDB:
        with handle.env.begin(buffers=False) as txn:
            yield from txn.cursor()
    else:
        it = handle.db.iterator()
        try:
            yield from it
        finally:
            it.close()


class DBWriter:
    """Writes a new DB: puts are committed every ``commit_every``; the DB is built in a
    temporary folder beside ``path`` and renamed to ``path`` by ``close()``.

    An existing ``path`` is an error (Caffe's converters refuse it too). Use as a context
    manager: on an exception the temporary folder is removed and ``path`` never appears.
    """

    def __init__(self, path, backend, commit_every: int = COMMIT_EVERY):
        self.path = os.fspath(path).rstrip(os.sep) or os.fspath(path)
        self.backend = backend_name(backend)
        self.commit_every = commit_every
        self.count = 0
        self._pending: list[tuple[bytes, bytes]] = []
        if os.path.lexists(self.path):
            raise RistrettoError("cannot create the DB: the path already exists", path=self.path)
        parent = os.path.dirname(os.path.abspath(self.path))
        try:  # unlike Caffe's tools, create missing parent folders (examples/mnist/...)
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise RistrettoError(f"cannot create the DB folder: {exc.strerror}", path=self.path) from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RistrettoError("cannot create the DB: permission denied (folder not writable)",
                                 path=self.path)
        if self.backend == LEVELDB:
            _require_plyvel(self.path)
        self._tmp = tempfile.mkdtemp(dir=parent, prefix="." + os.path.basename(self.path) + ".",
                                     suffix=".tmp")
        try:
            if self.backend == LMDB:
                import lmdb
                self._map_size = _LMDB_INITIAL_MAP
                self._env = lmdb.open(self._tmp, map_size=self._map_size, subdir=True)
            else:
                import plyvel
                self._db = plyvel.DB(self._tmp, create_if_missing=True, error_if_exists=False,
                                     write_buffer_size=_LEVELDB_WRITE_BUFFER,
                                     block_size=_LEVELDB_BLOCK_SIZE, max_open_files=100)
        except Exception as exc:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise RistrettoError(f"cannot create the DB: {exc}", path=self.path) from None
        self._closed = False

    def put(self, key, value: bytes) -> None:
        if isinstance(key, str):
            key = key.encode("utf-8")
        self._pending.append((key, value))
        self.count += 1
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        if not self._pending:
            return
        if self.backend == LMDB:
            import lmdb
            while True:
                try:
                    with self._env.begin(write=True) as txn:
                        for k, v in self._pending:
                            txn.put(k, v)
                    break
                except lmdb.MapFullError:
                    # As Caffe's DoubleMapSize: grow the map and redo the transaction.
                    self._map_size *= 2
                    self._env.set_mapsize(self._map_size)
        else:
            with self._db.write_batch() as wb:
                for k, v in self._pending:
                    wb.put(k, v)
        self._pending = []

    def close(self) -> None:
        """Commit what is left, close, and move the DB into place."""
        if self._closed:
            return
        try:
            self.commit()
            self._close_handle()
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o777 & ~umask)  # mkdtemp made it private; a DB folder is not
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def _close_handle(self) -> None:
        if self.backend == LMDB:
            self._env.sync()
            self._env.close()
        else:
            self._db.close()

    def abort(self) -> None:
        """Drop everything written so far."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._close_handle()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> DBWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@contextlib.contextmanager
def db_writers(paths, backend, commit_every: int = COMMIT_EVERY):
    """New DBs written together (one ``DBWriter`` each): all appear when the block ends
    normally, none when it raises. A path given twice is an error."""
    seen: dict[str, str] = {}
    for path in paths:
        real = os.path.abspath(os.fspath(path))
        if real in seen:
            raise RistrettoError(f"the same DB is named twice ('{seen[real]}' and '{path}')", path=path)
        seen[real] = os.fspath(path)
    writers: list[DBWriter] = []
    try:
        for path in paths:
            writers.append(DBWriter(path, backend, commit_every))
        yield writers
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    placed: list[str] = []
    try:
        for writer in writers:
            writer.close()
            placed.append(writer.path)
    except BaseException:
        for writer in writers:
            writer.abort()
        for path in placed:     # the ones already moved into place go too: all or nothing
            shutil.rmtree(path, ignore_errors=True)
        raise
