"""Work split over threads: coverage of the ranges, nesting, errors, the BLAS held to one
thread, shared products, and layers giving the same bits on any number of threads."""

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


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info
    return min(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_blas_single_threaded_blocks_nest_and_restore_the_setting():
    from threadpoolctl import threadpool_limits
    assert parallel.blas_controllable()
    with threadpool_limits(limits=2, user_api="blas"):
        with parallel.blas_single_threaded():
            assert _blas_threads() == 1
            with parallel.blas_single_threaded():
                assert _blas_threads() == 1
            assert _blas_threads() == 1         # the outer block still holds it
        assert _blas_threads() == 2
        with pytest.raises(ValueError), parallel.blas_single_threaded():
            raise ValueError("inside")
        assert _blas_threads() == 2


@pytest.mark.parametrize("a_shape, b_shape", [
    ((40, 300), (300, 2000)),          # wide result: shared by columns
    ((3000, 300), (300, 40)),          # tall result: shared by rows
    ((24, 50), (12, 50, 700)),         # batched right operand (pointwise convolutions)
])
def test_shared_products_equal_plain_matmul_bit_for_bit(a_shape, b_shape, four_threads, monkeypatch):
    rng = np.random.default_rng(3)
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    shares = []
    real = parallel.for_ranges

    def counting(n, work, **kw):
        def counted(i0, i1):
            shares.append((i0, i1))
            work(i0, i1)
        real(n, counted, **kw)
    monkeypatch.setattr(parallel, "for_ranges", counting)
    out = np.full(np.broadcast_shapes(a_shape[:-1] + (1,), b_shape[:-2] + (1, 1))[:-1]
                  + (b_shape[-1],), np.nan, np.float32)
    parallel.matmul(a, b, out)
    assert len(shares) == 4
    with parallel.blas_single_threaded():
        expected = np.matmul(a, b)
    np.testing.assert_array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("channels, outputs", [(16, 32), (32, 16)])   # col2im / flipped kernels
def test_convolution_gives_the_same_bits_on_one_and_on_several_threads(channels, outputs, four_threads,
                                                                       monkeypatch):
    shared = []
    real = parallel.for_ranges

    def recording(n, work, **kw):
        shared.append((parallel.num_threads(), n))
        real(n, work, **kw)
    monkeypatch.setattr(parallel, "for_ranges", recording)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, channels, 32, 32)).astype(np.float32)
    spec = (f'type: "Convolution" convolution_param {{ num_output: {outputs} kernel_size: 5 pad: 2 '
            f'weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "constant" value: 0.1 }} }}')
    dy = rng.standard_normal((16, outputs, 32, 32)).astype(np.float32)
    results = []
    for threads in (1, 4, 4):
        with parallel.limited(threads):
            layer, bottoms, tops = setup(spec, [x])
            layer.forward(bottoms, tops)
            tops[0].diff = dy.copy()
            layer.backward(tops, [True], bottoms)
            results.append([tops[0].data.copy(), bottoms[0].diff.copy()]
                           + [blob.diff.copy() for blob in layer.blobs])
    assert any(t == 4 and n >= 4 for t, n in shared)     # batch chunks went to four threads
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_panels_do_not_make_batch_chunks_change_the_bits(monkeypatch):
    """A short product (8 x 75 weights) goes in panels (``blas_panels``), wherever they fall
    in a chunk: the forward and the input gradient come out the same whether a chunk holds
    one item or four (the weight gradient is summed chunk by chunk, so it may differ in its
    last bits)."""
    from ristretto_cli.layers import blas_panels, convolution
    monkeypatch.setattr(convolution, "PANEL_MADDS", 8 * 75 * 256)
    monkeypatch.setattr(parallel, "_threads", 1)
    widths = []
    real = blas_panels.panel_product
    monkeypatch.setattr(blas_panels, "panel_product", lambda *a: widths.append((a[3], a[1].shape[-1])) or real(*a))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((8, 8, 32, 32)).astype(np.float32)
    spec = ('type: "Convolution" convolution_param { num_output: 8 kernel_size: 5 pad: 2 '
            'weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "constant" value: 0.1 } }')
    results = []
    for per_chunk in (1, 4):
        monkeypatch.setattr(convolution, "CACHE_COL_ELEMENTS", 75 * 1024 * per_chunk)
        layer, bottoms, tops = setup(spec, [x])
        layer.forward(bottoms, tops)
        tops[0].diff = dy.copy()
        layer.backward(tops, [True], bottoms)
        results.append((tops[0].data.copy(), bottoms[0].diff.copy()))
    if blas_panels.agrees(8, 75, 256, 257):     # this BLAS sums panels as one product (AVX-512 OpenBLAS)
        assert (256, 1024) in widths and (256, 4096) in widths      # chunks of one item and of four
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
