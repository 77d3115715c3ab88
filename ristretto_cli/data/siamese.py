"""Caffe's convert_mnist_siamese_data (examples/siamese): random pairs of MNIST images.

One record per image of the source: a raw Datum ``{channels: 2, height: rows, width: cols,
data: image i then image j, label: 1 if their labels are equal else 0}`` under an 8-digit
key, with i and j drawn uniformly (with replacement) from the whole set. The backend
defaults to LevelDB, the only one Caffe's tool writes.

Difference: Caffe draws i and j from its own random stream (seeded differently on every
run); here they come from a NumPy generator seeded with ``seed`` (fixed by default), so the
same seed always gives the same DB, and the pairs are not Caffe's.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli import log as logmod
from ristretto_cli.data.db import LEVELDB, DBWriter, backend_name
from ristretto_cli.data.tools import load_mnist
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2

DEFAULT_SEED = 1701
KEY_DIGITS = 8


def draw_pairs(num_items: int, seed: int) -> np.ndarray:
    """(num_items, 2) image indices: the pair of each record."""
    if num_items == 0:
        return np.zeros((0, 2), np.int64)
    return np.random.default_rng(seed).integers(num_items, size=(num_items, 2))


def convert_mnist_siamese_data(image_path, label_path, db_path, backend: str = LEVELDB, *,
                               seed: int = DEFAULT_SEED, progress: bool = True) -> int:
    """Write the pair DB; returns the number of records (= the number of images)."""
    backend = backend_name(backend)
    images, labels = load_mnist(image_path, label_path)
    num_items, rows, cols = images.shape
    flat = images.reshape(num_items, rows * cols)
    pairs = draw_pairs(num_items, seed)
    same_class = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    with DBWriter(db_path, backend) as db:
        logger.info("A total of %d items.", num_items)
        logger.info("Rows: %d Cols: %d", rows, cols)
        logger.info("Drawing the pairs with seed %d", seed)
        datum = caffe_pb2.Datum(channels=2, height=rows, width=cols)
        items = range(num_items)
        steps = logmod.progress(items, total=num_items, desc="convert", unit="pair") if progress else items
        for item in steps:
            datum.data = flat[pairs[item]].tobytes()
            datum.label = int(same_class[item])
            db.put(f"{item:0{KEY_DIGITS}d}", datum.SerializeToString())
    return num_items
