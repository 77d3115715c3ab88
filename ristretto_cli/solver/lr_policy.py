"""Learning-rate policies, as Caffe's SGDSolver::GetLearningRate.

The rate is a C ``float``, computed with the precision C++'s ``<cmath>`` overloads give
each call: ``pow(float, int)`` (step, exp, multistep) promotes to double, so ``base_lr * pow``
is a double rounded once to float; ``pow(float, float)`` (inv, poly) and ``exp(float)``
(sigmoid) are the float functions, so everything after them is float arithmetic. The float
functions are emulated by rounding the double result once (libm's powf/expf agree except for
rare last-bit misroundings).
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import fmt_g, logger

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
_F = np.float32


def check_policy(param) -> None:
    """Reject what Caffe would only abort on at the first update: unknown or unset policy,
    a missing stepsize, a negative gamma."""
    policy = param.lr_policy
    if not policy:
        raise RistrettoError("Unknown learning rate policy: (lr_policy is not set; choose one of "
                             + ", ".join(POLICIES) + ")")
    if policy not in POLICIES:
        raise RistrettoError(f"Unknown learning rate policy: {policy} (known policies: "
                             + ", ".join(POLICIES) + ")")
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise RistrettoError(f"lr_policy '{policy}' needs stepsize > 0 (got {param.stepsize})")
    # ``not >=`` so that NaN fails too, as CHECK_GE does.
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and not param.gamma >= 0:
        raise RistrettoError(f"lr_policy '{policy}' needs gamma >= 0 (got {fmt(param.gamma)})")


def fmt(x) -> str:
    return fmt_g(float(x))


def _pow(base, exponent) -> np.float64:
    """C pow() in double."""
    return np.power(np.float64(base), np.float64(exponent))


def _powf(base, exponent) -> np.float32:
    """C powf(): float arguments, float result (numpy's float32 power is not libm's)."""
    return _F(_pow(_F(base), _F(exponent)))


def learning_rate(param, it: int, current_step: int) -> tuple[np.float32, int]:
    """``(rate, current_step)`` for iteration ``it`` (before its update).

    ``step`` recomputes ``current_step``; ``multistep`` advances it at most once per call
    and logs it, as Caffe does; the other policies leave it unchanged.
    """
    check_policy(param)
    policy = param.lr_policy
    base = _F(param.base_lr)
    gamma = _F(param.gamma)
    # C arithmetic: overflow, 0/0 and the like give inf/NaN silently.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if policy == "fixed":
            rate = base
        elif policy == "step":
            current_step = it // param.stepsize
            rate = _F(np.float64(base) * _pow(gamma, current_step))
        elif policy == "exp":
            rate = _F(np.float64(base) * _pow(gamma, it))
        elif policy == "inv":
            rate = base * _powf(_F(1) + gamma * _F(it), -_F(param.power))
        elif policy == "multistep":
            if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
                current_step += 1
                logger.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
            rate = _F(np.float64(base) * _pow(gamma, current_step))
        elif policy == "poly":
            rate = base * _powf(_F(1) - _F(it) / _F(param.max_iter), param.power)
        else:  # sigmoid
            e = _F(np.exp(np.float64(-gamma * (_F(it) - _F(param.stepsize)))))
            rate = base * (_F(1) / (_F(1) + e))
    return _F(rate), current_step
