"""Scoring a net over forward batches, as ``caffe test`` does (solver_and_cli.md §1.2, §6).

``run_forward_batches`` runs ``iterations`` forward passes and accumulates, in float32 and
in batch order, the loss and every element of every net output (outputs in the net's order,
i.e. alphabetical), logging Caffe's lines::

    Batch <i>, <name> = <value>
    Loss: <mean loss>
    <name> = <mean>[ (* <w> = <w*mean> loss)]

``ristretto quantize`` scores its candidate nets with the same function.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ristretto_cli import log as _log
from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import fmt_g, hold_records, logger


@dataclass
class ScoreResult:
    """Means over the batches: one ``(output name, element index, mean, loss weight)`` per
    output element in Caffe's order, the mean loss, and the number of batches."""
    means: list[tuple[str, int, np.float32, float]]
    loss: np.float32
    batches: int
    batch_losses: list[np.float32] = field(default_factory=list)

    def score(self, output_name: str | None = None) -> float:
        """Mean of the first element of ``output_name`` (default: the first output), the
        number Ristretto's tool uses as a net's score."""
        for name, index, value, _ in self.means:
            if index == 0 and (output_name is None or name == output_name):
                return float(value)
        names = sorted({m[0] for m in self.means})
        raise RistrettoError(f"the net has no output '{output_name}' (outputs: {', '.join(names)})")

    def value(self, output_name: str, index: int = 0) -> np.float32:
        for name, i, value, _ in self.means:
            if name == output_name and i == index:
                return value
        raise RistrettoError(f"the net has no output element {output_name}[{index}]")


def run_forward_batches(net, iterations: int, *, log: bool = True, progress: bool = True) -> ScoreResult:
    """``iterations`` forward passes of ``net``, scored exactly as ``caffe test``.

    All sums are float32, accumulated in batch order; means are float32 sums divided by the
    iteration count in float32 (so the printed ``%g`` digits equal Caffe's).
    """
    if iterations <= 0:
        raise RistrettoError(f"the number of iterations must be positive, got {iterations}")
    names = list(net.output_names)
    if not names:
        raise RistrettoError("the net has no outputs to score: it needs an output blob that no layer "
                             "consumes (e.g. an Accuracy or loss layer's top)")
    say = logger.info if log else None
    loss = np.float32(0)
    sums: list[np.ndarray] | None = None
    batch_losses = []
    steps = _progress(range(iterations), iterations) if progress else range(iterations)
    for i in steps:
        iter_loss = np.float32(net.forward())
        loss = np.float32(loss + iter_loss)
        batch_losses.append(iter_loss)
        values = [np.asarray(net.blobs[n].data, np.float32).reshape(-1) for n in names]
        if sums is None:
            sums = [v.copy() for v in values]
        else:
            for j, (s, v) in enumerate(zip(sums, values)):
                if v.size != s.size:
                    raise RistrettoError(f"output '{names[j]}' has {v.size} values in batch {i} but "
                                         f"{s.size} in batch 0; scores need a fixed output size")
                np.add(s, v, out=s)
        if say is not None:
            for n, v in zip(names, values):
                for x in v.tolist():
                    say("Batch %d, %s = %s", i, n, fmt_g(np.float32(x)))
    count = np.float32(iterations)
    loss = np.float32(loss / count)
    if say is not None:
        say("Loss: %s", fmt_g(loss))
    means = []
    for n, s in zip(names, sums):
        weight = float(net.blob_loss_weights.get(n, 0.0))
        for k, total in enumerate(s.tolist()):
            mean = np.float32(np.float32(total) / count)
            means.append((n, k, mean, weight))
            if say is not None:
                extra = ""
                if weight:
                    w32 = np.float32(weight)
                    extra = f" (* {fmt_g(w32)} = {fmt_g(np.float32(w32 * mean))} loss)"
                say("%s = %s%s", n, fmt_g(mean), extra)
    return ScoreResult(means, loss, iterations, batch_losses)


def _progress(iterable, total):
    return _log.progress(iterable, total=total, desc="test", unit="batch")


def log_device(gpu: str) -> None:
    """Caffe's "Use CPU." line, or for a GPU request (none is available) one warning instead."""
    if gpu:
        logger.warning("no GPU backend is available: running on the CPU (--gpu=%s ignored)", gpu)
    else:
        logger.info("Use CPU.")


def test_model(model: str, weights: str, *, iterations: int = 50, phase: str = "TEST", level: int = 0,
               stage: str = "", gpu: str = "", semantics: str = "ristretto", seed: int | None = None,
               progress: bool = True) -> ScoreResult:
    """``caffe test``: build the net for ``phase`` (TEST by default) with ``level`` and the
    comma-separated ``stage`` list (an unset flag still gives Caffe's one empty stage ""),
    load ONE weights file, then score ``iterations`` batches."""
    from ristretto_cli.io import read_net_param, read_weights
    from ristretto_cli.net import TEST, TRAIN, Net
    if not model:
        raise RistrettoError("Need a model definition to score.")
    if not weights:
        raise RistrettoError("Need model weights to score.")
    if iterations <= 0:
        raise RistrettoError(f"--iterations must be positive, got {iterations}")
    # Caffe's order: "Use CPU.", the net's lines, then the weights file's. Held back until all
    # succeed (a bad input prints only its error line), stamped as logged, so in time order.
    with hold_records() as held:
        log_device(gpu)
        param = read_net_param(model)
        net = Net(param, TRAIN if phase.upper() == "TRAIN" else TEST, level=level, stages=stage.split(","),
                  semantics=semantics, seed=seed, verbose=True)
        net.copy_trained_layers_from(read_weights(weights), weights)
    held.release()
    logger.info("Running for %d iterations.", iterations)
    with net.frozen_params():
        return run_forward_batches(net, iterations, log=True, progress=progress)
