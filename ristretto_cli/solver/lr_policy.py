"""Learning-rate policies, as Caffe's SGDSolver::GetLearningRate.

The rate is a C ``float``. Caffe computes the argument of ``pow``/``exp`` in float (e.g.
``1 + gamma*iter``), then calls the double-precision C functions, multiplies by ``base_lr``
in double and rounds once to float; the same steps are taken here so the printed rate and
the update use the same float32 value.
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
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise RistrettoError(f"lr_policy '{policy}' needs gamma >= 0 (got {fmt(param.gamma)})")


def fmt(x) -> str:
    return fmt_g(float(x))


def _pow(base, exponent) -> np.float64:
    # C pow() in double; overflow gives inf as in C, not a Python exception.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return np.power(np.float64(base), np.float64(exponent))


def learning_rate(param, it: int, current_step: int) -> tuple[np.float32, int]:
    """``(rate, current_step)`` for iteration ``it`` (before its update).

    ``step`` recomputes ``current_step``; ``multistep`` advances it at most once per call
    and logs it, as Caffe does; the other policies leave it unchanged.
    """
    check_policy(param)
    policy = param.lr_policy
    base = np.float64(_F(param.base_lr))
    gamma = _F(param.gamma)
    if policy == "fixed":
        return _F(param.base_lr), current_step
    if policy == "step":
        current_step = it // param.stepsize
        rate = base * _pow(gamma, current_step)
    elif policy == "exp":
        rate = base * _pow(gamma, it)
    elif policy == "inv":
        rate = base * _pow(_F(1) + gamma * _F(it), -_F(param.power))
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and it >= param.stepvalue[current_step]:
            current_step += 1
            logger.info("MultiStep Status: Iteration %d, step = %d", it, current_step)
        rate = base * _pow(gamma, current_step)
    elif policy == "poly":
        rate = base * _pow(_F(1) - _F(it) / _F(param.max_iter), _F(param.power))
    else:  # sigmoid
        with np.errstate(over="ignore"):
            rate = base * (1.0 / (1.0 + np.exp(np.float64(-gamma * (_F(it) - _F(param.stepsize))))))
    with np.errstate(over="ignore", invalid="ignore"):
        return _F(rate), current_step
