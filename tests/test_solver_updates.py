"""Update rules, regularisation, clipping and learning-rate policies, against plain float64
formulas written from the spec (solver_and_cli.md §5.5, §5.7)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import fmt_g, logger
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import updates
from ristretto_cli.solver.lr_policy import check_policy, learning_rate

F32 = np.float32


@pytest.fixture
def log_lines():
    """Messages logged by ristretto while the test runs."""
    lines: list[str] = []

    class Grab(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Grab()
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old)


def close32(got, want, rtol=2e-6, atol=1e-7):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


def arrays(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=n).astype(F32) for _ in range(3)]


def solver_param(**fields):
    p = caffe_pb2.SolverParameter()
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


# ------------------------------------------------------------------ update rules
def test_sgd_momentum():
    g, h, _ = arrays()
    g64, h64 = g.astype(float), h.astype(float)
    updates.sgd(g, h, F32(0.01), F32(0.9))
    want = 0.9 * h64 + 0.01 * g64
    close32(h, want)
    close32(g, want)


def test_nesterov():
    g, h, _ = arrays(1)
    g64, h64 = g.astype(float), h.astype(float)
    updates.nesterov(g, h, F32(0.1), F32(0.9))
    h_new = 0.9 * h64 + 0.1 * g64
    close32(h, h_new)
    close32(g, 1.9 * h_new - 0.9 * h64)


def test_adagrad():
    g, h, _ = arrays(2)
    h = np.abs(h)
    g64, h64 = g.astype(float), h.astype(float)
    updates.adagrad(g, h, F32(0.5), F32(1e-8))
    h_new = h64 + g64**2
    close32(h, h_new)
    close32(g, 0.5 * g64 / (np.sqrt(h_new) + 1e-8))


def test_rmsprop():
    g, h, _ = arrays(3)
    h = np.abs(h)
    g64, h64 = g.astype(float), h.astype(float)
    updates.rmsprop(g, h, F32(0.01), F32(0.98), F32(1e-6))
    h_new = 0.98 * h64 + 0.02 * g64**2
    close32(h, h_new)
    close32(g, 0.01 * g64 / (np.sqrt(h_new) + 1e-6))


def test_adadelta():
    g, h, h2 = arrays(4)
    h, h2 = np.abs(h), np.abs(h2)
    g64, h64, h264 = g.astype(float), h.astype(float), h2.astype(float)
    updates.adadelta(g, h, h2, F32(1.0), F32(0.95), F32(1e-6))
    h_new = 0.95 * h64 + 0.05 * g64**2
    u = g64 * np.sqrt((h264 + 1e-6) / (h_new + 1e-6))
    close32(h, h_new)
    close32(h2, 0.95 * h264 + 0.05 * u**2)
    close32(g, u)


@pytest.mark.parametrize("t", [1, 2, 10, 1000])
def test_adam_with_bias_correction(t):
    g, m, v = arrays(5)
    v = np.abs(v)
    g64, m64, v64 = g.astype(float), m.astype(float), v.astype(float)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.001
    updates.adam(g, m, v, F32(lr), F32(b1), F32(b2), F32(eps), t)
    m_new = b1 * m64 + (1 - b1) * g64
    v_new = b2 * v64 + (1 - b2) * g64**2
    corr = math.sqrt(1 - b2**t) / (1 - b1**t)
    close32(m, m_new)
    close32(v, v_new)
    close32(g, lr * corr * m_new / (np.sqrt(v_new) + eps), rtol=1e-5)


def test_adam_first_step_is_lr_times_sign():
    # With zero moments the bias-corrected first step is lr * g/|g| (up to delta).
    g = np.array([0.3, -2.0, 0.05], F32)
    m, v = np.zeros(3, F32), np.zeros(3, F32)
    updates.adam(g, m, v, F32(0.01), F32(0.9), F32(0.999), F32(1e-8), 1)
    close32(g, [0.01, -0.01, 0.01], rtol=1e-4)


def test_compute_update_dispatch_and_history_sets():
    assert updates.HISTORY_SETS == {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1,
                                    "AdaDelta": 2, "Adam": 2}
    p = solver_param(type="Adam", momentum=0.9)
    g, m, v = arrays(6)
    g2, m2, v2 = g.copy(), m.copy(), np.abs(v)
    v = v2.copy()
    updates.compute_update(p, g, [m, v], F32(0.1), it=4)
    updates.adam(g2, m2, v2, F32(0.1), F32(0.9), F32(0.999), F32(1e-8), 5)
    assert np.array_equal(g, g2)


def test_solver_type_checks():
    with pytest.raises(RistrettoError, match="Unknown solver type: Foo"):
        updates.check_solver_type(solver_param(type="Foo"))
    with pytest.raises(RistrettoError, match="Momentum cannot be used with AdaGrad"):
        updates.check_solver_type(solver_param(type="AdaGrad", momentum=0.9))
    with pytest.raises(RistrettoError, match="rms_decay"):
        updates.check_solver_type(solver_param(type="RMSProp", rms_decay=1.0))


# ----------------------------------------------------- regularisation, clipping, iter_size
def test_regularize_l2_l1():
    w = np.array([0.5, -2.0, 0.0, 3.0], F32)
    g = np.array([0.1, 0.1, 0.1, 0.1], F32)
    l2, l1 = g.copy(), g.copy()
    updates.regularize(w, l2, F32(0.01), "L2")
    updates.regularize(w, l1, F32(0.01), "L1")
    close32(l2, 0.1 + 0.01 * np.array([0.5, -2.0, 0.0, 3.0]))
    close32(l1, 0.1 + 0.01 * np.array([1, -1, 0, 1]))
    same = g.copy()
    updates.regularize(w, same, F32(0), "nonsense")  # no decay: the type is never looked at
    assert np.array_equal(same, g)
    with pytest.raises(RistrettoError, match="Unknown regularization type: L3"):
        updates.regularize(w, g.copy(), F32(0.1), "L3")


def test_clip_gradients_uses_global_norm():
    a = np.array([3.0, 0.0], F32)
    b = np.array([[4.0]], F32)
    norm, scale = updates.clip_gradients([a, b], 1.0)
    assert norm == F32(5.0) and scale == F32(0.2)
    close32(a, [0.6, 0.0])
    close32(b, [[0.8]])
    assert updates.clip_gradients([a, b], 2.0) is None  # norm 1 <= 2: untouched
    assert updates.clip_gradients([a, b], -1) is None


def test_normalize():
    g = np.array([4.0, 2.0], F32)
    updates.normalize(g, 1)
    close32(g, [4.0, 2.0])
    updates.normalize(g, 4)
    close32(g, [1.0, 0.5])


# ------------------------------------------------------------------ lr policies
def lr(policy, it, current_step=0, **fields):
    p = solver_param(lr_policy=policy, base_lr=0.01, **fields)
    return learning_rate(p, it, current_step)


def test_fixed():
    assert lr("fixed", 123)[0] == F32(0.01)


def test_step():
    for it in (0, 9, 10, 25):
        rate, step = lr("step", it, gamma=0.1, stepsize=10)
        assert step == it // 10
        close32(rate, 0.01 * 0.1 ** (it // 10))


def test_exp():
    close32(lr("exp", 7, gamma=0.9)[0], 0.01 * 0.9**7)


def test_inv_matches_caffe_log():
    # lr printed by the real Caffe at iterations 1 and 29 (reference/solver_sgd_inv).
    for it, printed in ((0, "0.01"), (1, "0.00999925"), (29, "0.0099783")):
        rate = lr("inv", it, gamma=1e-4, power=0.75)[0]
        assert fmt_g(rate) == printed
        close32(rate, 0.01 * (1 + 1e-4 * it) ** -0.75)


def test_poly():
    close32(lr("poly", 25, power=2.0, max_iter=100)[0], 0.01 * (1 - 0.25) ** 2)


def test_sigmoid():
    close32(lr("sigmoid", 30, gamma=0.1, stepsize=20)[0], 0.01 / (1 + math.exp(-0.1 * 10)))


def test_multistep_advances_once_per_call_and_logs(log_lines):
    p = solver_param(lr_policy="multistep", base_lr=0.01, gamma=0.5, stepvalue=[2, 3])
    step = 0
    rates = []
    for it in range(5):
        rate, step = learning_rate(p, it, step)
        rates.append(float(rate))
    close32(rates, [0.01, 0.01, 0.005, 0.0025, 0.0025])
    assert [ln for ln in log_lines if ln.startswith("MultiStep")] == [
        "MultiStep Status: Iteration 2, step = 1", "MultiStep Status: Iteration 3, step = 2"]
    # Resuming late: at most one step per call, as Caffe (catches up one step per iteration).
    rate, step = learning_rate(p, 10, 0)
    assert step == 1 and rate == F32(0.005)


def test_policy_errors():
    with pytest.raises(RistrettoError, match="Unknown learning rate policy: .*not set"):
        check_policy(solver_param())
    with pytest.raises(RistrettoError, match="Unknown learning rate policy: cosine"):
        check_policy(solver_param(lr_policy="cosine"))
    with pytest.raises(RistrettoError, match="stepsize"):
        check_policy(solver_param(lr_policy="step", gamma=0.1))
    with pytest.raises(RistrettoError, match="gamma"):
        check_policy(solver_param(lr_policy="inv", gamma=-1.0))
