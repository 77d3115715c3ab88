"""Record sources of the data layers and the feed that prefetches, transforms and caches.

A *source* reads the next ``batch_size`` raw items (C x H x W arrays) and labels, and has
a small JSON-serialisable position (``get_state``/``set_state``). A ``BatchFeed`` drives a
source through a ``Prefetcher``; when the transform is deterministic the prefetch thread
also transforms (and the batch may be cached), otherwise the random transform runs in the
caller's thread with the layer's generator, so a seeded or resumed run draws the same
numbers whether or not it prefetches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ristretto_cli.data import cache as cache_mod
from ristretto_cli.data.datum import (
    NATIVE,
    datum_to_chw,
    image_to_chw,
    parse_datum,
    read_image,
    stack_items,
)
from ristretto_cli.data.db import DBCursor, backend_name
from ristretto_cli.data.prefetch import Prefetcher
from ristretto_cli.data.transformer import DataTransformer
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.log import logger

RESTART_MESSAGE = "Restarting data prefetching from start."


@dataclass
class RawBatch:
    items: np.ndarray | list        # N x C x H x W array, or a list of C x H x W arrays
    labels: np.ndarray              # float32 (N,)
    names: list | None = None       # per item, for error messages
    restarts: int = 0


def _log_restart() -> None:
    logger.info(RESTART_MESSAGE)


# ---------------------------------------------------------------------- Datum DB source
class DatumSource:
    """Datum records of an LMDB/LevelDB in key order, wrapping around at the end. Opened when
    built; ``transformer`` may be set later, before the first read (the Data layer opens its
    DB when it is created, as Caffe's, and sets it up afterwards)."""

    def __init__(self, path: str, backend, batch_size: int, transformer: DataTransformer | None):
        self.path = path
        self.backend = backend_name(backend)
        self.batch_size = batch_size
        self.transformer = transformer
        self._restarts = 0
        self.cursor = DBCursor(path, self.backend, on_restart=self._on_restart)

    def _on_restart(self) -> None:
        self._restarts += 1
        _log_restart()

    @property
    def records_read(self) -> int:
        return self.cursor.records_read

    def _where(self, key: bytes) -> str:
        return f"{self.path}: record '{key.decode('utf-8', 'replace')}'"

    def _decode(self, key: bytes, datum) -> np.ndarray:
        if datum.encoded:
            mode = self.transformer.decode_mode()
        else:
            mode = NATIVE
            self.transformer.note_raw_datum()
        return datum_to_chw(datum, mode, self._where(key))

    def peek_shape(self) -> tuple[int, ...]:
        """C x H x W of the record at the cursor (not consumed), as Caffe's setup reads it."""
        key = self.cursor.key
        return self._decode(key, parse_datum(self.cursor.value, self._where(key))).shape

    def read_batch(self) -> RawBatch:
        before = self._restarts
        pairs = self.cursor.read(self.batch_size)
        datums = [parse_datum(v, self._where(k)) for k, v in pairs]
        labels = np.fromiter((d.label for d in datums), np.float32, len(datums))
        d0 = datums[0]
        c, h, w = d0.channels, d0.height, d0.width
        size = c * h * w
        # Fast path (the common case): raw uint8 records of one shape -> one buffer, one array.
        if size and all(not d.encoded and len(d.data) == size and d.channels == c and d.height == h
                        and d.width == w for d in datums):
            if self.transformer.force_color or self.transformer.force_gray:
                self.transformer.note_raw_datum()
            items = np.frombuffer(b"".join(d.data for d in datums), np.uint8).reshape(len(datums), c, h, w)
        else:
            items = [self._decode(k, d) for (k, _), d in zip(pairs, datums)]
        return RawBatch(items, labels, _RecordNames(self, [k for k, _ in pairs]), self._restarts - before)

    def get_state(self) -> dict:
        return self.cursor.get_state()

    def set_state(self, state: dict) -> None:
        self.cursor.set_state(state)

    def identity(self) -> tuple:
        return ("db", self.backend, cache_mod.file_signature(self.path))

    def close(self) -> None:
        self.cursor.close()


class _RecordNames:
    """Item names for error messages, formatted only when an error needs one."""

    def __init__(self, source: DatumSource, keys: list[bytes]):
        self._source = source
        self._keys = keys

    def __getitem__(self, i: int) -> str:
        return self._source._where(self._keys[i])


# ---------------------------------------------------------------------- image list source
_INT_RE = re.compile(r"[+-]?\d+")
_ATOI_RE = re.compile(r"[ \t\n\v\f\r]*([+-]?)0*(\d+)", re.ASCII)


def _atoi(text: str) -> int:
    """glibc's atoi, i.e. (int) strtol(text, NULL, 10): the leading integer (0 if none),
    saturated to the 64-bit long range, then wrapped to int32."""
    m = _ATOI_RE.match(text)
    if m is None:
        return 0
    v = int(m.group(1) + m.group(2)[:20])  # 20 digits already exceed the long range
    v = min(max(v, -2**63), 2**63 - 1)
    return (v + 2**31) % 2**32 - 2**31


def read_image_list(path: str, *, keep_blank: bool = False) -> list[tuple[str, int] | None]:
    """An image list file: one ``<path> <label>`` per line, split at the last space.

    Like Caffe: the label is the text after the last space; a line without a space is a
    path with label ``atoi(line)`` (usually 0). Unlike Caffe (atoi), a label that is not an
    integer is an error (file:line); trailing whitespace and ``\\r`` are ignored, and blank
    lines skipped, or with ``keep_blank`` kept as None so that entries keep Caffe's getline line
    numbers (convert_imageset's keys).
    """
    raw = read_bytes(path, "cannot read the image list")
    lines: list[tuple[str, int] | None] = []
    text = raw.decode("utf-8", "surrogateescape").split("\n")
    if text[-1] == "":          # getline gives no line after the last newline
        text.pop()
    for lineno, line in enumerate(text, 1):
        line = line.rstrip()
        if not line:
            if keep_blank:
                lines.append(None)
            continue
        pos = line.rfind(" ")
        if pos < 0:
            lines.append((line, _atoi(line)))
            continue
        label = line[pos + 1:]
        if not _INT_RE.fullmatch(label):
            raise RistrettoError(f"the label '{label}' is not an integer (expected '<image path> <label>')",
                                 path=path, line=lineno)
        value = int(label)
        if not -2**31 <= value < 2**31:
            raise RistrettoError(f"the label {label} is out of the int32 range", path=path, line=lineno)
        lines.append((line[:pos], value))
    if not any(lines):
        raise RistrettoError("the image list is empty", path=path)
    return lines


class ImageListSource:
    """Images of a list file (Caffe's ImageData): imread in color/gray, optional resize,
    wrap-around at the end, optional shuffle once at start and again at every wrap.

    The shuffle is seeded: epoch ``e`` uses the permutation drawn by a generator seeded with
    (seed, e), so the position is just (epoch, index) and a resumed run sees the same order.
    """

    def __init__(self, list_path: str, *, batch_size: int, root_folder: str = "", new_height: int = 0,
                 new_width: int = 0, is_color: bool = True, shuffle: bool = False, seed: int = 0,
                 start: int = 0, lines: list[tuple[str, int]] | None = None):
        self.path = list_path
        self.lines = lines if lines is not None else read_image_list(list_path)
        self.batch_size = batch_size
        self.root_folder = root_folder
        self.new_height = new_height
        self.new_width = new_width
        self.is_color = is_color
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.index = int(start)
        self.records_read = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray | None:
        if not self.shuffle:
            return None
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.lines))

    def _line(self, i: int) -> tuple[str, int]:
        return self.lines[i if self._order is None else int(self._order[i])]

    def _load(self, rel: str) -> np.ndarray:
        img = read_image(self.root_folder + rel, self.is_color, self.new_height, self.new_width)
        return image_to_chw(img, self.root_folder + rel)

    def peek_shape(self) -> tuple[int, ...]:
        return self._load(self._line(self.index)[0]).shape

    def read_batch(self) -> RawBatch:
        items, labels, names = [], np.empty(self.batch_size, np.float32), []
        restarts = 0
        for k in range(self.batch_size):
            rel, label = self._line(self.index)
            items.append(self._load(rel))
            labels[k] = label
            names.append(self.root_folder + rel)
            self.index += 1
            if self.index >= len(self.lines):
                self.index = 0
                self.epoch += 1
                restarts += 1
                self._order = self._permutation(self.epoch)
        self.records_read += self.batch_size
        return RawBatch(items, labels, names, restarts)

    def get_state(self) -> dict:
        return {"index": self.index, "epoch": self.epoch, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.seed = int(state.get("seed", self.seed))
        self.epoch = int(state["epoch"])
        self.index = int(state["index"]) % len(self.lines)
        self._order = self._permutation(self.epoch)

    def identity(self) -> tuple | None:
        if self.shuffle:
            return None  # order depends on the seed
        return ("images", cache_mod.file_signature(self.path), self.root_folder, self.new_height,
                self.new_width, self.is_color)

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- feed
@dataclass
class PreparedBatch:
    index: int                   # batch number since the layer started
    data: np.ndarray | RawBatch  # transformed float32 batch, or the raw batch (random transform)
    labels: np.ndarray
    state_before: dict


class _Producer:
    """Runs in the prefetch thread: read (or take from the cache) and, if deterministic,
    transform the next batch. Holds no reference to the layer."""

    def __init__(self, source, transformer: DataTransformer, cache, cache_key):
        self.source = source
        self.transformer = transformer
        self.cache = cache
        self.cache_key = cache_key
        self.next_index = 0           # next batch to produce
        self.source_index = 0         # batch the source is positioned at
        self.initial_state = source.get_state()

    def __call__(self) -> PreparedBatch:
        idx = self.next_index
        if self.cache_key is not None:
            hit = self.cache.get(self.cache_key, idx)
            if hit is not None:
                self.next_index += 1
                for _ in range(hit.restarts):
                    _log_restart()
                return PreparedBatch(idx, hit.data, hit.labels, hit.state_before)
            if self.source_index != idx:
                # The batches before came from the cache: move the source to where they end.
                prev = self.cache.peek(self.cache_key, idx - 1) if idx else None
                self.source.set_state(prev.state_after if prev is not None else self.initial_state)
                self.source_index = idx
        state_before = self.source.get_state()
        raw = self.source.read_batch()
        self.source_index += 1
        self.next_index += 1
        if not self.transformer.deterministic:
            if isinstance(raw.items, list):  # stack here, off the caller's thread, when possible
                stacked = stack_items(raw.items)
                if stacked is not None:
                    raw.items = stacked
            return PreparedBatch(idx, raw, raw.labels, state_before)
        data = self.transformer.transform(raw.items, None, names=raw.names)
        if self.cache_key is not None:
            self.cache.put(self.cache_key, idx, cache_mod.CachedBatch(
                data, raw.labels, state_before, self.source.get_state(), raw.restarts))
        return PreparedBatch(idx, data, raw.labels, state_before)

    def position(self) -> dict:
        """The source state at which batch ``next_index`` starts."""
        if self.source_index != self.next_index and self.next_index:
            prev = self.cache.peek(self.cache_key, self.next_index - 1)
            if prev is not None:
                return prev.state_after
        return self.source.get_state()

    def seek(self, index: int, source_state: dict) -> None:
        self.source.set_state(source_state)
        self.next_index = self.source_index = int(index)


class BatchFeed:
    """Delivers transformed batches of a source in order, prefetched (and cached when the
    transform is deterministic and a cache is active)."""

    def __init__(self, source, transformer: DataTransformer, *, depth: int = 4,
                 cache_key: tuple | None = None, name: str = "data"):
        cache = cache_mod.active()
        if cache is None or not transformer.deterministic or cache_key is None:
            cache, cache_key = None, None
        self.source = source
        self.transformer = transformer
        self._producer = _Producer(source, transformer, cache, cache_key)
        self._prefetcher = Prefetcher(self._producer, depth, name=f"prefetch-{name}")

    @property
    def cached(self) -> bool:
        return self._producer.cache_key is not None

    def next(self, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        """The next (data, labels); random transforms draw from ``rng`` here."""
        batch = self._prefetcher.get()
        if isinstance(batch.data, RawBatch):
            return self.transformer.transform(batch.data.items, rng, names=batch.data.names), batch.labels
        return batch.data, batch.labels

    def state(self) -> dict:
        """Position of the next batch to deliver (pauses the prefetch thread)."""
        self._prefetcher.pause()
        pending = self._prefetcher.pending()
        if pending:
            return {"batch": pending[0].index, "source": pending[0].state_before}
        return {"batch": self._producer.next_index, "source": self._producer.position()}

    def load_state(self, state: dict) -> None:
        self._prefetcher.discard()
        self._producer.seek(state["batch"], state["source"])

    def close(self) -> None:
        self._prefetcher.close()
        self.source.close()
