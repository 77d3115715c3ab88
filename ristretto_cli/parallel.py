"""Element-wise work split over CPU cores.

The GEMMs run on the BLAS's own threads; the memory-bound work around them (pooling, column
buffers, trimming) is NumPy calls that release the GIL, so a few Python threads each working
on their own contiguous range of a big array run in parallel. ``for_ranges`` does that with
one shared pool; below ``min_items`` per thread, or inside a pool thread, it runs serially.

The number of threads is ``RISTRETTO_NUM_THREADS``, else ``OMP_NUM_THREADS``, else the CPUs
this process may use; ``set_num_threads``/``limited`` change it (benchmarks hold it equal to
the BLAS's and PyTorch's thread counts; ``quantize`` runs one net per core and sets 1).
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor


def _default_threads() -> int:
    for name in ("RISTRETTO_NUM_THREADS", "OMP_NUM_THREADS"):
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


def for_ranges(n: int, work, min_items: int = 1) -> None:
    """``work(i0, i1)`` over contiguous ranges that cover ``0..n`` once; each range's items
    must be independent of the others'. ``min_items`` is the least worth a thread of its own."""
    k = min(_threads, n // max(1, min_items))
    if k <= 1 or getattr(_inside, "worker", False):
        if n > 0:
            work(0, n)
        return
    bounds = [n * i // k for i in range(k + 1)]
    pool = _executor()
    futures = [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(1, k)]
    _inside.worker = True           # the caller's share, too, runs nested calls serially
    try:
        work(bounds[0], bounds[1])
    finally:
        _inside.worker = False
        for f in futures:
            f.result()


__all__ = ["num_threads", "set_num_threads", "limited", "for_ranges"]
