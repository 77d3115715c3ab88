"""Where Caffe 1.0's CPU solver rounds, checks or signs differently from a naive formula:
learning rates to the last float32 bit, L1's sign of NaN, CHECKs on NaN parameters.

References are written by hand from Caffe's C++ (sgd_solver.cpp GetLearningRate and
Regularize, math_functions.hpp caffe_sign), in the precision C++ gives each operation: with
<cmath>'s overloads ``pow(float, float)`` and ``exp(float)`` are float functions (emulated by
rounding the double result once), while ``pow(float, int)`` promotes to double.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import updates
from ristretto_cli.solver.lr_policy import check_policy, learning_rate

F = np.float32
ITERS = range(0, 400, 1)


def param(policy, **fields):
    p = caffe_pb2.SolverParameter(lr_policy=policy, base_lr=0.01, **fields)
    return p


def rates(p, iters=ITERS):
    return [learning_rate(p, it, 0)[0] for it in iters]


def powf(x, y) -> np.float32:
    """C powf on float arguments: the exact power rounded once to float."""
    return F(math.pow(float(F(x)), float(F(y))))


# ------------------------------------------------------------ float policies, bit for bit
def test_inv_is_float_powf_times_base_lr():
    # rate = base_lr * pow(Dtype(1) + gamma*iter, -power): float pow, float product.
    p = param("inv", gamma=1e-4, power=0.75)
    want = [F(p.base_lr) * powf(F(1) + F(p.gamma) * F(it), -F(p.power)) for it in ITERS]
    assert [float(r) for r in rates(p)] == [float(w) for w in want]


def test_poly_is_float_powf_times_base_lr():
    p = param("poly", power=1.5, max_iter=1000)
    want = [F(p.base_lr) * powf(F(1) - F(it) / F(p.max_iter), p.power) for it in ITERS]
    assert [float(r) for r in rates(p)] == [float(w) for w in want]


def test_sigmoid_is_float_expf_chain():
    # base_lr * (1.f / (1.f + exp(-gamma * (float(iter) - float(stepsize))))), all float.
    p = param("sigmoid", gamma=0.01, stepsize=100)
    want = []
    for it in ITERS:
        e = F(math.exp(float(-F(p.gamma) * (F(it) - F(p.stepsize)))))
        want.append(F(p.base_lr) * (F(1) / (F(1) + e)))
    assert [float(r) for r in rates(p)] == [float(w) for w in want]


@pytest.mark.parametrize("policy, fields", [
    ("step", dict(gamma=0.7, stepsize=3)),
    ("exp", dict(gamma=0.999)),
    ("multistep", dict(gamma=0.3, stepvalue=[5, 50, 200])),
])
def test_integer_power_policies_round_once_from_double(policy, fields):
    # pow(float, int) promotes to double; base_lr * that is a double, rounded once to float.
    p = param(policy, **fields)
    step, got, want = 0, [], []
    for it in ITERS:
        rate, step = learning_rate(p, it, step)
        got.append(float(rate))
        n = {"step": it // p.stepsize if p.stepsize else 0, "exp": it,
             "multistep": step}[policy]
        want.append(float(F(float(F(p.base_lr)) * float(F(p.gamma)) ** n)))
    assert got == want


def test_poly_without_max_iter_is_nan_without_a_warning():
    # Caffe divides 0/0 in float (NaN) and says nothing; pycaffe's step() can get here.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rate, _ = learning_rate(param("poly", power=1.0), 0, 0)
    assert np.isnan(rate)


def test_nan_gamma_fails_the_gamma_check():
    # CHECK_GE(gamma, 0) is false for NaN.
    with pytest.raises(RistrettoError, match="gamma >= 0"):
        check_policy(param("exp", gamma=float("nan")))


# ------------------------------------------------------------------ L1 regularisation
def test_l1_sign_of_nan_is_zero():
    # caffe_sign(x) = (0 < x) - (x < 0): 0 for NaN, so the gradient is left alone.
    w = np.array([np.nan, -0.0, 2.0, -3.0], F)
    g = np.array([0.5, 0.5, 0.5, 0.5], F)
    updates.regularize(w, g, F(0.25), "L1")
    assert g.tolist() == [0.5, 0.5, 0.75, 0.25]


# ------------------------------------------------- history blobs in the state, and resume
def _tiny_solver(text):
    from solver_support import feed_tiny, solver_param

    from ristretto_cli.solver import Solver
    solver = Solver(solver_param("random_seed: 1 snapshot_after_train: false " + text),
                    show_progress=False)
    feed_tiny(solver)
    return solver


def _adam_reference(iters):
    """Caffe's Adam on the tiny net in float64 (weights lr_mult 1, bias lr_mult 2, no decay):
    returns (params, m, v) after ``iters`` updates, t = iter + 1."""
    from solver_support import B0, W0, tiny_loss_and_grads
    b1, b2, eps, base = float(F(0.9)), float(F(0.99)), float(F(1e-8)), float(F(0.05))
    params = [W0.astype(float), B0.astype(float)]
    m = [np.zeros_like(q) for q in params]
    v = [np.zeros_like(q) for q in params]
    for it in range(iters):
        _, grads = tiny_loss_and_grads(*params)
        t = it + 1
        corr = math.sqrt(1 - b2**t) / (1 - b1**t)
        for i, (g, lr) in enumerate(zip(grads, (base, 2 * base))):
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            params[i] = params[i] - lr * corr * m[i] / (np.sqrt(v[i]) + eps)
    return params, m, v


ADAM = ('type: "Adam" base_lr: 0.05 momentum: 0.9 momentum2: 0.99 lr_policy: "multistep" '
        "gamma: 1 stepvalue: 1 stepvalue: 2 ")


def test_adam_state_holds_m_then_v_and_resume_continues_t(tmp_path):
    from ristretto_cli.io import blob_to_array, read_solverstate
    solver = _tiny_solver(ADAM + f'max_iter: 3 snapshot: 3 snapshot_prefix: "{tmp_path}/a"')
    solver.solve()
    state = read_solverstate(f"{tmp_path}/a_iter_3.solverstate")
    assert state.iter == 3 and state.current_step == 2  # one multistep per iteration 1, 2
    _, m, v = _adam_reference(3)
    hist = [blob_to_array(h) for h in state.history]
    assert len(hist) == 4  # all params' m, then all params' v
    for got, want in zip(hist, m + v):
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-9)
    # Resumed to 6 iterations, t goes on 4, 5, 6 (a restarted t would change the steps).
    resumed = _tiny_solver(ADAM + "max_iter: 6")
    resumed.restore(f"{tmp_path}/a_iter_3.solverstate")
    assert (resumed.iter, resumed.current_step) == (3, 2)
    resumed.solve()
    straight = _tiny_solver(ADAM + "max_iter: 6")
    straight.solve()
    want, _, _ = _adam_reference(6)
    for a, b, w in zip(resumed.net.learnable_params, straight.net.learnable_params, want):
        assert a.blob.data.tobytes() == b.blob.data.tobytes()
        np.testing.assert_allclose(a.blob.data, w, rtol=2e-5, atol=2e-6)


def test_state_with_the_wrong_history_count_is_one_line_error(tmp_path):
    solver = _tiny_solver('type: "SGD" base_lr: 0.1 lr_policy: "fixed" max_iter: 1 snapshot: 1 '
                          f'snapshot_prefix: "{tmp_path}/s"')
    solver.solve()
    adadelta = _tiny_solver('type: "AdaDelta" base_lr: 1 lr_policy: "fixed" max_iter: 2')
    with pytest.raises(RistrettoError, match="Incorrect length of history blobs: the state has 2, "
                                             "this solver needs 4"):
        adadelta.restore(f"{tmp_path}/s_iter_1.solverstate")
