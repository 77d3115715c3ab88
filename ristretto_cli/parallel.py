"""The engine's threads: work split over CPU cores.

The engine runs its passes with the BLAS on one thread (``blas_single_threaded``) and shares
work among its own threads instead: one pool of Python threads, each working on its own
contiguous range (``for_ranges``). NumPy calls and BLAS products release the GIL, so the
shares run in parallel. Convolutions share their batch chunks (a chunk's column buffer is
then built and multiplied on one core, in its cache); single big products share their result
rows or columns (``matmul``); pooling, ReLU and weight gradients share cache-sized blocks
(``for_blocks``). Below ``min_items`` per thread, or
inside a pool thread, work runs serially. The BLAS's own threads are avoided because small
products scale badly inside it and its idle threads keep spinning on the cores after a call.

The number of threads is ``RISTRETTO_NUM_THREADS``, else ``OMP_NUM_THREADS``, else
``OPENBLAS_NUM_THREADS`` or ``MKL_NUM_THREADS``, else the CPUs this process may use;
``set_num_threads``/``limited`` change it (benchmarks hold it equal to PyTorch's thread
count; ``quantize`` runs one net per core and sets 1).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def _default_threads() -> int:
    for name in ("RISTRETTO_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_threads = _default_threads()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()
_inside = threading.local()


def num_threads() -> int:
    return _threads


def set_num_threads(n: int) -> None:
    global _threads
    _threads = max(1, int(n))


@contextlib.contextmanager
def limited(n: int):
    """Use at most ``n`` threads inside the block."""
    old = _threads
    set_num_threads(min(old, n))
    try:
        yield
    finally:
        set_num_threads(old)


def _executor() -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _pool_lock:
        if _pool is None or _pool_size < _threads - 1:
            _pool_size = max(1, _threads - 1)
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="ristretto-parallel",
                                       initializer=_mark_worker)
        return _pool


def _mark_worker() -> None:
    _inside.worker = True


def in_worker() -> bool:
    """True inside a share of ``for_ranges`` (nested calls there run serially)."""
    return getattr(_inside, "worker", False)


_blas = None
_blas_lock = threading.Lock()
_blas_depth = 0
_blas_limiter = None


def _blas_controller():
    """threadpoolctl's handle on the BLAS libraries NumPy loaded (None if it finds none)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        found = ThreadpoolController().select(user_api="blas")
        _blas = found if found.lib_controllers else False
    return _blas or None


def blas_controllable() -> bool:
    """Whether ``blas_single_threaded`` can limit the BLAS (threadpoolctl knows it)."""
    return _blas_controller() is not None


class _BlasSingleThreaded:
    """See ``blas_single_threaded``."""

    def __enter__(self):
        global _blas_depth, _blas_limiter
        controller = _blas_controller()
        if controller is not None:
            with _blas_lock:
                if _blas_depth == 0:
                    _blas_limiter = controller.limit(limits=1)
                _blas_depth += 1
        return self

    def __exit__(self, *exc):
        global _blas_depth, _blas_limiter
        if _blas:
            with _blas_lock:
                _blas_depth -= 1
                if _blas_depth == 0:
                    _blas_limiter.restore_original_limits()
                    _blas_limiter = None
        return False


def blas_single_threaded() -> _BlasSingleThreaded:
    """A block in which every BLAS call uses one thread. Layers run this way and share
    products among the engine's own threads instead: the BLAS's idle threads keep spinning
    on the cores for a while after a multi-threaded call, which halves the speed of the
    engine's threads that come next, and its results then depend on its thread count. The
    BLAS setting is process-wide; nested and concurrent blocks keep it until the last ends."""
    return _BLAS_SINGLE_THREADED


_BLAS_SINGLE_THREADED = _BlasSingleThreaded()


def usable_threads() -> int:
    """Threads a split may use here: 1 inside a share of ``for_ranges`` (nested splits run
    serially), else the engine's thread count."""
    return 1 if in_worker() else _threads


def for_ranges(n: int, work, min_items: int = 1) -> None:
    """``work(i0, i1)`` over contiguous ranges that cover ``0..n`` once; each range's items
    must be independent of the others'. ``min_items`` is the least worth a thread of its own.
    While the ranges run on several threads, BLAS calls use one thread each."""
    k = min(usable_threads(), n // max(1, min_items))
    if k <= 1:
        if n > 0:
            work(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    pool = _executor()
    with blas_single_threaded():
        futures = [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(1, k)]
        _inside.worker = True           # the caller's share, too, runs nested calls serially
        try:
            work(bounds[0], bounds[1])
        finally:
            _inside.worker = False
            for f in futures:
                f.result()


def for_bounds(bounds: list[int], work, min_items: int = 1) -> None:
    """``work(bounds[i], bounds[i + 1])`` for every consecutive pair of ``bounds``, the pairs
    shared among the threads in order (``min_items`` pairs at least per thread)."""
    def share(i0: int, i1: int) -> None:
        for i in range(i0, i1):
            work(bounds[i], bounds[i + 1])
    for_ranges(len(bounds) - 1, share, min_items=min_items)


def even_bounds(n: int, step: int, shared: bool, least: int = 1) -> list[int]:
    """Boundaries of the fewest ranges of at most ``step`` items that cover ``0..n``, as even
    as possible. ``shared``: their count rounded up to a multiple of the usable threads (at
    most ``n`` ranges), so that every thread gets the same amount. No range is shorter than
    ``least`` items unless ``n`` is (then there is one range), whatever the thread count."""
    count = -(-n // max(1, step, least))
    threads = usable_threads()
    if shared and threads > 1:
        count = min(n, -(-count // threads) * threads)
    count = min(count, max(1, n // max(1, least))) if n else 0
    return [n * i // count for i in range(count + 1)] if count else [0]


def for_even_blocks(n: int, step: int, work, shared: bool) -> None:
    """``work(i0, i1)`` over blocks of at most ``step`` items covering ``0..n``, as even as
    possible (see ``even_bounds``); shared among the threads when ``shared`` (the caller's
    judgement that there is enough work), else all on this thread."""
    bounds = even_bounds(n, step, shared)
    for_bounds(bounds, work, min_items=1 if shared else len(bounds))


def for_blocks(n: int, step: int, work, min_blocks: int = 1) -> None:
    """``work(i0, i1)`` over consecutive blocks of at most ``step`` items covering ``0..n``
    (each block sized to be worked on in the cache), the blocks shared among the threads
    when each gets at least ``min_blocks``."""
    step = max(1, step)
    for_bounds([min(n, b * step) for b in range(-(-n // step) + 1)], work, min_items=min_blocks)


#: Products below this many FLOPs run on one thread: sharing them costs more in waking
#: threads than it saves.
SPLIT_MIN_FLOPS = 1 << 23
#: Shares of a split product are whole multiples of this many result rows or columns.
SPLIT_UNIT = 16


def matmul(a, b, out) -> None:
    """``numpy.matmul(a, b, out=out)``, the result shared among the threads along its longer
    side, rows or columns (each share on one BLAS thread), when the product is big enough.
    Every element is computed as a plain ``matmul`` computes it."""
    rows, depth = out.shape[-2], a.shape[-1]
    cols = out.shape[-1]
    by_rows = rows > cols
    units = -(-(rows if by_rows else cols) // SPLIT_UNIT)
    if usable_threads() <= 1 or units < 2 or 2 * depth * out.size < SPLIT_MIN_FLOPS:
        np.matmul(a, b, out=out)
        return

    def share(u0: int, u1: int) -> None:
        i0, i1 = u0 * SPLIT_UNIT, (u1 * SPLIT_UNIT)
        if by_rows:
            np.matmul(a[..., i0:i1, :], b, out=out[..., i0:i1, :])
        else:
            np.matmul(a, b[..., i0:i1], out=out[..., i0:i1])
    for_ranges(units, share)


__all__ = ["num_threads", "set_num_threads", "limited", "for_ranges", "for_bounds", "even_bounds",
           "for_even_blocks", "for_blocks", "in_worker",
           "usable_threads", "blas_single_threaded", "blas_controllable", "matmul"]
