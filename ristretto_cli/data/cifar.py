"""Caffe's convert_cifar_data (examples/cifar10): the CIFAR-10 binary batches as two DBs.

Each batch file is a run of records: one label byte, then a 3 x 32 x 32 image stored as
three 1024-byte planes (red, green, blue). Every record becomes a raw Datum
``{channels: 3, height: 32, width: 32, data: the 3072 bytes as stored, label}`` (so the
channels are in RGB order, not OpenCV's BGR) under a 5-digit key: the train DB numbers the
records of data_batch_1..5.bin in order, the test DB those of test_batch.bin.

Difference: Caffe reads exactly 10000 records per file; here a file may hold any whole
number of records (all are converted), and a truncated or empty file is an error.
"""

from __future__ import annotations

import os

import numpy as np

from ristretto_cli import log as logmod
from ristretto_cli.data.db import DBWriter, backend_name, db_writers
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2

CIFAR_CHANNELS = 3
CIFAR_SIZE = 32
IMAGE_BYTES = CIFAR_CHANNELS * CIFAR_SIZE * CIFAR_SIZE
RECORD_BYTES = 1 + IMAGE_BYTES
TRAIN_BATCHES = 5
KEY_DIGITS = 5
TRAIN_FILE = "data_batch_{}.bin"    # numbered 1..TRAIN_BATCHES
TEST_FILE = "test_batch.bin"


def read_cifar_batch(path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels as int8 (N,), images as uint8 (N, 3072)) of one CIFAR binary batch file.
    ``what`` names the file in errors ("train file #1", "test file")."""
    path = os.fspath(path)
    data = read_bytes(path, f"Unable to open {what}")
    if not data:
        raise RistrettoError(f"the {what} is empty (no CIFAR records)", path=path)
    if len(data) % RECORD_BYTES:
        raise RistrettoError(f"the {what} is truncated: {len(data)} bytes is not a whole number of "
                             f"{RECORD_BYTES}-byte records", path=path)
    records = np.frombuffer(data, np.uint8).reshape(-1, RECORD_BYTES)
    # The C++ tool reads the label through a (signed) char.
    return records[:, 0].view(np.int8), records[:, 1:]


def _put_records(db: DBWriter, labels: np.ndarray, images: np.ndarray, first_key: int,
                 progress: bool) -> int:
    """Write the records under keys ``first_key``, ``first_key + 1``, ...; returns the next key."""
    datum = caffe_pb2.Datum(channels=CIFAR_CHANNELS, height=CIFAR_SIZE, width=CIFAR_SIZE)
    n = len(labels)
    steps = logmod.progress(range(n), total=n, desc="convert", unit="img") if progress else range(n)
    for i in steps:
        datum.label = int(labels[i])
        datum.data = images[i].tobytes()
        db.put(f"{first_key + i:0{KEY_DIGITS}d}", datum.SerializeToString())
    return first_key + n


def convert_cifar_data(input_folder, output_folder, db_type: str = "lmdb", *,
                       progress: bool = True) -> tuple[int, int]:
    """Caffe's convert_cifar_data: OUTPUT/cifar10_train_<db> and cifar10_test_<db>.

    Every input file is read and checked before anything is written; both DBs appear
    together or not at all. Returns the (train, test) record counts.
    """
    backend = backend_name(db_type)
    input_folder, output_folder = os.fspath(input_folder), os.fspath(output_folder)
    train = [read_cifar_batch(os.path.join(input_folder, TRAIN_FILE.format(b)), f"train file #{b}")
             for b in range(1, TRAIN_BATCHES + 1)]
    test_labels, test_images = read_cifar_batch(os.path.join(input_folder, TEST_FILE), "test file")
    train_db = os.path.join(output_folder, f"cifar10_train_{backend}")
    test_db = os.path.join(output_folder, f"cifar10_test_{backend}")
    with db_writers([train_db, test_db], backend) as (train_writer, test_writer):
        logger.info("Writing Training data")
        next_key = 0
        for batch_id, (labels, images) in enumerate(train, 1):
            logger.info("Training Batch %d", batch_id)
            next_key = _put_records(train_writer, labels, images, next_key, progress)
        logger.info("Writing Testing data")
        test_count = _put_records(test_writer, test_labels, test_images, 0, progress)
    return next_key, test_count
