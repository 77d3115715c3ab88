"""Caffe's extract_features (tools/extract_features.cpp): blob values of a net's forward
passes, item by item, as Datums in one new DB per blob.

The net is built for the TEST phase (level 0, no stages) and loaded with the weights; each
of ``num_mini_batches`` forward passes then adds, for every named blob, one record per item
(the blob's first axis): ``float_data`` = the item's values, ``channels``/``height``/
``width`` = the blob's legacy 4-D shape (axes past the blob's own count as 1: a N x 500
blob gives 500 x 1 x 1, a N x 20 x 24 x 24 one 20 x 24 x 24), no label, under the
10-digit key of the item's number in that blob's DB. The DBs appear only when every pass
succeeded.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli import log as logmod
from ristretto_cli.data.db import backend_name, db_writers
from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import hold_records, logger
from ristretto_cli.proto import caffe_pb2

KEY_DIGITS = 10
LOG_EVERY = 1000
LEGACY_AXES = 4
MAX_LISTED = 20     # blob names listed in the unknown-blob error


def _parse_count(text, what: str) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise RistrettoError(f"{what} must be an integer, got '{text}'") from None
    if value < 0:
        raise RistrettoError(f"{what} must be >= 0, got {value}")
    return value


def legacy_shape(shape: tuple[int, ...], blob_name: str) -> tuple[int, int, int, int]:
    """Caffe's (num, channels, height, width) of a blob: missing trailing axes are 1."""
    if len(shape) > LEGACY_AXES:
        raise RistrettoError(f"feature blob '{blob_name}' has {len(shape)} axes: its items cannot be "
                             f"stored as Datums (at most {LEGACY_AXES} axes)")
    padded = tuple(shape) + (1,) * (LEGACY_AXES - len(shape))
    return padded[0], padded[1], padded[2], padded[3]


def feature_datums(values: np.ndarray, blob_name: str) -> list[bytes]:
    """One serialized Datum per item of a blob's values."""
    num, channels, height, width = legacy_shape(values.shape, blob_name)
    if num == 0:
        return []
    items = np.asarray(values, np.float32).reshape(num, -1)
    out = []
    for item in items:
        datum = caffe_pb2.Datum(channels=channels, height=height, width=width)
        datum.float_data.extend(item.tolist())
        out.append(datum.SerializeToString())
    return out


def extract_features(weights, model, blob_names: str, db_names: str, num_mini_batches,
                     db_type: str, mode: str = "CPU", device_id=None, *,
                     progress: bool = True) -> dict[str, int]:
    """Run Caffe's extract_features; ``blob_names`` and ``db_names`` are comma-separated
    lists of equal length. Returns the number of records written per DB name."""
    from ristretto_cli.io import read_net_param, read_weights
    from ristretto_cli.net import TEST, Net

    # Every argument is checked before the net is built.
    blobs = str(blob_names).split(",")      # empty names stay (and are then unknown), as Caffe
    dbs = str(db_names).split(",")
    if len(blobs) != len(dbs):
        raise RistrettoError(f"the number of blob names and dataset names must be equal "
                             f"({len(blobs)} vs. {len(dbs)})")
    if "" in dbs:
        raise RistrettoError(f"empty dataset name in '{db_names}'")
    batches = _parse_count(num_mini_batches, "NUM_MINI_BATCHES")
    backend = backend_name(db_type)
    if str(mode).upper() not in ("CPU", "GPU"):
        raise RistrettoError(f"unknown mode '{mode}' (choose CPU or GPU)")
    use_gpu = str(mode).upper() == "GPU"
    device = _parse_count(device_id, "DEVICE_ID") if use_gpu and device_id is not None else 0

    with hold_records() as held:        # a bad file prints its error line only
        if use_gpu:
            logger.warning("no GPU backend is available: running on the CPU (GPU %d ignored)", device)
        else:
            logger.error("Using CPU")       # LOG(ERROR), as Caffe
        net = Net(read_net_param(model), TEST, verbose=True)
        net.copy_trained_layers_from(read_weights(weights), weights)
    held.release()
    for name in blobs:
        if name not in net.blobs:
            known = list(net.blobs)
            shown = ", ".join(known[:MAX_LISTED]) + (", ..." if len(known) > MAX_LISTED else "")
            raise RistrettoError(f"Unknown feature blob name '{name}' in the network {model} "
                                 f"(blobs: {shown})")

    for name in dbs:
        logger.info("Opening dataset %s", name)
    counts = [0] * len(blobs)
    with db_writers(dbs, backend) as writers, net.frozen_params():
        logger.error("Extracting Features")
        steps = logmod.progress(range(batches), total=batches, desc="extract", unit="batch") \
            if progress else range(batches)
        for _ in steps:
            net.forward()
            for i, (name, writer) in enumerate(zip(blobs, writers)):
                for value in feature_datums(net.blobs[name].data, name):
                    writer.put(f"{counts[i]:0{KEY_DIGITS}d}", value)
                    counts[i] += 1
                    if counts[i] % LOG_EVERY == 0:
                        logger.error("Extracted features of %d query images for feature blob %s",
                                     counts[i], name)
        for name, count in zip(blobs, counts):
            logger.error("Extracted features of %d query images for feature blob %s", count, name)
    logger.error("Successfully extracted the features!")
    return dict(zip(dbs, counts))
