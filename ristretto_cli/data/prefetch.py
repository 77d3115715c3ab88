"""Background prefetching: produce the next batches in a thread while the net computes.

Batches are produced strictly one after another by a single thread, so the order and the
contents are those of plain sequential reading; only *when* the work happens changes.
Reading, protobuf parsing and image decoding overlap with the NumPy/BLAS compute of the
net (which releases the GIL).

``RISTRETTO_PREFETCH=0`` in the environment, or ``set_enabled(False)``, turns it off (the
producer then runs in the caller's thread).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

_enabled = os.environ.get("RISTRETTO_PREFETCH", "1") != "0"
_live: weakref.WeakSet = weakref.WeakSet()


def enabled() -> bool:
    return _enabled


def set_enabled(flag: bool) -> bool:
    """Turn prefetching on/off for prefetchers started from now on; returns the old value."""
    global _enabled
    old, _enabled = _enabled, bool(flag)
    return old


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    old = set_enabled(False)
    try:
        yield
    finally:
        set_enabled(old)


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException):
        self.exc = exc


class Prefetcher:
    """Calls ``produce()`` ahead of time in a daemon thread, keeping up to ``depth`` results.

    ``get()`` returns the results in production order; an exception raised by ``produce``
    is re-raised by the ``get()`` that would have returned that result. ``pause()`` stops
    the thread without losing anything already produced (the caller may then inspect or
    change the producer's state; ``pending()`` lists what is still to be delivered);
    ``discard()`` drops undelivered results. The thread starts again on the next ``get()``.

    ``produce`` must not hold a reference to the object that owns the prefetcher, so that
    the owner can be garbage-collected (its finalizer then calls ``close()``).
    """

    def __init__(self, produce: Callable[[], Any], depth: int = 2, name: str = "prefetch"):
        self._produce = produce
        self.depth = max(1, int(depth))
        self.name = name
        self._ready: deque = deque()      # produced, not yet delivered, thread stopped
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._leftover: list = []
        self.threaded = _enabled
        _live.add(self)

    # ------------------------------------------------------------------ consumer side
    def get(self):
        if self._ready:
            item = self._ready.popleft()
        elif not self.threaded:
            return self._produce()
        else:
            if self._thread is None:
                self._start()
            item = self._queue.get()
        if isinstance(item, _Failure):
            self.pause()
            raise item.exc
        return item

    def pending(self) -> list:
        """Results produced but not yet delivered (call after ``pause()``)."""
        return list(self._ready)

    def pause(self) -> None:
        """Stop the thread; keep every produced result for later ``get()`` calls."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        while thread.is_alive():
            self._drain()
            thread.join(timeout=0.05)
        self._drain()
        self._ready.extend(self._leftover)
        self._leftover = []
        self._thread = None
        self._queue = None

    def discard(self) -> None:
        """Stop the thread and forget undelivered results."""
        self.pause()
        self._ready.clear()

    def close(self) -> None:
        self.discard()

    # ------------------------------------------------------------------ thread side
    def _drain(self) -> None:
        q = self._queue
        while q is not None:
            try:
                self._ready.append(q.get_nowait())
            except queue.Empty:
                return

    def _start(self) -> None:
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._leftover = []
        self._thread = threading.Thread(target=_run, name=self.name, daemon=True,
                                        args=(self._produce, self._queue, self._stop, self._leftover))
        self._thread.start()


def _run(produce, q: queue.Queue, stop: threading.Event, leftover: list) -> None:
    # A plain function: the thread references the producer and its queue, never the owner.
    while not stop.is_set():
        try:
            item = produce()
        except BaseException as exc:  # handed to the consumer, raised in order
            item = _Failure(exc)
        while True:
            if stop.is_set():
                leftover.append(item)  # produced already: keep it, the producer moved on
                return
            try:
                q.put(item, timeout=0.05)
                break
            except queue.Full:
                continue
        if isinstance(item, _Failure):
            return


@atexit.register
def _stop_all() -> None:
    # Stop reader threads before the interpreter tears down the DB libraries they use.
    for p in list(_live):
        with contextlib.suppress(Exception):
            p.close()
