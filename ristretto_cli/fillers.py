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


def _require_axis(shape, what: str) -> None:
    """Caffe's fillers that read ``shape(0)`` stop on a blob without axes."""
    if not shape:
        raise RistrettoError(f"{what} filler needs a blob with at least one axis")


def _fans(shape, kind: str) -> tuple[int, int]:
    _require_axis(shape, kind)
    n = count(shape)
    fan_in = n // shape[0]
    fan_out = n // shape[1] if len(shape) > 1 else n
    return fan_in, fan_out


def _variance_n(filler, shape) -> float:
    fan_in, fan_out = _fans(shape, filler.type)
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
    if n == 0 and kind in ("constant", "uniform", "gaussian", "xavier", "msra"):
        raise RistrettoError(f"{kind} filler needs a blob with at least one element")
    if kind == "constant":
        return np.full(shape, filler.value, np.float32)
    if kind == "uniform":
        if filler.min > filler.max:
            raise RistrettoError(f"uniform filler: min ({filler.min:g}) is above max ({filler.max:g})")
        return rng.uniform(filler.min, filler.max, shape).astype(np.float32)
    if kind == "gaussian":
        if not filler.std > 0:
            raise RistrettoError(f"gaussian filler: std must be positive, got {filler.std:g}")
        if filler.sparse < -1:
            raise RistrettoError(f"gaussian filler: sparse must be -1 (dense) or at least 0, "
                                 f"got {filler.sparse}")
        out = rng.normal(filler.mean, filler.std, shape).astype(np.float32)
        if filler.sparse >= 0:
            _require_axis(shape, "sparse gaussian")
            # Each weight survives with probability sparse / num_outputs.
            keep = filler.sparse / float(shape[0])
            if keep > 1:
                raise RistrettoError(f"sparse gaussian filler: sparse ({filler.sparse}) exceeds the "
                                     f"blob's {shape[0]} outputs")
            out *= rng.random(shape) < keep
        return out
    if kind == "positive_unitball":
        _require_axis(shape, kind)
        out = rng.uniform(0.0, 1.0, shape).astype(np.float32)
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
