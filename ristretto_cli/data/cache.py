"""An opt-in, in-process cache of transformed batches for deterministic data layers.

``ristretto quantize`` scores a dozen nets on the same TEST batches; with the cache the
records are read, parsed, decoded and transformed once. A fresh data layer starts at the
first record, so batch ``i`` of one net is batch ``i`` of the next: entries are stored per
key as a list indexed by the batch number since the layer started.

Keys name everything the result depends on (source and its file signature, backend,
batch size, serialized transform_param, phase, ...). Only deterministic transforms (no
mirror, no random crop) are cached. When storing a batch would exceed the byte limit,
nothing more is stored (a sequential scan would only thrash an evicting cache); what is
stored stays valid.

Use::

    with batch_cache(max_bytes=2**30) as cache:
        ...build and run nets...
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

DEFAULT_MAX_BYTES = 1 << 30

_active: BatchCache | None = None


@dataclass(frozen=True)
class CachedBatch:
    data: np.ndarray             # transformed batch, float32, read-only
    labels: np.ndarray | None    # float32, read-only
    state_before: dict           # reader state before / after this batch (for resume and
    state_after: dict            # for continuing to read after the cached part)
    restarts: int = 0            # how often the reader wrapped around within this batch


class BatchCache:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple, list[CachedBatch]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, index: int) -> CachedBatch | None:
        with self._lock:
            entries = self._entries.get(key)
            if entries is not None and index < len(entries):
                self.hits += 1
                return entries[index]
            self.misses += 1
            return None

    def peek(self, key: tuple, index: int) -> CachedBatch | None:
        """Like ``get`` without counting."""
        with self._lock:
            entries = self._entries.get(key)
            return entries[index] if entries is not None and index < len(entries) else None

    def put(self, key: tuple, index: int, batch: CachedBatch) -> bool:
        """Store batch ``index`` if it extends the stored run and fits the byte limit."""
        size = batch.data.nbytes + (0 if batch.labels is None else batch.labels.nbytes)
        with self._lock:
            entries = self._entries.setdefault(key, [])
            if index != len(entries) or self.bytes + size > self.max_bytes:
                return False
            for a in (batch.data, batch.labels):
                if a is not None:
                    a.flags.writeable = False
            entries.append(batch)
            self.bytes += size
            return True

    def batches(self, key: tuple) -> int:
        with self._lock:
            return len(self._entries.get(key, ()))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.bytes = 0


def active() -> BatchCache | None:
    """The cache data layers use now, or None (the default: no caching)."""
    return _active


def enable(max_bytes: int = DEFAULT_MAX_BYTES) -> BatchCache:
    global _active
    _active = BatchCache(max_bytes)
    return _active


def disable() -> None:
    global _active
    _active = None


@contextlib.contextmanager
def batch_cache(max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[BatchCache]:
    """Cache deterministic batches of every data layer built inside the block."""
    global _active
    old = _active
    cache = BatchCache(max_bytes)
    _active = cache
    try:
        yield cache
    finally:
        _active = old


def file_signature(path) -> tuple:
    """(real path, size, mtime) of a file, or of an LMDB's data.mdb: a changed source never
    hits a stale entry. A LevelDB folder counts by path only, because opening one rewrites
    its LOG and MANIFEST files."""
    real = os.path.realpath(os.fspath(path))
    target = os.path.join(real, "data.mdb") if os.path.isdir(real) else real
    try:
        st = os.stat(target)
    except OSError:
        return (real,)
    return (real, st.st_size, st.st_mtime_ns)
