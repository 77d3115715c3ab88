"""Parameter initialisation (Caffe's fillers), drawing from a seeded NumPy generator.

Caffe draws from boost's mt19937; reproducing those streams is not a goal — the
distributions, fan computations and special cases are.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import count
from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

_VN = caffe_pb2.FillerParameter


def _fans(shape) -> tuple[int, int]:
    n = count(shape)
    fan_in = n // shape[0] if len(shape) else n
    fan_out = n // shape[1] if len(shape) > 1 else n
    return fan_in, fan_out


def _variance_n(filler, shape) -> float:
    fan_in, fan_out = _fans(shape)
    if filler.variance_norm == _VN.FAN_OUT:
        return float(fan_out)
    if filler.variance_norm == _VN.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return float(fan_in)


def fill(filler: caffe_pb2.FillerParameter, shape, rng: np.random.Generator) -> np.ndarray:
    """A new float32 array of ``shape`` filled as ``filler`` says."""
    shape = tuple(int(s) for s in shape)
    n = count(shape)
    kind = filler.type
    if filler.sparse != -1 and kind != "gaussian":
        raise RistrettoError(f"filler '{kind}' does not support the sparse option")
    if kind == "constant":
        if n == 0:
            raise RistrettoError("constant filler needs a blob with at least one element")
        return np.full(shape, filler.value, np.float32)
    if kind == "uniform":
        return rng.uniform(filler.min, filler.max, shape).astype(np.float32)
    if kind == "gaussian":
        out = rng.normal(filler.mean, filler.std, shape).astype(np.float32)
        if filler.sparse >= 0:
            if len(shape) < 1:
                raise RistrettoError("sparse gaussian filler needs a blob with at least one axis")
            # Each weight survives with probability sparse / num_outputs.
            keep = filler.sparse / float(shape[0])
            out *= rng.random(shape) < keep
        return out
    if kind == "positive_unitball":
        out = rng.uniform(0.0, 1.0, shape).astype(np.float32)
        if len(shape):
            rows = out.reshape(shape[0], -1)
            rows /= rows.sum(axis=1, keepdims=True)
        return out
    if kind == "xavier":
        scale = np.sqrt(3.0 / _variance_n(filler, shape))
        return rng.uniform(-scale, scale, shape).astype(np.float32)
    if kind == "msra":
        std = np.sqrt(2.0 / _variance_n(filler, shape))
        return rng.normal(0.0, std, shape).astype(np.float32)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise RistrettoError("bilinear filler needs a 4-D blob with square filters")
        k = shape[3]
        f = np.ceil(k / 2.0)
        c = (k - 1) / (2.0 * f)
        x = np.arange(k)
        weights_1d = 1.0 - np.abs(x / f - c)
        kernel = np.outer(weights_1d, weights_1d).astype(np.float32)
        return np.broadcast_to(kernel, shape).copy()
    raise RistrettoError(f"unknown filler type '{kind}' (known: constant, uniform, gaussian, "
                         "positive_unitball, xavier, msra, bilinear)")
