"""Helpers shared by the test_solver_* modules: tiny nets, log capture, a float64 reference
of the solver written from the spec's formulas (solver_and_cli.md §5.5)."""

from __future__ import annotations

import math

import numpy as np

from ristretto_cli.io import parse_text
from ristretto_cli.proto import caffe_pb2

# y = x W^T + b, loss = sum((y - t)^2) / (2N); weights lr_mult 1 / bias lr_mult 2, no bias decay
TINY_NET = """
name: "tiny"
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        param { lr_mult: %(w_lr)s decay_mult: 1 } param { lr_mult: %(b_lr)s decay_mult: 0 }
        inner_product_param { num_output: 2 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""

RNG = np.random.default_rng(1234)
X = RNG.normal(size=(4, 3)).astype(np.float32)
T = RNG.normal(size=(4, 2)).astype(np.float32)
W0 = RNG.normal(scale=0.5, size=(2, 3)).astype(np.float32)
B0 = RNG.normal(scale=0.5, size=(2,)).astype(np.float32)

# Random data + dropout: what a resume must reproduce draw for draw.
DROPOUT_NET = """
name: "drop"
layer { name: "data" type: "DummyData" top: "x" top: "t"
        dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "x" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"""


def solver_param(text: str, net: str | None = None, w_lr=1, b_lr=2) -> caffe_pb2.SolverParameter:
    """A SolverParameter from text; ``net`` (default the tiny net) goes into net_param."""
    net = TINY_NET % {"w_lr": w_lr, "b_lr": b_lr} if net is None else net
    return parse_text(f"net_param {{ {net} }}\n{text}", caffe_pb2.SolverParameter())


def feed_tiny(solver) -> None:
    """Fixed inputs and initial weights for every net of a solver on the tiny net."""
    for net in [solver.net, *solver.test_nets]:
        net.blobs["x"].data[...] = X
        net.blobs["t"].data[...] = T
    solver.net.learnable_params[0].blob.data[...] = W0
    solver.net.learnable_params[1].blob.data[...] = B0


from log_support import capture_log  # noqa: E402,F401  (re-exported)


# ------------------------------------------------------------- float64 reference
def tiny_loss_and_grads(w, b):
    r = X.astype(float) @ w.T + b - T.astype(float)
    n = X.shape[0]
    return (r**2).sum() / (2 * n), [r.T @ X.astype(float) / n, r.sum(axis=0) / n]


def rate_of(p, it: int) -> float:
    """The spec's lr policy table in float64 (multistep: the number of stepvalues <= it)."""
    pol, base = p.lr_policy, p.base_lr
    if pol == "fixed":
        return base
    if pol == "step":
        return base * p.gamma ** (it // p.stepsize)
    if pol == "exp":
        return base * p.gamma**it
    if pol == "inv":
        return base * (1 + p.gamma * it) ** (-p.power)
    if pol == "multistep":
        return base * p.gamma ** sum(it >= s for s in p.stepvalue)
    if pol == "poly":
        return base * (1 - it / p.max_iter) ** p.power
    if pol == "sigmoid":
        return base / (1 + math.exp(-p.gamma * (it - p.stepsize)))
    raise ValueError(pol)


def reference_train(p, iters: int, lr_mults=(1.0, 2.0), decay_mults=(1.0, 0.0)):
    """Train the tiny net in float64 exactly as the spec describes; returns (params, losses)."""
    params = [W0.astype(float), B0.astype(float)]
    sets = 2 if p.type in ("AdaDelta", "Adam") else 1
    hist = [[np.zeros_like(q) for q in params] for _ in range(sets)]
    losses = []
    for it in range(iters):
        loss, grads = tiny_loss_and_grads(*params)
        losses.append(loss)
        grads = [g * p.iter_size for g in grads]  # iter_size identical passes accumulate
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum((g**2).sum() for g in grads))
            if norm > p.clip_gradients:
                grads = [g * p.clip_gradients / norm for g in grads]
        rate = rate_of(p, it)
        for i, (q, g) in enumerate(zip(params, grads)):
            g = g / p.iter_size
            d = p.weight_decay * decay_mults[i]
            if d:
                g = g + d * (q if p.regularization_type == "L2" else np.sign(q))
            lr = rate * lr_mults[i]
            h = hist[0][i]
            if p.type == "SGD":
                h[...] = p.momentum * h + lr * g
                u = h.copy()
            elif p.type == "Nesterov":
                prev = h.copy()
                h[...] = p.momentum * h + lr * g
                u = (1 + p.momentum) * h - p.momentum * prev
            elif p.type == "AdaGrad":
                h += g**2
                u = lr * g / (np.sqrt(h) + p.delta)
            elif p.type == "RMSProp":
                h[...] = p.rms_decay * h + (1 - p.rms_decay) * g**2
                u = lr * g / (np.sqrt(h) + p.delta)
            elif p.type == "AdaDelta":
                h2 = hist[1][i]
                h[...] = p.momentum * h + (1 - p.momentum) * g**2
                step = g * np.sqrt((h2 + p.delta) / (h + p.delta))
                h2[...] = p.momentum * h2 + (1 - p.momentum) * step**2
                u = lr * step
            elif p.type == "Adam":
                v = hist[1][i]
                t = it + 1
                h[...] = p.momentum * h + (1 - p.momentum) * g
                v[...] = p.momentum2 * v + (1 - p.momentum2) * g**2
                corr = math.sqrt(1 - p.momentum2**t) / (1 - p.momentum**t)
                u = lr * corr * h / (np.sqrt(v) + p.delta)
            q -= u
    return params, losses
