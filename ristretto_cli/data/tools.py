"""Caffe's data tools: convert_mnist_data, convert_imageset, compute_image_mean.

Keys, values, commit sizes and log lines follow the C++ tools, so the DBs hold the same
records Caffe's would (a DB from ``convert_mnist_data`` equals Caffe's record for record).
DBs are built in a temporary folder and renamed into place when complete.

Deliberate differences: an image that cannot be read is an error naming it (Caffe logs
and skips it), and ``--check_size`` compares decoded image shapes (Caffe compares the
byte size of ``data``, which fails for every encoded image after the first).
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from ristretto_cli import log as logmod
from ristretto_cli.data.datum import (
    NATIVE,
    datum_to_chw,
    encoded_datum,
    image_to_datum,
    parse_datum,
    read_image,
)
from ristretto_cli.data.db import DBWriter, backend_name, db_entries, iterate_db
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.log import fmt_g, logger
from ristretto_cli.proto import caffe_pb2

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


# ---------------------------------------------------------------------- MNIST
def _read_idx(path: str) -> bytes:
    """The bytes of an IDX file, gunzipped when it is gzip-compressed (by content)."""
    data = read_bytes(path, "unable to open file")
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise RistrettoError(f"not a valid gzip file: {exc}", path=path) from None
    return data


def _header(data: bytes, words: int, path: str) -> list[int]:
    if len(data) < 4 * words:
        raise RistrettoError("the IDX file is truncated (incomplete header)", path=path)
    return [int(v) for v in np.frombuffer(data[:4 * words], ">u4")]


def load_mnist(image_path, label_path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST IDX (raw or .gz) images (N x rows x cols uint8) and labels (N, uint8)."""
    image_path, label_path = os.fspath(image_path), os.fspath(label_path)
    images, labels = _read_idx(image_path), _read_idx(label_path)
    magic = _header(images, 1, image_path)[0]
    if magic != IMAGE_MAGIC:
        raise RistrettoError(f"Incorrect image file magic ({magic}, expected {IMAGE_MAGIC}).",
                             path=image_path)
    magic = _header(labels, 1, label_path)[0]
    if magic != LABEL_MAGIC:
        raise RistrettoError(f"Incorrect label file magic ({magic}, expected {LABEL_MAGIC}).",
                             path=label_path)
    _, num_items, rows, cols = _header(images, 4, image_path)
    _, num_labels = _header(labels, 2, label_path)
    if num_items != num_labels:
        raise RistrettoError(f"the image file has {num_items} items but the label file {num_labels}",
                             path=label_path)
    need = 16 + num_items * rows * cols
    if len(images) < need:
        raise RistrettoError(f"the image file is truncated ({len(images)} bytes, {need} needed)",
                             path=image_path)
    if len(labels) < 8 + num_labels:
        raise RistrettoError(f"the label file is truncated ({len(labels)} bytes, {8 + num_labels} needed)",
                             path=label_path)
    pixels = np.frombuffer(images, np.uint8, num_items * rows * cols, 16).reshape(num_items, rows, cols)
    return pixels, np.frombuffer(labels, np.uint8, num_labels, 8)


def convert_mnist_data(image_path, label_path, db_path, backend: str = "lmdb", *,
                       progress: bool = True) -> int:
    """Caffe's convert_mnist_data: key = 8-digit index, Datum {1, rows, cols, raw bytes, label}."""
    backend = backend_name(backend)
    pixels, labels = load_mnist(image_path, label_path)
    n, rows, cols = pixels.shape
    with DBWriter(db_path, backend) as db:
        logger.info("A total of %d items.", n)
        logger.info("Rows: %d Cols: %d", rows, cols)
        datum = caffe_pb2.Datum(channels=1, height=rows, width=cols)
        flat = pixels.reshape(n, rows * cols)
        signed = labels.view(np.int8)  # the C++ tool stores the label through a (signed) char
        steps = logmod.progress(range(n), total=n, desc="convert", unit="img") if progress else range(n)
        for i in steps:
            datum.data = flat[i].tobytes()
            datum.label = int(signed[i])
            db.put(f"{i:08d}", datum.SerializeToString())
    logger.info("Processed %d files.", n)
    return n


# ---------------------------------------------------------------------- image sets
def _match_ext(filename: str, encoding: str) -> bool:
    pos = filename.rfind(".")
    ext = (filename[pos + 1:] if pos >= 0 else filename).lower()
    enc = encoding.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def _image_datum(path: str, label: int, *, is_color: bool, height: int, width: int,
                 encoding: str) -> tuple[caffe_pb2.Datum, tuple]:
    """Caffe's ReadImageToDatum; also returns the (decoded) C x H x W shape."""
    import cv2
    img = read_image(path, is_color, height, width)
    shape = (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
    if not encoding:
        return image_to_datum(img, label), shape
    # As io.cpp: the file's own bytes only when both sizes are 0 (matchExt sees the whole path).
    if (shape[0] == 3) == is_color and not height and not width and _match_ext(path, encoding):
        with open(path, "rb") as f:
            return encoded_datum(f.read(), label), shape
    try:
        ok, buf = cv2.imencode("." + encoding, img)
    except cv2.error:
        ok = False
    if not ok:
        raise RistrettoError(f"OpenCV cannot encode the image as '{encoding}'", path=path)
    return encoded_datum(buf.tobytes(), label), shape


def convert_imageset(root_folder: str, list_file: str, db_path, *, gray: bool = False, shuffle: bool = False,
                     backend: str = "lmdb", resize_width: int = 0, resize_height: int = 0,
                     check_size: bool = False, encoded: bool = False, encode_type: str = "",
                     seed: int | None = None, progress: bool = True) -> int:
    """Caffe's convert_imageset: the list's images as Datums under keys ``%08d_<path>``."""
    from ristretto_cli.data.sources import read_image_list
    backend = backend_name(backend)
    is_color = not gray
    slots = read_image_list(os.fspath(list_file), keep_blank=True)   # None: a blank line
    if shuffle:
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        logger.info("Shuffling data (seed %d)", seed)
        order = np.random.default_rng(seed).permutation(len(slots))
        slots = [slots[i] for i in order]
    # Keys are numbered by list line, blank lines included (Caffe skips those as unreadable).
    lines = [(line_id, *entry) for line_id, entry in enumerate(slots) if entry is not None]
    logger.info("A total of %d images.", len(slots))
    if encode_type and not encoded:
        logger.info("encode_type specified, assuming encoded=true.")
    resize_height = max(0, resize_height)
    resize_width = max(0, resize_width)
    # Caffe resizes only when both sizes are given.
    if (resize_height > 0) != (resize_width > 0):
        logger.warning("only one of resize_height/resize_width is set: images are not resized")
    first_shape = None
    count = 0
    with DBWriter(db_path, backend) as db:
        steps = logmod.progress(lines, total=len(lines), desc="convert", unit="img") if progress else lines
        for line_id, rel, label in steps:
            enc = encode_type
            if encoded and not enc:
                pos = rel.rfind(".")
                if pos < 0:
                    raise RistrettoError("cannot guess the encoding from the file name (no extension); "
                                         "give --encode_type", path=root_folder + rel)
                enc = rel[pos + 1:].lower()
            datum, shape = _image_datum(root_folder + rel, label, is_color=is_color,
                                        height=resize_height, width=resize_width, encoding=enc)
            if check_size:
                if first_shape is None:
                    first_shape = shape
                elif shape != first_shape:
                    raise RistrettoError(f"incorrect image size {' x '.join(map(str, shape))} (the first "
                                         f"image is {' x '.join(map(str, first_shape))})",
                                         path=root_folder + rel)
            db.put(f"{line_id:08d}_{rel}".encode("utf-8", "surrogateescape"), datum.SerializeToString())
            count += 1
            if count % 1000 == 0:
                logger.info("Processed %d files.", count)
    if count % 1000 != 0:
        logger.info("Processed %d files.", count)
    return count


# ---------------------------------------------------------------------- mean image
def compute_image_mean(db_path, output=None, backend: str = "lmdb", *, progress: bool = True) -> np.ndarray:
    """Caffe's compute_image_mean: per-pixel mean (C x H x W, float32) of every record;
    written as a binaryproto when ``output`` is given."""
    db_path = os.fspath(db_path)
    backend = backend_name(backend)
    if output is not None:
        from ristretto_cli.io import check_writable
        check_writable(output)
    records = iterate_db(db_path, backend)
    total = None
    count = 0
    shape = None
    sums = None
    if progress:
        total = db_entries(db_path, backend)
    steps = logmod.progress(records, total=total, desc="mean", unit="img") if progress else records
    for key, value in steps:
        where = f"{db_path}: record '{key.decode('utf-8', 'replace')}'"
        datum = parse_datum(value, where)
        if count == 0:
            if datum.encoded:
                logger.info("Decoding Datum")
            logger.info("Starting iteration")
        item = datum_to_chw(datum, NATIVE, where)
        if shape is None:
            shape = item.shape
            sums = np.zeros(item.size, np.float32)
        elif item.size != sums.size:
            raise RistrettoError(f"{where}: incorrect data field size {item.size} (the first record "
                                 f"has {sums.size})")
        # float32 running sums, record by record, as the C++ tool accumulates.
        np.add(sums, item.reshape(-1), out=sums, dtype=np.float32)
        count += 1
        if count % 10000 == 0:
            logger.info("Processed %d files.", count)
    if count == 0:
        raise RistrettoError(f"the {backend} DB is empty (no records)", path=db_path)
    if count % 10000 != 0:
        logger.info("Processed %d files.", count)
    mean = (sums / np.float32(count)).astype(np.float32).reshape(shape)
    if output is not None:
        from ristretto_cli.io import write_mean_file
        logger.info("Write to %s", output)
        write_mean_file(output, mean)
    channels = shape[0]
    dim = shape[1] * shape[2]
    logger.info("Number of channels: %d", channels)
    for c in range(channels):
        # Sequential float32 sum over the channel, as the C++ loop.
        total_c = np.cumsum(mean[c].reshape(-1), dtype=np.float32)[-1] if dim else np.float32(0)
        logger.info("mean_value channel [%d]: %s", c, fmt_g(np.float32(total_c / np.float32(dim))))
    return mean
