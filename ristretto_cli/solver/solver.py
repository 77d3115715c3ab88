"""The Solver: Caffe's Solver/SGDSolver loop (Solve, Step, Test, ApplyUpdate, snapshots).

Log lines keep Caffe's wording and C ``%g`` numbers, so Caffe's log parsers read them.
Losses, test scores and the smoothed loss are float32 sums in Caffe's order.

Exact resume: every training iteration reseeds the train net with ``(seed, 0, iter)`` and
every test pass the test net with ``(seed, 1 + net, iter)``, so dropout, stochastic rounding
and random crops never depend on what ran before in this process; the data cursors and
generator states go into the snapshot (see ``snapshot.py``).
"""

from __future__ import annotations

import secrets
import time

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import fmt_g, logger, progress
from ristretto_cli.solver import snapshot as snap
from ristretto_cli.solver.lr_policy import check_policy, learning_rate
from ristretto_cli.solver.nets import build_test_nets, build_train_net
from ristretto_cli.solver.signals import NONE, SNAPSHOT, STOP
from ristretto_cli.solver.updates import (
    HISTORY_SETS,
    check_solver_type,
    clip_gradients,
    compute_update,
    normalize,
    regularize,
)

_F = np.float32


class Solver:
    """Trains the net of a SolverParameter (already read and upgraded).

    ``action`` is polled for ``"none"``/``"stop"``/``"snapshot"`` (a SignalHandler).
    ``show_progress`` draws a bar over iterations (only on a terminal).
    """

    def __init__(self, param, *, semantics: str = "ristretto", action=None,
                 show_progress: bool = True):
        from ristretto_cli.io import format_message
        logger.info("Initializing solver from parameters: \n%s", format_message(param).rstrip("\n"))
        self.param = param
        self.action = action or (lambda: NONE)
        self.show_progress = show_progress
        if param.average_loss < 1:
            raise RistrettoError(f"average_loss must be at least 1 (got {param.average_loss})")
        if param.iter_size < 1:
            raise RistrettoError(f"iter_size must be at least 1 (got {param.iter_size})")
        check_solver_type(param)
        if param.max_iter > 0:
            check_policy(param)
        if param.snapshot_format not in (param.HDF5, param.BINARYPROTO):
            raise RistrettoError("Unsupported snapshot format.")
        if param.snapshot > 0 or param.snapshot_after_train:
            if param.snapshot > 0 and not param.HasField("snapshot_prefix"):
                raise RistrettoError("In solver params, snapshot is specified but "
                                     "snapshot_prefix is not")
            snap.check_snapshot_prefix(param.snapshot_prefix)
        # Caffe seeds from /dev/urandom without random_seed; the seed drawn is kept in the
        # snapshots so that a resumed run continues the same random streams.
        self.seed = int(param.random_seed) if param.random_seed >= 0 else secrets.randbits(62)
        self.net = build_train_net(param, semantics=semantics, seed=self.seed)
        self.test_nets = build_test_nets(param, semantics=semantics, seed=self.seed)
        logger.info("Solver scaffolding done.")
        sets = HISTORY_SETS[param.type]
        # All first history blobs for params 0..P-1, then all second ones (Caffe's order).
        self.history = [np.zeros_like(p.blob.data) for _ in range(sets)
                        for p in self.net.learnable_params]
        self.iter = 0
        self.current_step = 0
        self.requested_early_exit = False
        #: ``(on_start, on_gradients_ready)`` pairs, called in each iteration before its
        #: passes and before its update (pycaffe's ``add_callback``).
        self.callbacks: list[tuple] = []
        self.losses: list[np.float32] = []
        self.smoothed_loss = _F(0)
        self._bar = None

    # ------------------------------------------------------------------ the loop
    def solve(self) -> None:
        p = self.param
        logger.info("Solving %s", self.net.name)
        logger.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        start_iter = self.iter
        self._bar = progress(total=max(p.max_iter - self.iter, 0), desc="train", unit="iter") \
            if self.show_progress else None
        try:
            self.step(p.max_iter - self.iter)
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            logger.info("Optimization stopped early.")
            return
        # One more forward pass (no update) to show the final loss, and the final test.
        if p.display and self.iter % p.display == 0:
            self.net.reseed(self.seed, 0, self.iter)
            loss = self.net.forward()
            self._update_smoothed_loss(loss, start_iter)
            logger.info("Iteration %d, loss = %s", self.iter, fmt_g(self.smoothed_loss))
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        logger.info("Optimization Done.")

    def step(self, iters: int) -> None:
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + iters
        self.losses = []
        self.smoothed_loss = _F(0)
        timer = time.perf_counter()
        iterations_last = self.iter
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = bool(p.display) and self.iter % p.display == 0
            self.net.reseed(self.seed, 0, self.iter)
            for on_start, _ in self.callbacks:
                on_start()
            loss = _F(0)
            for _ in range(p.iter_size):
                loss += self.net.forward_backward()
            loss /= _F(p.iter_size)
            self._update_smoothed_loss(loss, start_iter)
            if display:
                lapse = _F(time.perf_counter() - timer)
                per_s = _F(self.iter - iterations_last) / (lapse if lapse else _F(1))
                logger.info("Iteration %d (%s iter/s, %ss/%d iters), loss = %s", self.iter,
                            fmt_g(per_s), fmt_g(lapse), p.display, fmt_g(self.smoothed_loss))
                timer = time.perf_counter()
                iterations_last = self.iter
                self._log_outputs(self.net, "Train", [b.data for b in self.net.output_blobs])
            for _, on_gradients_ready in self.callbacks:
                on_gradients_ready()
            self.apply_update(display)
            if self._bar is not None:
                self._bar.update(1)
            request = self.action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SNAPSHOT:
                self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break

    def _update_smoothed_loss(self, loss, start_iter: int) -> None:
        """Running mean over the last ``average_loss`` losses, in float32 as Caffe."""
        average = self.param.average_loss
        loss = _F(loss)
        if len(self.losses) < average:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = (self.smoothed_loss * _F(size - 1) + loss) / _F(size)
        else:
            idx = (self.iter - start_iter) % average
            self.smoothed_loss += (loss - self.losses[idx]) / _F(average)
            self.losses[idx] = loss

    @staticmethod
    def _log_outputs(net, kind: str, values) -> None:
        """``    <kind> net output #n: name = v`` per element, with ``(* w = w*v loss)``."""
        n = 0
        for name, vals in zip(net.output_names, values):
            weight = _F(net.blob_loss_weights.get(name, 0.0))
            for v in np.asarray(vals, np.float32).reshape(-1):
                extra = f" (* {fmt_g(weight)} = {fmt_g(weight * v)} loss)" if weight else ""
                logger.info("    %s net output #%d: %s = %s%s", kind, n, name, fmt_g(v), extra)
                n += 1

    # ------------------------------------------------------------------ testing
    def test_all(self) -> None:
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(i)

    def test(self, test_id: int) -> None:
        p = self.param
        logger.info("Iteration %d, Testing net (#%d)", self.iter, test_id)
        net = self.test_nets[test_id]
        net.share_trained_layers_with(self.net)
        net.reseed(self.seed, 1 + test_id, self.iter)
        iterations = p.test_iter[test_id]
        scores = None
        loss = _F(0)
        # Weights are read-only while testing: quantized layers trim them once per test.
        with net.frozen_params():
            for _ in range(iterations):
                request = self.action()
                while request != NONE:
                    if request == SNAPSHOT:
                        self.snapshot()
                    elif request == STOP:
                        self.requested_early_exit = True
                    request = self.action()
                if self.requested_early_exit:
                    break
                iter_loss = net.forward()
                if p.test_compute_loss:
                    loss += iter_loss
                values = [b.data.reshape(-1) for b in net.output_blobs]
                if scores is None:
                    scores = [v.astype(np.float32, copy=True) for v in values]
                else:
                    for s, v in zip(scores, values):
                        s += v
        if self.requested_early_exit:
            logger.info("Test interrupted.")
            return
        if p.test_compute_loss:
            loss /= _F(iterations)
            logger.info("Test loss: %s", fmt_g(loss))
        if scores is not None:
            self._log_outputs(net, "Test", [s / _F(iterations) for s in scores])

    # ------------------------------------------------------------------ update
    def apply_update(self, display: bool = False) -> None:
        p = self.param
        rate, self.current_step = learning_rate(p, self.iter, self.current_step)
        if display:
            logger.info("Iteration %d, lr = %s", self.iter, fmt_g(rate))
        params = self.net.learnable_params
        clipped = clip_gradients([lp.blob.diff for lp in params], p.clip_gradients)
        if clipped is not None:
            logger.info("Gradient clipping: scaling down gradients (L2 norm %s > %s) by scale "
                        "factor %s", fmt_g(clipped[0]), fmt_g(_F(p.clip_gradients)),
                        fmt_g(clipped[1]))
        n = len(params)
        weight_decay = _F(p.weight_decay)
        for i, lp in enumerate(params):
            blob = lp.blob
            normalize(blob.diff, p.iter_size)
            regularize(blob.data, blob.diff, weight_decay * _F(lp.decay_mult), p.regularization_type)
            compute_update(p, blob.diff, self.history[i::n], rate * _F(lp.lr_mult), self.iter)
        for lp in params:
            lp.blob.data -= lp.blob.diff  # in place: test nets alias these arrays
        self.iter += 1

    # ------------------------------------------------------------ snapshot/resume
    def snapshot(self) -> tuple[str, str]:
        """Write ``<prefix>_iter_<iter>`` weights and solver state; returns both paths."""
        p = self.param
        model = snap.write_model(self.net, p.snapshot_prefix, self.iter, p.snapshot_format,
                                 p.snapshot_diff)
        resume = {"seed": self.seed, "train": self.net.state_dict(),
                  "test": [net.state_dict() for net in self.test_nets]}
        state = snap.make_state(self.iter, model, self.current_step, self.history, resume)
        return model, snap.write_state(state, p.snapshot_prefix, p.snapshot_format)

    def restore(self, path: str) -> None:
        """Continue from a ``.solverstate`` / ``.solverstate.h5`` (ours or Caffe's)."""
        from ristretto_cli.io import read_weights
        path = str(path)
        state = snap.read_state(path)
        self.iter = state.iter
        if state.HasField("learned_net"):
            weights = snap.learned_net_path(state.learned_net, path)
            self.net.copy_trained_layers_from(read_weights(weights), path=weights)
        self.current_step = state.current_step
        logger.info("SGDSolver: restoring history")
        snap.restore_history(self.history, state, path)
        info = snap.resume_info(state, path)
        if info is None:
            logger.info("%s has no resume state (written by Caffe?): data layers start from "
                        "their beginning", path)
            return
        self.seed = int(info["seed"])
        self.net.load_state_dict(info.get("train", {}))
        tests = info.get("test", [])
        for net, net_state in zip(self.test_nets, tests):
            net.load_state_dict(net_state)
