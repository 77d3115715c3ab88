"""The per-parameter steps of Caffe's ApplyUpdate, as small in-place float32 array functions.

Each function mirrors the BLAS-style calls of the Caffe solver it stands for, in the same
order, so every intermediate is rounded to float32 where Caffe rounds it: ``axpby`` is
``a*x + b*y`` (two rounded products, one rounded sum), ``powx(x, 2)`` is ``x*x``,
``powx(x, 0.5)`` is a square root. Scalars are float32; ``history`` arrays are updated in
place and the update value is left in ``diff`` (the solver then subtracts it from the data).

Caffe's non-MKL axpby is sscal then saxpy, and an OpenBLAS saxpy kernel may fuse the
multiply-add; emulating the fusion changed nothing measurable against a real Caffe run, so
products and sums are rounded separately here.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.errors import RistrettoError

_F = np.float32

#: solver type -> number of history blobs per learnable parameter
HISTORY_SETS = {"SGD": 1, "Nesterov": 1, "AdaGrad": 1, "RMSProp": 1, "AdaDelta": 2, "Adam": 2}


def check_solver_type(param) -> None:
    """The solver registry lookup and the per-type parameter checks of Caffe's constructors."""
    kind = param.type
    if kind not in HISTORY_SETS:
        raise RistrettoError(f"Unknown solver type: {kind} (known types: "
                             + ", ".join(sorted(HISTORY_SETS)) + ")")
    if kind == "AdaGrad" and param.momentum != 0:
        raise RistrettoError("Momentum cannot be used with AdaGrad.")
    if kind == "RMSProp":
        if param.momentum != 0:
            raise RistrettoError("Momentum cannot be used with RMSProp.")
        if not 0 <= param.rms_decay < 1:
            raise RistrettoError("rms_decay should lie between 0 and 1.")


def _axpby(a, x, b, y) -> None:
    """y = a*x + b*y in place (Caffe's caffe_cpu_axpby)."""
    np.multiply(y, b, out=y)
    y += a * x


# ----------------------------------------------------------- before the update rule
def clip_gradients(diffs, clip) -> tuple[np.float32, np.float32] | None:
    """Scale all ``diffs`` by clip/norm when their global L2 norm exceeds ``clip``.

    Returns ``(norm, scale)`` when scaled (for the log line), else None. Sums of squares are
    float32 dot products summed in float32, as Caffe's ``sumsq_diff``.
    """
    clip = _F(clip)
    if clip < 0:
        return None
    sumsq = _F(0)
    for d in diffs:
        flat = d.reshape(-1)
        sumsq += _F(np.dot(flat, flat))
    norm = _F(np.sqrt(sumsq))
    if not norm > clip:
        return None
    scale = clip / norm
    for d in diffs:
        d *= scale
    return norm, scale


def normalize(diff, iter_size: int) -> None:
    """Average the gradient accumulated over ``iter_size`` forward/backward passes."""
    if iter_size > 1:
        diff *= _F(1) / _F(iter_size)


def regularize(data, diff, decay, kind: str = "L2") -> None:
    """Weight decay ``decay = weight_decay * decay_mult``: L2 adds decay*w, L1 decay*sign(w)."""
    decay = _F(decay)
    if decay == 0:
        return
    if kind == "L2":
        diff += decay * data
    elif kind == "L1":
        # caffe_sign is (0 < x) - (x < 0): 0 for NaN, where np.sign gives NaN.
        diff += decay * np.subtract(data > 0, data < 0, dtype=np.float32)
    else:
        raise RistrettoError(f"Unknown regularization type: {kind} (choose L1 or L2)")


# ----------------------------------------------------------------- update rules
def sgd(diff, history, lr, momentum) -> None:
    """h = lr*g + momentum*h; update = h."""
    _axpby(_F(lr), diff, _F(momentum), history)
    diff[...] = history


def nesterov(diff, history, lr, momentum) -> None:
    """h' = lr*g + momentum*h; update = (1+momentum)*h' - momentum*h."""
    momentum = _F(momentum)
    previous = history.copy()
    _axpby(_F(lr), diff, momentum, history)
    _axpby(_F(1) + momentum, history, -momentum, previous)
    diff[...] = previous


def adagrad(diff, history, lr, delta) -> None:
    """h += g*g; update = lr * (g / (sqrt(h) + delta))."""
    history += diff * diff
    denom = np.sqrt(history)
    denom += _F(delta)
    np.divide(diff, denom, out=denom)
    np.multiply(denom, _F(lr), out=diff)


def rmsprop(diff, history, lr, rms_decay, delta) -> None:
    """h = (1-rms_decay)*g*g + rms_decay*h; update = lr * (g / (sqrt(h) + delta))."""
    rms_decay = _F(rms_decay)
    _axpby(_F(1) - rms_decay, diff * diff, rms_decay, history)
    denom = np.sqrt(history)
    denom += _F(delta)
    np.divide(diff, denom, out=denom)
    np.multiply(denom, _F(lr), out=diff)


def adadelta(diff, history, update_history, lr, momentum, delta) -> None:
    """h = (1-m)*g*g + m*h; u = g*sqrt((h2+delta)/(h+delta)); h2 = (1-m)*u*u + m*h2;
    update = lr*u (``momentum`` m is AdaDelta's decay rate)."""
    momentum = _F(momentum)
    delta = _F(delta)
    _axpby(_F(1) - momentum, diff * diff, momentum, history)
    ratio = update_history + delta
    ratio /= history + delta
    np.sqrt(ratio, out=ratio)
    diff *= ratio
    _axpby(_F(1) - momentum, diff * diff, momentum, update_history)
    diff *= _F(lr)


def adam_correction(beta1, beta2, t: int) -> np.float32:
    """sqrt(1 - beta2^t) / (1 - beta1^t), in double as C++ promotes ``pow``, then float."""
    b1 = np.float64(_F(beta1))
    b2 = np.float64(_F(beta2))
    with np.errstate(divide="ignore", invalid="ignore"):
        return _F(np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))


def adam(diff, m, v, lr, beta1, beta2, delta, t: int) -> None:
    """m = (1-b1)*g + b1*m; v = (1-b2)*g*g + b2*v;
    update = (lr * correction(t)) * (m / (sqrt(v) + delta)), t = iter + 1."""
    beta1, beta2 = _F(beta1), _F(beta2)
    _axpby(_F(1) - beta1, diff, beta1, m)
    _axpby(_F(1) - beta2, diff * diff, beta2, v)
    denom = np.sqrt(v)
    denom += _F(delta)
    np.divide(m, denom, out=denom)
    np.multiply(denom, _F(lr) * adam_correction(beta1, beta2, t), out=diff)


def compute_update(param, diff, histories, lr, it: int) -> None:
    """Dispatch on ``param.type``: ``histories`` holds this parameter's 1 or 2 history arrays,
    ``lr`` is rate * lr_mult, ``it`` the iteration before the update."""
    kind = param.type
    if kind == "SGD":
        sgd(diff, histories[0], lr, param.momentum)
    elif kind == "Nesterov":
        nesterov(diff, histories[0], lr, param.momentum)
    elif kind == "AdaGrad":
        adagrad(diff, histories[0], lr, param.delta)
    elif kind == "RMSProp":
        rmsprop(diff, histories[0], lr, param.rms_decay, param.delta)
    elif kind == "AdaDelta":
        adadelta(diff, histories[0], histories[1], lr, param.momentum, param.delta)
    elif kind == "Adam":
        adam(diff, histories[0], histories[1], lr, param.momentum, param.momentum2, param.delta,
             it + 1)
    else:
        check_solver_type(param)
