"""Element-wise work split over threads: coverage of the ranges, nesting, errors, and layers
giving the same bits on any number of threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from layer_check import setup

from ristretto_cli import parallel


@pytest.fixture
def four_threads():
    old = parallel.num_threads()
    parallel.set_num_threads(4)
    yield
    parallel.set_num_threads(old)


def test_ranges_cover_every_item_once_on_several_threads(four_threads):
    seen = np.zeros(1003, int)
    threads = set()

    def work(i0, i1):
        seen[i0:i1] += 1
        threads.add(threading.get_ident())
    parallel.for_ranges(1003, work)
    assert (seen == 1).all() and len(threads) >= 2     # the caller and at least one worker


def test_small_work_and_nested_calls_stay_on_one_thread(four_threads):
    calls = []
    parallel.for_ranges(10, lambda i0, i1: calls.append((i0, i1)), min_items=6)
    assert calls == [(0, 10)]
    inner = []

    def outer(i0, i1):
        parallel.for_ranges(8, lambda a, b: inner.append((a, b)))
    parallel.for_ranges(2, outer)
    assert sorted(inner) == [(0, 8), (0, 8)]        # each worker ran its inner loop itself
    parallel.for_ranges(0, lambda i0, i1: calls.append("empty"))
    assert "empty" not in calls


def test_an_error_in_any_range_reaches_the_caller(four_threads):
    def work(i0, i1):
        if i0 > 0:
            raise ValueError(f"range {i0}")
    with pytest.raises(ValueError, match="range"):
        parallel.for_ranges(100, work)


def test_limited_restores_the_count(four_threads):
    with parallel.limited(1):
        assert parallel.num_threads() == 1
    assert parallel.num_threads() == 4


@pytest.mark.parametrize("spec", [
    'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }',
    'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }',
    'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
])
def test_pooling_gives_the_same_bits_on_one_and_on_several_threads(spec, four_threads):
    x = np.random.default_rng(0).standard_normal((10, 16, 33, 31)).astype(np.float32)  # 640 KiB: split
    dy = None
    results = []
    for threads in (1, 4):
        with parallel.limited(threads):
            layer, bottoms, tops = setup(spec, [x])
            layer.forward(bottoms, tops)
            if dy is None:
                dy = np.random.default_rng(1).standard_normal(tops[0].shape).astype(np.float32)
            tops[0].diff = dy
            layer.backward(tops, [True], bottoms)
            results.append((tops[0].data.copy(), bottoms[0].diff.copy()))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
