"""The Solver on a tiny InnerProduct + EuclideanLoss net with fixed inputs, against a float64
reference written from the spec's formulas; display/test log lines; snapshots; errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from solver_support import (
    B0,
    DROPOUT_NET,
    W0,
    capture_log,
    feed_tiny,
    rate_of,
    reference_train,
    solver_param,
    tiny_loss_and_grads,
)

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import (
    blob_diff_to_array,
    blob_to_array,
    format_message,
    parse_text,
    read_solver_param,
    read_solverstate,
    read_weights,
)
from ristretto_cli.log import fmt_g
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import Solver

ITERS = 6
BASE = f"max_iter: {ITERS} snapshot_after_train: false random_seed: 1 "


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def make(text, net=None, **kw):
    """The test's solver fields over BASE (set scalars override, as protobuf MergeFrom)."""
    param = solver_param(BASE, net, **kw)
    param.MergeFrom(parse_text(text, caffe_pb2.SolverParameter()))
    return param


def run(text, net=None, **kw):
    solver = Solver(make(text, net, **kw), show_progress=False)
    if net is None:
        feed_tiny(solver)
    solver.solve()
    return solver


def assert_matches_reference(solver, iters=ITERS, **kw):
    want, _ = reference_train(solver.param, iters, **kw)
    for lp, w in zip(solver.net.learnable_params, want):
        np.testing.assert_allclose(lp.blob.data, w, rtol=2e-5, atol=2e-6)
    # the weights really moved, so the comparison means something
    assert not np.allclose(solver.net.learnable_params[0].blob.data, W0, atol=1e-4)


SOLVERS = {
    "SGD": 'type: "SGD" base_lr: 0.1 momentum: 0.9',
    "Nesterov": 'type: "Nesterov" base_lr: 0.1 momentum: 0.9',
    "AdaGrad": 'type: "AdaGrad" base_lr: 0.1',
    "RMSProp": 'type: "RMSProp" base_lr: 0.01 rms_decay: 0.98',
    "AdaDelta": 'type: "AdaDelta" base_lr: 1.0 momentum: 0.95 delta: 1e-6',
    "Adam": 'type: "Adam" base_lr: 0.05 momentum: 0.9 momentum2: 0.999',
}


@pytest.mark.parametrize("kind", sorted(SOLVERS))
def test_solver_types_match_formulas(kind):
    solver = run(SOLVERS[kind] + ' lr_policy: "fixed" weight_decay: 0.01')
    assert solver.iter == ITERS
    assert_matches_reference(solver)
    assert len(solver.history) == (2 if kind in ("AdaDelta", "Adam") else 1) * 2


POLICIES = {
    "fixed": "",
    "step": "gamma: 0.5 stepsize: 2",
    "exp": "gamma: 0.8",
    "inv": "gamma: 0.1 power: 0.75",
    "multistep": "gamma: 0.3 stepvalue: 1 stepvalue: 4",
    "poly": "power: 1.5",
    "sigmoid": "gamma: 0.7 stepsize: 3",
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_lr_policies(policy):
    with capture_log() as lines:
        solver = run(f'base_lr: 0.1 momentum: 0.5 display: 1 lr_policy: "{policy}" '
                     + POLICIES[policy])
    assert_matches_reference(solver)
    printed = [float(m.group(1)) for ln in lines if (m := re.match(r"Iteration \d+, lr = (\S+)$", ln))]
    want = [rate_of(solver.param, it) for it in range(ITERS)]
    np.testing.assert_allclose(printed, want, rtol=1e-5)
    if policy == "multistep":
        assert [ln for ln in lines if ln.startswith("MultiStep")] == [
            "MultiStep Status: Iteration 1, step = 1", "MultiStep Status: Iteration 4, step = 2"]


def test_weight_decay_l1_and_multipliers():
    solver = run('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.05 '
                 'regularization_type: "L1"', w_lr=3, b_lr=0.5)
    assert_matches_reference(solver, lr_mults=(3.0, 0.5))


def test_lr_mult_zero_freezes_a_parameter():
    solver = run('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 weight_decay: 0.05', b_lr=0)
    assert np.array_equal(solver.net.learnable_params[1].blob.data, B0)
    assert_matches_reference(solver, lr_mults=(1.0, 0.0))


def test_iter_size_and_clipping_before_normalisation():
    _, grads = tiny_loss_and_grads(W0.astype(float), B0.astype(float))
    norm = np.sqrt(sum((g**2).sum() for g in grads))
    clip = 1.5 * norm  # above one pass's norm, below the 2-pass sum's: clips only if summed first
    with capture_log() as lines:
        solver = run(f'base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 iter_size: 2 '
                     f'clip_gradients: {clip}')
    assert_matches_reference(solver)
    clipped = [ln for ln in lines if ln.startswith("Gradient clipping")]
    assert clipped and re.match(r"Gradient clipping: scaling down gradients \(L2 norm \S+ > \S+\) "
                                r"by scale factor \S+$", clipped[0])
    assert float(clipped[0].split("factor ")[1]) == pytest.approx(clip / (2 * norm), rel=1e-5)


def test_legacy_solver_type_enum(tmp_path):
    net = solver_param("").net_param
    path = tmp_path / "legacy.prototxt"
    path.write_text("net_param {\n" + format_message(net) + "}\n" + BASE
                    + 'solver_type: NESTEROV base_lr: 0.1 momentum: 0.9 lr_policy: "fixed"\n')
    param = read_solver_param(path)
    assert param.type == "Nesterov" and not param.HasField("solver_type")
    solver = Solver(param, show_progress=False)
    feed_tiny(solver)
    solver.solve()
    assert_matches_reference(solver)


def test_display_lines_and_smoothed_loss():
    with capture_log() as lines:
        solver = run('base_lr: 0.05 lr_policy: "fixed" display: 1 average_loss: 3 '
                     'test_iter: 2 test_interval: 3 test_initialization: false')
    _, losses = reference_train(solver.param, ITERS)
    heads = [ln for ln in lines if re.match(r"Iteration \d+ \(", ln)]
    assert len(heads) == ITERS
    for it, line in enumerate(heads):
        m = re.match(rf"Iteration {it} \((\S+) iter/s, (\S+)s/1 iters\), loss = (\S+)$", line)
        assert m, line
        smoothed = np.mean(losses[max(0, it - 2):it + 1])
        assert float(m.group(3)) == pytest.approx(smoothed, rel=1e-5)
    outputs = [ln for ln in lines if ln.startswith("    Train net output")]
    assert len(outputs) == ITERS
    m = re.match(r"    Train net output #0: loss = (\S+) \(\* 1 = (\S+) loss\)$", outputs[0])
    assert m and m.group(1) == m.group(2) == fmt_g(np.float32(losses[0]))
    assert "Iteration 0, lr = 0.05" in lines
    # tests at 3 and 6 (not at 0); the test net shares the trained weights
    assert [ln for ln in lines if "Testing net" in ln] == [
        "Iteration 3, Testing net (#0)", "Iteration 6, Testing net (#0)"]
    tests = [ln for ln in lines if ln.startswith("    Test net output")]
    final_loss, _ = tiny_loss_and_grads(*reference_train(solver.param, ITERS)[0])
    m = re.match(r"    Test net output #0: loss = (\S+) \(\* 1 = \S+ loss\)$", tests[-1])
    assert float(m.group(1)) == pytest.approx(final_loss, rel=1e-5)
    assert lines[-1] == "Optimization Done."
    assert f"Iteration {ITERS}, loss = " in "\n".join(lines)


def test_snapshots_binary_and_after_train(tmp_path):
    with capture_log() as lines:
        solver = run('base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 snapshot: 4 '
                     'snapshot_prefix: "snap/tiny" snapshot_after_train: true snapshot_diff: true'
                     .replace("snap/", str(tmp_path) + "/"))
    prefix = str(tmp_path / "tiny")
    assert f"Snapshotting to binary proto file {prefix}_iter_4.caffemodel" in lines
    assert f"Snapshotting solver state to binary proto file {prefix}_iter_4.solverstate" in lines
    assert f"Snapshotting to binary proto file {prefix}_iter_6.caffemodel" in lines
    state = read_solverstate(f"{prefix}_iter_6.solverstate")
    assert state.iter == 6 and state.learned_net == f"{prefix}_iter_6.caffemodel"
    assert len(state.history) == 2
    np.testing.assert_array_equal(blob_to_array(state.history[1]), solver.history[1])
    model = read_weights(f"{prefix}_iter_6.caffemodel")
    ip = next(layer for layer in model.layer if layer.name == "ip")
    np.testing.assert_array_equal(blob_to_array(ip.blobs[0]), solver.net.learnable_params[0].blob.data)
    assert blob_diff_to_array(ip.blobs[0]) is not None  # snapshot_diff
    assert [layer.phase for layer in model.layer] == [0] * len(model.layer)  # TRAIN on every layer
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary files left


def test_snapshot_hdf5(tmp_path):
    solver = run('base_lr: 0.1 lr_policy: "fixed" snapshot: 3 snapshot_format: HDF5 '
                 'snapshot_prefix: "h"')
    model = read_weights("h_iter_6.caffemodel.h5")
    ip = next(layer for layer in model.layer if layer.name == "ip")
    np.testing.assert_array_equal(blob_to_array(ip.blobs[1]), solver.net.learnable_params[1].blob.data)
    assert read_solverstate("h_iter_3.solverstate.h5").iter == 3


def test_action_requests_snapshot_and_stop():
    actions = iter(["none", "snapshot", "none", "stop"])
    param = make('base_lr: 0.1 lr_policy: "fixed" snapshot_prefix: "a" snapshot_after_train: true')
    solver = Solver(param, action=lambda: next(actions, "none"), show_progress=False)
    feed_tiny(solver)
    with capture_log() as lines:
        solver.solve()
    assert solver.iter == 4 and solver.requested_early_exit
    assert "Snapshotting to binary proto file a_iter_2.caffemodel" in lines
    assert "Snapshotting to binary proto file a_iter_4.caffemodel" in lines  # final snapshot
    assert lines[-1] == "Optimization stopped early."


def test_stop_during_test_interrupts_it():
    actions = iter(["none", "none", "none", "stop"])  # after 2 updates, then 2nd test batch
    param = make('base_lr: 0.1 lr_policy: "fixed" test_iter: 5 test_interval: 2 '
                 "test_initialization: false")
    solver = Solver(param, action=lambda: next(actions, "none"), show_progress=False)
    feed_tiny(solver)
    with capture_log() as lines:
        solver.solve()
    assert solver.iter == 2 and "Test interrupted." in lines


def test_randomness_depends_on_seed_only():
    def final(seed):
        s = run(f'base_lr: 0.1 lr_policy: "fixed" random_seed: {seed}', net=DROPOUT_NET)
        return s.net.learnable_params[0].blob.data.copy()
    a, b, c = final(3), final(3), final(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("text, message", [
    ('type: "Foo" lr_policy: "fixed"', "Unknown solver type: Foo"),
    ('lr_policy: "fixed" average_loss: 0', "average_loss"),
    ('lr_policy: "nope"', "Unknown learning rate policy: nope"),
    ('lr_policy: "fixed" test_iter: 1', "test_interval"),
    ('lr_policy: "fixed" snapshot: 1 snapshot_prefix: "missing/dir/x"', "Cannot write to snapshot prefix"),
    ('lr_policy: "fixed" net: "other.prototxt"', "must not contain more than one"),
])
def test_errors(text, message):
    with pytest.raises(RistrettoError, match=message):
        Solver(make(text), show_progress=False)


def test_no_train_net():
    with pytest.raises(RistrettoError, match="must specify a train net"):
        Solver(parse_text('lr_policy: "fixed"', caffe_pb2.SolverParameter()), show_progress=False)
