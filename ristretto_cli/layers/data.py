"""Data layers: Data (LMDB/LevelDB), ImageData (image list), HDF5Data, MemoryData, HDF5Output.

Behaviour follows solver_and_cli.md §8 and layers.md §6. Data and ImageData read and
decode ahead in a background thread (``ristretto_cli.data.prefetch``) without changing the
order of the records; their random transforms (mirror, TRAIN crop) draw from the layer's
generator at forward time. ``state_dict`` holds the reader position and the generator
state, so a resumed run reads and draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import os
import weakref

import numpy as np

from ristretto_cli.blob import Blob
from ristretto_cli.data import cache as cache_mod
from ristretto_cli.data.datum import NATIVE, datum_to_chw, image_to_chw
from ristretto_cli.data.sources import BatchFeed, DatumSource, ImageListSource
from ristretto_cli.data.transformer import DataTransformer
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.registry import register
from ristretto_cli.log import logger


def rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


def rng_from_state(state: dict) -> np.random.Generator:
    bit_gen = getattr(np.random, state["bit_generator"])()
    bit_gen.state = state
    return np.random.Generator(bit_gen)


class _DataLayerBase(Layer):
    """Shared parts of the prefetching data layers (no bottoms, no backward)."""
    exact_bottoms = 0

    _feed: BatchFeed | None = None

    def _start_feed(self, source, transformer: DataTransformer, depth: int, cache_key) -> None:
        self._feed = BatchFeed(source, transformer, depth=depth, cache_key=cache_key, name=self.name)
        weakref.finalize(self, self._feed.close)

    def reshape(self, bottom, top):
        pass  # each forward shapes the tops after its batch (Caffe reshapes per batch)

    def forward_cpu(self, bottom, top):
        data, labels = self._feed.next(self.rng)
        fill_top(top[0], data)
        if len(top) > 1:
            fill_top(top[1], labels)

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    def state_dict(self) -> dict | None:
        return {"reader": self._feed.state(), "rng": rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self._feed.load_state(state["reader"])
        if "rng" in state:
            self.rng = rng_from_state(state["rng"])

    def _cache_key(self, source, batch_size: int, extra=()) -> tuple | None:
        ident = source.identity()
        if ident is None:
            return None
        tp = self.param.transform_param
        mean = (cache_mod.file_signature(tp.mean_file),) if tp.HasField("mean_file") else ()
        return (self.type, ident, batch_size, tp.SerializeToString(deterministic=True), mean,
                self.phase, *extra)

    def _log_output_size(self, top) -> None:
        s = top[0].shape
        logger.info("output data size: %s", ",".join(str(d) for d in s))

    def _warn_legacy(self, sub, fields=("scale", "mean_file", "crop_size", "mirror")) -> None:
        # V2 layers ignore these (only the V1 upgrade moves them into transform_param).
        for f in fields:
            if sub.HasField(f):
                logger.warning("layer '%s': %s.%s is ignored (a legacy field); put it in transform_param",
                               self.name, sub.DESCRIPTOR.name.replace("Parameter", "_param").lower(), f)


def fill_top(blob: Blob, values: np.ndarray) -> None:
    """Copy into the top's own array (other blobs may alias it), reshaping when needed."""
    if blob.data.shape != values.shape or not blob.data.flags.writeable:
        blob.data = np.array(values, np.float32)
    else:
        np.copyto(blob.data, values)


@register("Data")
class DataLayer(_DataLayerBase):
    """Datum records from an LMDB or LevelDB (backend default LEVELDB, as in Caffe)."""
    min_tops = 1
    max_tops = 2

    def __init__(self, param, **kwargs):
        super().__init__(param, **kwargs)
        # Caffe's constructor opens the DB ("Opened lmdb ..."), before the net's set-up lines.
        dp = self.param.data_param
        try:
            self._source = DatumSource(dp.source, dp.backend, dp.batch_size, None)
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from None

    def layer_setup(self, bottom, top):
        dp = self.param.data_param
        if dp.batch_size <= 0:
            raise self.error("data_param.batch_size must be positive")
        self._warn_legacy(dp)
        transformer = DataTransformer(self.param.transform_param, self.phase, layer=self.name)
        source = self._source
        source.transformer = transformer
        entries = source.cursor.entries()
        if entries is not None and dp.batch_size > entries:
            logger.warning("layer '%s': batch_size %d is larger than the DB (%d records); batches "
                           "wrap around and repeat records, as in Caffe", self.name, dp.batch_size, entries)
        try:
            shape = transformer.infer_shape(source.peek_shape())
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from None
        top[0].reshape((dp.batch_size, *shape))
        self._log_output_size(top)
        if len(top) > 1:
            top[1].reshape((dp.batch_size,))
        self._start_feed(source, transformer, max(1, dp.prefetch),
                         self._cache_key(source, dp.batch_size))

    @property
    def records_read(self) -> int:
        return self._feed.source.records_read


@register("ImageData")
class ImageDataLayer(_DataLayerBase):
    """Images named in a list file, read with OpenCV (BGR), optionally resized and shuffled."""
    exact_tops = 2

    def layer_setup(self, bottom, top):
        p = self.param.image_data_param
        if not ((p.new_height == 0 and p.new_width == 0) or (p.new_height > 0 and p.new_width > 0)):
            raise self.error("image_data_param: new_height and new_width must be set together")
        if p.batch_size <= 0:
            raise self.error("image_data_param.batch_size must be positive")
        self._warn_legacy(p)
        transformer = DataTransformer(self.param.transform_param, self.phase, layer=self.name)
        logger.info("Opening file %s", p.source)
        seed = int(self.rng.integers(2**63))
        try:
            source = ImageListSource(p.source, batch_size=p.batch_size, root_folder=p.root_folder,
                                     new_height=p.new_height, new_width=p.new_width, is_color=p.is_color,
                                     shuffle=p.shuffle, seed=seed)
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from None
        if p.shuffle:
            logger.info("Shuffling data")
        logger.info("A total of %d images.", len(source.lines))
        if p.rand_skip:
            skip = int(self.rng.integers(p.rand_skip))
            logger.info("Skipping first %d data points.", skip)
            if skip >= len(source.lines):
                raise self.error(f"not enough images to skip {skip} (the list has {len(source.lines)})")
            source.index = skip
        try:
            shape = transformer.infer_shape(source.peek_shape())
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from None
        top[0].reshape((p.batch_size, *shape))
        self._log_output_size(top)
        top[1].reshape((p.batch_size,))
        depth = max(1, self.param.data_param.prefetch)
        key = None if p.rand_skip else self._cache_key(source, p.batch_size)
        self._start_feed(source, transformer, depth, key)

    @property
    def records_read(self) -> int:
        return self._feed.source.records_read


# ---------------------------------------------------------------------- HDF5Data
def _require_h5py(path=None):
    from ristretto_cli.io.hdf5util import require_h5py
    return require_h5py(path)


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """Rows of the datasets named like the tops, from the HDF5 files listed in ``source``;
    a batch may span files; wraps around at the end of the list."""
    exact_bottoms = 0
    min_tops = 1

    def layer_setup(self, bottom, top):
        p = self.param.hdf5_data_param
        if self.param.HasField("transform_param"):
            raise self.error("HDF5Data does not transform data (remove transform_param)")
        if p.batch_size <= 0:
            raise self.error("hdf5_data_param.batch_size must be positive")
        _require_h5py(p.source)
        logger.info("Loading list of HDF5 filenames from: %s", p.source)
        files = read_bytes(p.source, "failed to open the HDF5 file list").decode(
            "utf-8", "surrogateescape").split()
        if not files:
            raise RistrettoError("the HDF5 file list names no files", path=p.source, layer=self.name)
        logger.info("Number of HDF5 files: %d", len(files))
        self._files = files
        self._tops = list(self.param.top)
        self._shuffle = bool(p.shuffle)
        self._seed = int(self.rng.integers(2**63))
        self._loaded_name = None
        self._set_position(epoch=0, file_pos=0, row=0, visit=0)
        arrays = self._arrays
        for t, a in zip(top, arrays):
            t.reshape((p.batch_size, *a.shape[1:]))

    # Order: the file list (permuted per epoch when shuffling), rows permuted per file visit.
    def _file_order(self, epoch: int) -> np.ndarray:
        n = len(self._files)
        if not self._shuffle:
            return np.arange(n)
        return np.random.default_rng([self._seed, 0, epoch]).permutation(n)

    def _set_position(self, *, epoch: int, file_pos: int, row: int, visit: int) -> None:
        self._epoch, self._file_pos, self._row, self._visit = epoch, file_pos, row, visit
        self._order = self._file_order(epoch)
        self._load(self._files[int(self._order[file_pos])])

    def _load(self, path: str) -> None:
        if path != self._loaded_name:
            self._arrays = self._read_file(path)
            self._loaded_name = path
        n = self._arrays[0].shape[0]
        self._rows = (np.random.default_rng([self._seed, 1, self._visit]).permutation(n)
                      if self._shuffle else None)

    def _read_file(self, path: str) -> list[np.ndarray]:
        h5py = _require_h5py(path)
        if not os.path.isfile(path):
            raise RistrettoError("failed opening HDF5 file: No such file or directory", path=path,
                                 layer=self.name)
        try:
            f = h5py.File(path, "r")
        except OSError as exc:
            raise RistrettoError(f"failed opening HDF5 file: {exc}", path=path, layer=self.name) from None
        with f:
            arrays = []
            for name in self._tops:
                ds = f.get(name)
                if not isinstance(ds, h5py.Dataset):
                    raise RistrettoError(f"failed to find HDF5 dataset '{name}'", path=path, layer=self.name)
                # The HDF5 type class, as Caffe checks it: enums (h5py's bool too) are refused.
                cls = ds.id.get_type().get_class()
                if cls not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT):
                    kind = "enum" if cls == h5py.h5t.ENUM else str(ds.dtype)
                    raise RistrettoError(f"dataset '{name}' has unsupported type {kind} "
                                         "(float or integer needed)", path=path, layer=self.name)
                if ds.ndim < 1:
                    raise RistrettoError(f"dataset '{name}' must have at least 1 axis", path=path,
                                         layer=self.name)
                arrays.append(np.asarray(ds[()], np.float32))
        n = arrays[0].shape[0]
        for name, a in zip(self._tops, arrays):
            if a.shape[0] != n:
                raise RistrettoError(f"dataset '{name}' has {a.shape[0]} rows but '{self._tops[0]}' has {n}",
                                     path=path, layer=self.name)
        if n == 0:
            raise RistrettoError("the HDF5 file has no rows", path=path, layer=self.name)
        if getattr(self, "_arrays", None) is not None and self._loaded_name is not None:
            for name, a, old in zip(self._tops, arrays, self._arrays):
                if a.shape[1:] != old.shape[1:]:
                    raise RistrettoError(f"dataset '{name}' rows are {a.shape[1:]} here but "
                                         f"{old.shape[1:]} in {self._loaded_name}", path=path,
                                         layer=self.name)
        return arrays

    def _advance_file(self) -> None:
        self._visit += 1
        if len(self._files) > 1:
            self._file_pos += 1
            if self._file_pos == len(self._files):
                self._file_pos = 0
                self._epoch += 1
                self._order = self._file_order(self._epoch)
        self._row = 0
        self._load(self._files[int(self._order[self._file_pos])])

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        batch = self.param.hdf5_data_param.batch_size
        parts: list[list[np.ndarray]] = [[] for _ in top]
        need = batch
        while need:
            n = self._arrays[0].shape[0]
            take = min(need, n - self._row)
            end = self._row + take
            sel = slice(self._row, end) if self._rows is None else self._rows[self._row:end]
            for part, a in zip(parts, self._arrays):
                part.append(a[sel])
            need -= take
            self._row += take
            if self._row == n:
                self._advance_file()
        for t, part in zip(top, parts):
            fill_top(t, np.concatenate(part) if len(part) > 1 else part[0])

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    def state_dict(self) -> dict | None:
        return {"epoch": self._epoch, "file_pos": self._file_pos, "row": self._row,
                "visit": self._visit, "seed": self._seed}

    def load_state_dict(self, state: dict) -> None:
        self._seed = int(state.get("seed", self._seed))
        self._set_position(epoch=int(state["epoch"]), file_pos=int(state["file_pos"]),
                           row=int(state["row"]), visit=int(state["visit"]))


# ---------------------------------------------------------------------- MemoryData
@register("MemoryData")
class MemoryDataLayer(Layer):
    """Batches from arrays handed over from Python (Caffe's MemoryDataLayer).

    ``reset(data, labels)`` takes N x C x H x W data (used as is, no transform) and N labels;
    ``add_datum_vector(datums)`` and ``add_mat_vector(images, labels)`` transform with
    ``transform_param`` first. N must be a multiple of the batch size; each forward
    delivers the next ``batch_size`` rows, wrapping around.
    """
    exact_bottoms = 0
    exact_tops = 2

    def layer_setup(self, bottom, top):
        p = self.param.memory_data_param
        self.batch_size, self.channels, self.height, self.width = (
            int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(self.batch_size, self.channels, self.height, self.width) <= 0:
            raise self.error("batch_size, channels, height, and width must be specified and positive "
                             "in memory_data_param")
        self._transformer = DataTransformer(self.param.transform_param, self.phase, layer=self.name)
        top[0].reshape((self.batch_size, self.channels, self.height, self.width))
        top[1].reshape((self.batch_size,))
        self._data = None
        self._labels = None
        self._n = 0
        self._pos = 0
        self.has_new_data = False

    def _check_count(self, n: int) -> None:
        if n <= 0:
            raise self.error("there is no data to add")
        if n % self.batch_size:
            raise self.error(f"the number of items ({n}) must be a multiple of the batch size "
                             f"({self.batch_size})")

    def reset(self, data, labels) -> None:
        """Use ``data`` (N x C x H x W) and ``labels`` (N) from now on, from row 0."""
        data = np.asarray(data, np.float32)
        labels = np.asarray(labels, np.float32).reshape(-1)
        n = data.shape[0] if data.ndim else 0
        self._check_count(n)
        if data.shape[1:] != (self.channels, self.height, self.width):
            raise self.error(f"data must be N x {self.channels} x {self.height} x {self.width}, "
                             f"got {' x '.join(map(str, data.shape))}")
        if labels.shape[0] != n:
            raise self.error(f"got {n} data rows but {labels.shape[0]} labels")
        if self.param.HasField("transform_param"):
            logger.warning("MemoryData does not transform array data on reset()")
        self._data = np.ascontiguousarray(data)
        self._labels = np.ascontiguousarray(labels)
        self._n = n
        self._pos = 0

    set_input_arrays = reset  # pycaffe's name

    def _add_transformed(self, items: list[np.ndarray], labels) -> None:
        if self.has_new_data:
            raise self.error("cannot add data until the current data has been consumed")
        self._check_count(len(items))
        out = self._transformer.transform(items, self.rng)
        if out.shape[1:] != (self.channels, self.height, self.width):
            raise self.error(f"transformed items are {' x '.join(map(str, out.shape[1:]))}, but "
                             f"memory_data_param says {self.channels} x {self.height} x {self.width}")
        self._data = out
        self._labels = np.asarray(labels, np.float32).reshape(-1)
        self._n = len(items)
        self._pos = 0
        self.has_new_data = True

    def add_datum_vector(self, datums) -> None:
        """Transform and use a list of Datum messages (their labels become the labels)."""
        items = [datum_to_chw(d, self._transformer.decode_mode() if d.encoded else NATIVE, f"datum {i}")
                 for i, d in enumerate(datums)]
        self._add_transformed(items, [d.label for d in datums])

    def add_mat_vector(self, images, labels) -> None:
        """Transform and use OpenCV images (H x W x C BGR, or H x W gray) with their labels."""
        if len(images) != len(labels):
            raise self.error(f"got {len(images)} images but {len(labels)} labels")
        self._add_transformed([image_to_chw(np.asarray(im), f"image {i}") for i, im in enumerate(images)],
                              labels)

    def set_batch_size(self, batch_size: int) -> None:
        if self.has_new_data:
            raise self.error("cannot change the batch size until the current data has been consumed")
        self.batch_size = int(batch_size)

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        if self._data is None:
            raise self.error("MemoryData needs data: call reset(data, labels) (or add_datum_vector / "
                             "add_mat_vector) first")
        b = self.batch_size
        if self._pos + b > self._n:  # after set_batch_size; Caffe would read past its buffer
            raise self.error(f"the data ({self._n} rows) is not a multiple of the batch size ({b}); "
                             "reset the data after set_batch_size")
        # Caffe shapes the label top (batch, 1, 1, 1) on forward.
        fill_top(top[0], self._data[self._pos:self._pos + b])
        fill_top(top[1], self._labels[self._pos:self._pos + b].reshape(b, 1, 1, 1))
        self._pos = (self._pos + b) % self._n
        if self._pos == 0:
            self.has_new_data = False

    def backward_cpu(self, top, propagate_down, bottom):
        pass

    def state_dict(self) -> dict | None:
        return {"pos": self._pos}

    def load_state_dict(self, state: dict) -> None:
        self._pos = int(state["pos"]) % self._n if self._n else 0


# ---------------------------------------------------------------------- HDF5Output
@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes its two bottoms to ``file_name`` as datasets ``data`` and ``label`` (legacy
    4-D shapes, float32). Like Caffe it holds one batch per run: a second forward is an
    error (Caffe fails creating the existing dataset). The file is written atomically."""
    exact_bottoms = 2
    exact_tops = 0

    def layer_setup(self, bottom, top):
        from ristretto_cli.io import check_writable
        _require_h5py()
        self.file_name = self.param.hdf5_output_param.file_name
        try:
            check_writable(self.file_name)
        except RistrettoError as exc:
            raise exc.located(layer=self.name) from None
        self._written = False

    def reshape(self, bottom, top):
        pass

    def forward_cpu(self, bottom, top):
        from ristretto_cli.io import atomic_output
        h5py = _require_h5py()
        if self._written:
            raise self.error(f"HDF5Output already wrote its batch to {self.file_name}; it holds one "
                             "batch per run (as in Caffe)")
        data, label = _legacy4d(bottom[0].data, self), _legacy4d(bottom[1].data, self)
        if data.shape[0] != label.shape[0]:  # legacy num(): 1 for a 0-axis blob
            raise self.error("data blob and label blob must have the same batch size")
        logger.info("Saving HDF5 file %s", self.file_name)
        with atomic_output(self.file_name) as tmp, h5py.File(tmp, "w") as f:
            f.create_dataset("data", data=data)
            f.create_dataset("label", data=label)
        self._written = True
        logger.info("Successfully saved %d rows", data.shape[0])

    def backward_cpu(self, top, propagate_down, bottom):
        pass


def _legacy4d(a: np.ndarray, layer: Layer) -> np.ndarray:
    if a.ndim > 4:
        raise layer.error(f"cannot write a {a.ndim}-D blob as a legacy 4-D dataset")
    return np.asarray(a, np.float32).reshape(a.shape + (1,) * (4 - a.ndim))
