"""One helper for every layer test: build a layer from a prototxt snippet, run it, check its
forward against a reference and its backward against finite differences.

The gradient check follows Caffe's GradientChecker (central differences with ``stepsize``;
an element passes when ``|analytic - numeric| <= threshold * max(|analytic|, |numeric|, 1)``;
inputs within ``kink_range`` of ``kink`` are skipped, for max/abs-like kinks). Like Caffe's
own layer tests, it runs in float64 so that the finite differences are meaningful; the
objective is a fixed random projection of every top, which checks the whole Jacobian with
one backward pass.

Typical use::

    check_gradient('type: "ReLU"', [x])
    tops = forward('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 }', [x])
"""

from __future__ import annotations

import numpy as np
from google.protobuf import text_format

from ristretto_cli.blob import Blob
from ristretto_cli.layers import TEST, TRAIN, create_layer  # noqa: F401  (re-exported for tests)
from ristretto_cli.proto import caffe_pb2


def layer_param(text_or_param, name: str = "layer") -> caffe_pb2.LayerParameter:
    if isinstance(text_or_param, caffe_pb2.LayerParameter):
        return text_or_param
    p = text_format.Parse(text_or_param, caffe_pb2.LayerParameter())
    if not p.name:
        p.name = name
    return p


def make_layer(spec, *, phase=TEST, seed: int = 1701, semantics: str = "ristretto"):
    return create_layer(layer_param(spec), phase=phase, rng=np.random.default_rng(seed),
                        semantics=semantics)


def setup(spec, bottoms, *, num_tops: int | None = None, in_place: bool = False, phase=TEST,
          seed: int = 1701, semantics: str = "ristretto", dtype=None, layer=None):
    """Build and set up a layer on copies of ``bottoms``; returns (layer, bottom_blobs, top_blobs)."""
    layer = layer or make_layer(spec, phase=phase, seed=seed, semantics=semantics)
    bottom_blobs = []
    for i, b in enumerate(bottoms):
        b = np.asarray(b)
        arr_dtype = dtype if dtype is not None else (b.dtype if b.dtype.kind == "f" else np.float32)
        bottom_blobs.append(Blob(name=f"bottom{i}", data=np.array(b, dtype=arr_dtype)))
    if in_place:
        top_blobs = list(bottom_blobs)
    else:
        n = num_tops if num_tops is not None else max(len(layer.param.top), 1)
        top_blobs = [Blob(name=f"top{i}", data=np.zeros((), dtype or np.float32)) for i in range(n)]
    if layer.is_loss and len(top_blobs) < layer.required_tops():
        top_blobs.append(Blob(name="(automatic)", data=np.zeros((), dtype or np.float32)))
    layer.setup(bottom_blobs, top_blobs)
    if dtype is not None:
        for blob in layer.blobs:
            blob.data = blob.data.astype(dtype)
            blob.diff = np.zeros_like(blob.data)
    layer.param_propagate_down = [True] * len(layer.blobs)
    return layer, bottom_blobs, top_blobs


def forward(spec, bottoms, **kw) -> list[np.ndarray]:
    """Tops (copies) after one forward pass."""
    layer, bottom_blobs, top_blobs = setup(spec, bottoms, **kw)
    layer.forward(bottom_blobs, top_blobs)
    return [t.data.copy() for t in top_blobs]


def check_forward(spec, bottoms, expected, *, rtol=1e-5, atol=1e-6, **kw) -> list[np.ndarray]:
    tops = forward(spec, bottoms, **kw)
    for i, (got, want) in enumerate(zip(tops, expected)):
        want = np.asarray(want)
        assert got.shape == want.shape, f"top {i}: shape {got.shape} != {want.shape}"
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"top {i}")
    return tops


def check_gradient(spec, bottoms, *, stepsize=1e-2, threshold=1e-3, kink=0.0, kink_range=-1.0,
                   check_bottoms=None, check_params=True, in_place=False, num_tops=None,
                   phase=TEST, seed=1701, objective_seed=1234, dtype=np.float64, layer=None,
                   max_checks=None):
    """Compare the layer's backward with central differences of a random projection of its tops.

    ``check_bottoms``: indices of the bottoms to check (default: all). ``max_checks`` limits the
    number of checked elements per blob (a random subset) for big inputs.
    """
    layer, bottom_blobs, top_blobs = setup(spec, bottoms, num_tops=num_tops, in_place=in_place,
                                           phase=phase, seed=seed, dtype=dtype, layer=layer)
    originals = [b.data.copy() for b in bottom_blobs]
    check_bottoms = range(len(bottom_blobs)) if check_bottoms is None else check_bottoms
    rng = np.random.default_rng(objective_seed)

    def run_forward():
        for b, orig in zip(bottom_blobs, originals):
            b.data = orig.copy()
        layer.rng = np.random.default_rng(seed)  # stochastic layers draw the same every time
        layer.forward(bottom_blobs, top_blobs)

    run_forward()
    weights = [rng.standard_normal(t.shape) for t in top_blobs]

    def objective() -> float:
        return float(sum(np.sum(w * t.data) for w, t in zip(weights, top_blobs)))

    # analytic
    for t, w in zip(top_blobs, weights):
        t.diff = w.astype(t.data.dtype).copy()
    for blob in layer.blobs:
        blob.diff = np.zeros_like(blob.data)
    propagate = [i in check_bottoms for i in range(len(bottom_blobs))]
    layer.backward(top_blobs, propagate, bottom_blobs)
    analytic = {("bottom", i): bottom_blobs[i].diff.copy() for i in check_bottoms}
    if check_params:
        for k, blob in enumerate(layer.blobs):
            analytic[("param", k)] = blob.diff.copy()

    failures = []
    for (kind, idx), grad in analytic.items():
        target = originals[idx] if kind == "bottom" else layer.blobs[idx].data
        flat_indices = np.arange(target.size)
        if max_checks is not None and target.size > max_checks:
            flat_indices = np.random.default_rng(idx).choice(target.size, max_checks, replace=False)
        for flat in flat_indices:
            pos = np.unravel_index(flat, target.shape)
            original = target[pos]
            target[pos] = original + stepsize
            run_forward()
            plus = objective()
            target[pos] = original - stepsize
            run_forward()
            minus = objective()
            target[pos] = original
            numeric = (plus - minus) / (2 * stepsize)
            computed = float(grad[pos])
            feature = float(original)
            if kink_range > 0 and kink - kink_range <= abs(feature) <= kink + kink_range:
                continue
            scale = max(abs(computed), abs(numeric), 1.0)
            if abs(computed - numeric) > threshold * scale:
                failures.append(f"{kind} {idx} at {tuple(int(p) for p in pos)}: analytic {computed:.6g}, "
                                f"numeric {numeric:.6g}")
    run_forward()
    assert not failures, f"{len(failures)} gradient mismatches, e.g.:\n" + "\n".join(failures[:10])
