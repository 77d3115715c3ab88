"""The scoring engine of ``ristretto quantize``: many nets, the same TEST batches, exact results.

Ristretto scores every candidate net with a fresh net over the first ``iterations`` TEST
batches. A TEST net is a pure function of its batch, so the engine gets the same numbers
with less work:

* **Batches once.** The data layers' tops (the blobs live after the leading data layers)
  are recorded while the baseline runs and fed to every later net; no record is read or
  decoded twice.
* **Unchanged prefixes once.** When a net's first changed layer comes after some float layers
  (the FC-weight sweep starts at the first InnerProduct), the blobs live at that boundary are
  the baseline's: they are recorded per batch during the baseline and the net runs only from
  there. Blobs that share memory (Split tops, Flatten views, in-place tops) are restored as
  views of one buffer, so Ristretto's in-place input trimming still reaches every alias.
  Copies are fed in: the recorded values are never modified.
* **Identical nets once.** A net whose layers equal an already scored net's gets its
  per-batch results again (e.g. minifloat's written net is usually a swept one).
* **Workers.** Batches are spread over worker threads (batch i to worker i mod W), each with
  its own net and single-threaded BLAS, and the per-batch outputs are handed back in batch
  order to ``scoring.run_forward_batches``, which accumulates the float32 sums and logs
  Caffe's lines as for a plain net.

Every batch is computed by exactly the layer sequence a plain net would run, from the same
inputs, with per-layer losses summed in the same order; so scores, per-batch lines and means
are bit-identical to a plain sequential run under the same BLAS threading (``plain=True``
runs that reference path). Memory is bounded by ``memory_bytes``: what does not fit is not
recorded, and those runs read their batches through a fresh data layer (streamed to the
workers) as Ristretto does. Nets whose results depend on the order of batches (random
rounding in TEST, data layers after other layers, file-writing layers) always run plainly.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from ristretto_cli import log as _log
from ristretto_cli.data.cache import batch_cache
from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.scoring import ScoreResult, run_forward_batches

#: Layers that only alias or forward their bottoms: not worth recording a boundary after them.
_CHEAP = frozenset({"Split", "Flatten", "Reshape", "Silence", "Input"})
#: Layers with effects beyond their tops (files): never run out of order.
_SIDE_EFFECTS = frozenset({"HDF5Output", "Python"})
_POLL = 0.2  # seconds between checks for errors and Ctrl-C while waiting
_KEEP_BATCHES = 16 << 20  # bytes of per-batch outputs a RunRecord may keep


# ------------------------------------------------------------------------ boundary snapshots
@dataclass
class Snapshot:
    """The blobs live at a layer boundary for one batch: one copy per distinct memory
    buffer, and how each blob views it."""
    arrays: list[np.ndarray]
    views: list[tuple]      # (blob name, array index, byte offset, shape, strides)
    loss: np.float32        # loss of the layers before the boundary (summed as Net.forward)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def take_snapshot(net, names: list[str], loss) -> Snapshot | None:
    """Copy the blobs ``names`` of ``net``; None when some blob's memory cannot be described
    as a view of a C-contiguous buffer (then the boundary is not used)."""
    index: dict[int, int] = {}
    arrays, views = [], []
    for name in names:
        a = net.blobs[name].data
        r = _root(a)
        if not r.flags.c_contiguous:
            return None
        j = index.get(id(r))
        if j is None:
            j = index[id(r)] = len(arrays)
            arrays.append(np.array(r, copy=True))
        views.append((name, j, _address(a) - _address(r), a.shape, a.strides))
    return Snapshot(arrays, views, np.float32(loss))


def restore(net, snap: Snapshot, buffers: list) -> None:
    """Give ``net``'s blobs fresh copies of the snapshot, preserving which blobs share memory.
    ``buffers`` (one list per worker and boundary) is reused from batch to batch."""
    for j, a in enumerate(snap.arrays):
        if j == len(buffers):
            buffers.append(np.empty_like(a))
        elif buffers[j].shape != a.shape or buffers[j].dtype != a.dtype:
            buffers[j] = np.empty_like(a)
        np.copyto(buffers[j], a)
    for name, j, offset, shape, strides in snap.views:
        buf = buffers[j]
        net.blobs[name].data = np.ndarray(shape, buf.dtype, buffer=buf, offset=offset, strides=strides)


def live_blobs(net, k: int) -> list[str]:
    """Blobs produced before layer ``k`` that a layer from ``k`` on reads, or that are net
    outputs: everything the rest of the net needs from its first ``k`` layers."""
    produced = {b.name for tops in net.top_vecs[:k] for b in tops if b.name in net.blobs}
    needed = {b.name for bottoms in net.bottom_vecs[k:] for b in bottoms}
    needed.update(net.output_names)
    return sorted(produced & needed)


def source_count(net) -> int:
    """Number of leading layers without bottoms (the data layers)."""
    d = 0
    while d < len(net.layers) and not net.bottom_vecs[d]:
        d += 1
    return d


def layer_keys(net) -> list[bytes]:
    """One digest per layer of everything that defines its computation (type, parameters,
    phase, blob names); equal digests in order mean equal nets (same weights file)."""
    keys = []
    for layer in net.layers:
        h = hashlib.sha256(layer.param.SerializeToString(deterministic=True))
        keys.append(h.digest())
    return keys


def _order_free(net, start: int) -> str | None:
    """Why layers from ``start`` on cannot run batch by batch out of order, or None."""
    for i in range(start, len(net.layers)):
        layer = net.layers[i]
        if not net.bottom_vecs[i]:
            return f"layer '{layer.name}' reads data after other layers"
        if layer.type in _SIDE_EFFECTS:
            return f"layer '{layer.name}' ({layer.type}) has side effects"
        lp = layer.param
        if lp.HasField("quantization_param") and \
                lp.quantization_param.rounding_scheme == caffe_pb2.QuantizationParameter.STOCHASTIC:
            return f"layer '{layer.name}' rounds stochastically"
    return None


# ------------------------------------------------------------------------ per-batch results
@dataclass
class BatchOutputs:
    loss: np.float32
    values: list[np.ndarray]   # per output (net order), flattened float32 copies

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.values)


@dataclass
class RunRecord:
    """One scoring run: Caffe's means (``result``), wall time, and how it was computed."""
    result: ScoreResult
    seconds: float
    how: str
    batches: list[BatchOutputs] | None = field(default=None, repr=False)


class _Cancelled(Exception):
    pass


class _Hub:
    """Hand-over between threads: batches (by index) and the first error."""

    def __init__(self, n: int):
        self.items: list = [None] * n
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.cancelled = False

    def put(self, i: int, value) -> None:
        with self.cond:
            self.items[i] = value
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            if self.error is None:
                self.error = exc
            self.cond.notify_all()

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()

    def get(self, i: int):
        with self.cond:
            while self.items[i] is None:
                if self.error is not None:
                    raise self.error
                if self.cancelled:
                    raise _Cancelled()
                self.cond.wait(_POLL)
            return self.items[i]


class _StoredFeed:
    """Recorded snapshots, all present."""

    def __init__(self, snapshots: list[Snapshot]):
        self.snapshots = snapshots

    def get(self, i: int) -> Snapshot:
        return self.snapshots[i]

    def done(self, i: int) -> None:
        pass

    def close(self) -> None:
        pass


class _StreamFeed:
    """A producer thread runs the data layers of ``net`` batch after batch and hands the
    boundary snapshots to the workers; it keeps them all (``keep``) or stays at most
    ``window`` batches ahead of the slowest worker."""

    def __init__(self, net, d: int, n: int, *, keep: bool, window: int, names: list[str]):
        self.hub = _Hub(n)
        self.keep = keep
        self.window = window
        self.consumed = [False] * n
        self.floor = 0
        self._thread = threading.Thread(target=self._produce, args=(net, d, n, names),
                                        name="quantize-data", daemon=True)
        self._thread.start()

    def _produce(self, net, d, n, names) -> None:
        try:
            for i in range(n):
                with self.hub.cond:
                    while not self.keep and i - self.floor >= self.window:
                        if self.hub.cancelled:
                            return
                        self.hub.cond.wait(_POLL)
                    if self.hub.cancelled:
                        return
                loss = np.float32(0)
                for li in range(d):
                    loss = np.float32(loss + net.forward(li, li))
                snap = take_snapshot(net, names, loss)
                if snap is None:
                    raise RistrettoError("the data layers' tops cannot be recorded")
                self.hub.put(i, snap)
        except BaseException as exc:  # handed to the workers, raised in the main thread
            self.hub.fail(exc)

    def get(self, i: int) -> Snapshot:
        return self.hub.get(i)

    def done(self, i: int) -> None:
        with self.hub.cond:
            self.consumed[i] = True
            if not self.keep:
                self.hub.items[i] = False  # consumed (not None: never waited for again)
            while self.floor < len(self.consumed) and self.consumed[self.floor]:
                self.floor += 1
            self.hub.cond.notify_all()

    def snapshots(self) -> list[Snapshot] | None:
        return list(self.hub.items) if self.keep else None

    def close(self) -> None:
        self.hub.cancel()
        self._thread.join()


class _Replay:
    """What ``run_forward_batches`` needs of a net, serving per-batch results in batch order
    (waiting for the workers), with an optional recorder and progress bar."""

    class _Blob:
        __slots__ = ("data",)

        def __init__(self):
            self.data = None

    def __init__(self, names, loss_weights, take, bar=None):
        self.output_names = list(names)
        self.blob_loss_weights = dict(loss_weights)
        self.blobs = {n: self._Blob() for n in names}
        self._take = take
        self._i = 0
        self._bar = bar

    def forward(self) -> np.float32:
        out = self._take(self._i)
        self._i += 1
        for name, v in zip(self.output_names, out.values):
            self.blobs[name].data = v
        if self._bar is not None:
            self._bar.update(1)
        return out.loss


class RecordingNet:
    """A net whose forward passes also record the per-batch outputs (and call ``after``)."""

    def __init__(self, net, after=None, bar=None):
        self.net = net
        self.output_names = net.output_names
        self.blob_loss_weights = net.blob_loss_weights
        self.blobs = net.blobs
        self.batches: list[BatchOutputs] = []
        self._after = after
        self._bar = bar

    def forward(self) -> np.float32:
        loss = self.net.forward()
        self.batches.append(_outputs(self.net, loss))
        if self._after is not None:
            self._after(self.net)
        if self._bar is not None:
            self._bar.update(1)
        return loss


def _outputs(net, loss) -> BatchOutputs:
    values = [np.array(net.blobs[n].data, np.float32, copy=True).reshape(-1) for n in net.output_names]
    return BatchOutputs(np.float32(loss), values)


@contextlib.contextmanager
def _bar(total: int, desc: str):
    bar = _log.progress(total=total, desc=desc, unit="batch")
    try:
        yield bar
    finally:
        bar.close()


# ------------------------------------------------------------------------ the engine
@dataclass
class _Store:
    k: int
    names: list[str]
    snapshots: list[Snapshot] | None = None   # complete after the baseline, else None


class Scorer:
    """Scores nets of one model over the same ``iterations`` TEST batches.

    Call ``baseline(net, make_net)`` first (``net`` built and loaded; ``make_net()`` builds
    another like it), then ``score(param, label)`` for each edited NetParameter.
    ``boundaries`` lists layer-name groups whose first member in the baseline net marks
    where later nets will start to differ (their blobs there are recorded).
    """

    def __init__(self, *, weights, weights_path: str, iterations: int, semantics: str = "ristretto",
                 seed: int | None = None, workers: int = 1, memory_bytes: int = 1 << 30,
                 plain: bool = False, progress: bool = True, memo_bytes: int = 64 << 20):
        self.weights = weights
        self.weights_path = weights_path
        self.iterations = int(iterations)
        self.semantics = semantics
        self.seed = seed
        self.workers = max(1, min(int(workers), self.iterations))
        self.memory_left = int(memory_bytes)
        self.plain = plain
        self.progress = progress
        self.memo_left = int(memo_bytes)
        self._memo: dict[bytes, tuple[str, list[BatchOutputs]]] = {}
        self._stores: list[_Store] = []
        self._base_keys: list[bytes] = []
        self._why_plain: str | None = None
        self.runs = 0
        self.batches_computed = 0
        self._stack = contextlib.ExitStack()

    def close(self) -> None:
        """Leave the batch cache (if one was opened) and drop what was recorded."""
        self._stack.close()
        self._stores.clear()
        self._memo.clear()

    # ---------------------------------------------------------------- building nets
    def build(self, param, *, verbose: bool = False, **kwargs):
        """A loaded net from ``param`` (state as given unless ``kwargs`` override)."""
        from ristretto_cli.net import Net
        if verbose:
            net = Net(param, semantics=self.semantics, seed=self.seed, verbose=True, **kwargs)
        else:
            with _log.quiet():
                net = Net(param, semantics=self.semantics, seed=self.seed, **kwargs)
        net.copy_trained_layers_from(self.weights, self.weights_path)
        return net

    # ---------------------------------------------------------------- baseline
    def baseline(self, net, make_net, boundaries: list[list[str]] = (), label: str = "baseline") -> RunRecord:
        """Score the float net and record what later runs reuse."""
        start = time.perf_counter()
        self._base_keys = layer_keys(net)
        d = source_count(net)
        self._why_plain = "plain mode" if self.plain else (
            "the net has no data layers in front" if d == 0 else _order_free(net, d))
        if self._why_plain is not None:
            logger.debug("scoring plainly: %s", self._why_plain)
            return self._plain(net, label, start)

        # Boundaries worth recording (besides the data layers' tops), in net order.
        per_batch_data = sum(a.nbytes for a in _distinct(net, live_blobs(net, d)))
        keep_data = per_batch_data * self.iterations <= self.memory_left
        if keep_data:
            self.memory_left -= per_batch_data * self.iterations
        else:
            # Later nets read the batches again through their own data layers: let those
            # share decoded batches through the batch cache, as far as the budget allows.
            self._stack.enter_context(batch_cache(max_bytes=self.memory_left))
            self.memory_left = 0
        index = {name: i for i, name in enumerate(net.layer_names)}
        wanted = sorted({min(index[n] for n in group if n in index)
                         for group in boundaries if any(n in index for n in group)})
        captures = {}
        for k in wanted:
            if k <= d or all(net.layers[i].type in _CHEAP for i in range(d, k)):
                continue
            names = live_blobs(net, k)
            cost = sum(a.nbytes for a in _distinct(net, names)) * self.iterations
            if cost > self.memory_left:
                continue
            self.memory_left -= cost
            captures[k] = _Store(k, names, [None] * self.iterations)

        nets = [make_net() for _ in range(self.workers)]
        data_names = live_blobs(net, d)
        feed = _StreamFeed(net, d, self.iterations, keep=keep_data, window=4 * self.workers, names=data_names)
        try:
            result, batches = self._execute(nets, d, feed, captures, label)
        finally:
            feed.close()
        if keep_data:
            self._stores.append(_Store(d, data_names, feed.snapshots()))
        for store in captures.values():
            if all(s is not None for s in store.snapshots):
                self._stores.append(store)
        self._stores.sort(key=lambda s: s.k)
        self._remember(hashlib.sha256(b"".join(self._base_keys)).digest(), label, batches)
        return _record(result, start, "full net, data read once", batches)

    # ---------------------------------------------------------------- other nets
    def score(self, param, label: str) -> RunRecord:
        """Score the net described by ``param`` (its ``state`` says TEST)."""
        start = time.perf_counter()
        first = self.build(param)
        keys = layer_keys(first)
        key = hashlib.sha256(b"".join(keys)).digest()
        if key in self._memo and not self.plain:
            origin, batches = self._memo[key]
            return self._replay(first, batches, label, start, f"identical to {origin}")
        if self._why_plain is not None or _order_free(first, source_count(first)) is not None:
            return self._plain(first, label, start, key=key)

        # Layers before the first difference compute what the baseline's did.
        c = next((i for i, (a, b) in enumerate(zip(keys, self._base_keys)) if a != b),
                 min(len(keys), len(self._base_keys)))
        store = None
        for s in self._stores:
            if s.k <= c and s.k < len(first.layers) and set(live_blobs(first, s.k)) <= set(s.names):
                store = s
        nets = [first] + [self.build(param) for _ in range(self.workers - 1)]
        if store is not None:
            feed = _StoredFeed(store.snapshots)
            k = store.k
            how = "full net" if k == source_count(first) else f"from layer '{first.layer_names[k]}' on"
        else:  # the batches were not recorded: read them again, as Ristretto does
            k = source_count(first)
            feed = _StreamFeed(self.build(param), k, self.iterations, keep=False, window=4 * self.workers,
                               names=live_blobs(first, k))
            how = "full net, data read again"
        try:
            result, batches = self._execute(nets, k, feed, {}, label)
        finally:
            feed.close()
        self._remember(key, label, batches)
        return _record(result, start, how, batches)

    # ---------------------------------------------------------------- running
    def _execute(self, nets, start: int, feed, captures: dict, label: str):
        n = self.iterations
        hub = _Hub(n)
        threads = [threading.Thread(target=self._work, args=(j, len(nets), net, start, feed, captures, hub),
                                    name=f"quantize-worker-{j}", daemon=True)
                   for j, net in enumerate(nets)]
        for t in threads:
            t.start()
        batches: list[BatchOutputs] = []

        def take(i):
            out = hub.get(i)
            batches.append(out)
            return out

        logger.info("Running for %d iterations.", n)
        try:
            with _bar(n, label if self.progress else None) as bar:
                replay = _Replay(nets[0].output_names, nets[0].blob_loss_weights, take,
                                 bar if self.progress else None)
                result = run_forward_batches(replay, n, log=True, progress=False)
        except BaseException:
            hub.cancel()
            if isinstance(feed, _StreamFeed):
                feed.hub.cancel()
            raise
        finally:
            for t in threads:
                t.join(timeout=None if hub.error is None and not hub.cancelled else 5)
        self.runs += 1
        self.batches_computed += n
        return result, batches

    def _work(self, j, stride, net, start, feed, captures, hub) -> None:
        try:
            with net.frozen_params():
                self._work_batches(j, stride, net, start, feed, captures, hub)
        except _Cancelled:
            return
        except BaseException as exc:
            hub.fail(exc)

    def _work_batches(self, j, stride, net, start, feed, captures, hub) -> None:
        buffers: list = []
        layers = len(net.layers)
        for i in range(j, self.iterations, stride):
            if hub.cancelled or hub.error is not None:
                return
            snap = feed.get(i)
            restore(net, snap, buffers)
            feed.done(i)
            loss = snap.loss
            for li in range(start, layers):
                store = captures.get(li)
                if store is not None:
                    store.snapshots[i] = take_snapshot(net, store.names, loss)
                # Per-layer float32 sum in layer order: what Net.forward accumulates.
                loss = np.float32(loss + net.forward(li, li))
            hub.put(i, _outputs(net, loss))

    def _plain(self, net, label, start, key=None) -> RunRecord:
        """Ristretto's way: this net's own data layers, batch after batch."""
        logger.info("Running for %d iterations.", self.iterations)
        with _bar(self.iterations, label if self.progress else None) as bar:
            rec = RecordingNet(net, bar=bar if self.progress else None)
            with net.frozen_params():
                result = run_forward_batches(rec, self.iterations, log=True, progress=False)
        self.runs += 1
        self.batches_computed += self.iterations
        self._remember(key or hashlib.sha256(b"".join(layer_keys(net))).digest(), label, rec.batches)
        return _record(result, start, "plain net", rec.batches)

    def _replay(self, net, batches, label, start, how) -> RunRecord:
        logger.info("Running for %d iterations.", self.iterations)
        it = iter(batches)
        replay = _Replay(net.output_names, net.blob_loss_weights, lambda i: next(it))
        result = run_forward_batches(replay, self.iterations, log=True, progress=False)
        return _record(result, start, how, batches)

    def _remember(self, key, label, batches) -> None:
        size = sum(b.nbytes for b in batches)
        if size <= self.memo_left:
            self.memo_left -= size
            self._memo[key] = (label, batches)


def _record(result, start: float, how: str, batches) -> RunRecord:
    """A RunRecord; the per-batch outputs stay attached only while they are small."""
    keep = sum(b.nbytes for b in batches) <= _KEEP_BATCHES
    return RunRecord(result, time.perf_counter() - start, how, batches if keep else None)


def _distinct(net, names: list[str]) -> list[np.ndarray]:
    """The distinct memory buffers behind ``names`` (at set-up time; an upper bound)."""
    seen, out = set(), []
    for name in names:
        r = _root(net.blobs[name].data)
        if id(r) not in seen:
            seen.add(id(r))
            out.append(r)
    return out


__all__ = ["Scorer", "RunRecord", "BatchOutputs", "RecordingNet", "Snapshot", "take_snapshot", "restore",
           "live_blobs",
           "source_count", "layer_keys"]
