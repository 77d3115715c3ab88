"""Caffe's fillers: distributions and fans checked on large blobs, exact values where the
filler is deterministic (hand-computed bilinear kernel), and Caffe's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_cli.errors import RistrettoError
from ristretto_cli.fillers import fill
from ristretto_cli.proto import caffe_pb2

FP = caffe_pb2.FillerParameter


def draw(shape, seed=0, **fields):
    return fill(FP(**fields), shape, np.random.default_rng(seed))


def test_constant_uniform_and_gaussian():
    assert np.all(draw((3, 4), type="constant", value=2.5) == 2.5)
    assert np.all(draw((2,)) == 0)                                  # the default: constant 0
    u = draw((200, 500), type="uniform", min=-2, max=3)
    assert u.dtype == np.float32 and u.min() >= -2 and u.max() <= 3
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 25 / 12) < 0.02
    g = draw((200, 500), type="gaussian", mean=1, std=0.5)
    assert abs(g.mean() - 1) < 0.005 and abs(g.std() - 0.5) < 0.005


def test_sparse_gaussian_keeps_sparse_over_outputs():
    """Each weight is kept with probability sparse / shape(0): 3 of 10 here."""
    g = draw((10, 20000), type="gaussian", std=1, sparse=3)
    assert abs((g != 0).mean() - 0.3) < 0.01
    assert not draw((10, 100), type="gaussian", std=1, sparse=0).any()


def test_positive_unitball_rows_sum_to_one():
    b = draw((6, 3, 2, 2), type="positive_unitball")
    assert b.min() >= 0
    np.testing.assert_allclose(b.reshape(6, -1).sum(axis=1), 1, rtol=1e-6)


@pytest.mark.parametrize("norm, n", [(FP.FAN_IN, 3 * 5 * 5), (FP.FAN_OUT, 64 * 5 * 5),
                                     (FP.AVERAGE, (3 * 5 * 5 + 64 * 5 * 5) / 2)])
def test_xavier_and_msra_scale_by_the_fans(norm, n):
    """fan_in = count / shape(0), fan_out = count / shape(1): xavier is U(-sqrt(3/n),
    sqrt(3/n)), msra N(0, 2/n)."""
    shape = (64, 3, 5, 5)
    x = np.concatenate([draw(shape, seed, type="xavier", variance_norm=norm).ravel() for seed in range(20)])
    bound = np.sqrt(3 / n)
    assert np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
    assert abs(x.var() - 1 / n) < 0.03 / n
    m = np.concatenate([draw(shape, seed, type="msra", variance_norm=norm).ravel() for seed in range(20)])
    assert abs(m.var() - 2 / n) < 0.03 * 2 / n and abs(m.mean()) < 0.01 * np.sqrt(2 / n)


def test_bilinear_kernel_by_hand():
    """Kernel 4: f = 2, c = 3/4, so the 1-D weights 1 - |x/2 - 3/4| are 1/4, 3/4, 3/4, 1/4;
    every (output, input) pair gets their outer product."""
    k = draw((2, 3, 4, 4), type="bilinear")
    w = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    for o in range(2):
        for i in range(3):
            np.testing.assert_array_equal(k[o, i], np.outer(w, w))
    np.testing.assert_array_equal(draw((1, 1, 3, 3), type="bilinear")[0, 0],     # f = 2, c = 1/2
                                  np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]).astype(np.float32))


def test_fillers_draw_from_the_seeded_generator():
    a, b, c = (draw((5, 7), seed, type="gaussian", std=1) for seed in (4, 4, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape, fields, message", [
    ((2, 3), dict(type="uniform", min=2, max=1), "min .* is above max"),
    ((2, 3), dict(type="gaussian", std=0), "std must be positive"),
    ((2, 3), dict(type="gaussian", std=-1), "std must be positive"),
    ((2, 3), dict(type="gaussian", sparse=5), "exceeds the blob's 2 outputs"),
    ((2, 3), dict(type="gaussian", sparse=-2), "sparse must be -1"),
    ((2, 3), dict(type="xavier", sparse=1), "does not support the sparse option"),
    ((), dict(type="xavier"), "at least one axis"),
    ((), dict(type="msra"), "at least one axis"),
    ((), dict(type="positive_unitball"), "at least one axis"),
    ((0, 3), dict(type="gaussian"), "at least one element"),
    ((2, 3, 4, 5), dict(type="bilinear"), "square"),
    ((2, 3), dict(type="nope"), "unknown filler type 'nope'")])
def test_settings_caffe_refuses_are_errors(shape, fields, message):
    with pytest.raises(RistrettoError, match=message):
        draw(shape, **fields)
