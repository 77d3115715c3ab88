"""Softmax, the loss layers, Accuracy and ArgMax: forward against hand computations and
independent NumPy formulas (float64), every normalization mode, ignore_label, blob-count and
label errors, and the backward against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format
from layer_check import check_forward, check_gradient, forward, setup

from ristretto_cli.errors import RistrettoError
from ristretto_cli.net import TEST, Net
from ristretto_cli.proto import caffe_pb2

RNG = np.random.default_rng(20240611)
FLT_MIN = np.finfo(np.float32).tiny


def scores(*shape, scale=2.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def ref_softmax(x, axis=1):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def spatial_labels(n, c, h, w, ignore=None, n_ignored=0):
    labels = RNG.integers(0, c, size=(n, 1, h, w)).astype(np.float32)
    if n_ignored:
        flat = labels.reshape(-1)
        flat[RNG.choice(flat.size, n_ignored, replace=False)] = ignore
    return labels


def ref_softmax_loss(x, labels, mode, ignore=None):
    """Independent SoftmaxWithLoss over axis 1 of an (N, C, H, W) array."""
    p = ref_softmax(x).transpose(0, 2, 3, 1).reshape(-1, x.shape[1])
    lab = labels.reshape(-1).astype(int)
    valid = np.ones(lab.size, bool) if ignore is None else lab != ignore
    logp = np.log(np.maximum(p[np.arange(lab.size), np.where(valid, lab, 0)], FLT_MIN))
    norm = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": x.shape[0], "NONE": 1}[mode]
    return -logp[valid].sum() / max(1, norm)


# --------------------------------------------------------------------------- Softmax
@pytest.mark.parametrize("axis", [1, 2, -1, 0])
def test_softmax_forward_matches_formula(axis):
    x = scores(2, 3, 4, 5)
    check_forward(f'type: "Softmax" softmax_param {{ axis: {axis} }}', [x], [ref_softmax(x, axis)])


def test_softmax_hand_values_and_large_inputs():
    # exp(0), exp(ln 2), exp(ln 5) normalised; a shift by 1000 must not overflow
    x = np.log(np.array([[1.0, 2.0, 5.0]], np.float32))
    check_forward('type: "Softmax"', [x], [[[0.125, 0.25, 0.625]]])
    e = np.exp([0.0, 1.0, 2.0])
    check_forward('type: "Softmax"', [np.array([[1000.0, 1001.0, 1002.0]], np.float32)],
                  [[e / e.sum()]])


def test_softmax_in_place():
    x = scores(2, 4, 3)
    layer, bottoms, tops = setup('type: "Softmax"', [x], in_place=True)
    alias = bottoms[0].data
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(alias, ref_softmax(x), rtol=1e-6)


@pytest.mark.parametrize("spec", ['type: "Softmax"', 'type: "Softmax" softmax_param { axis: 2 }'])
def test_softmax_gradient(spec):
    check_gradient(spec, [scores(2, 3, 2, 2, scale=1.0)])


def test_softmax_gradient_in_place():
    check_gradient('type: "Softmax"', [scores(2, 4, scale=1.0)], in_place=True)


def test_softmax_bad_axis():
    with pytest.raises(RistrettoError, match="axis"):
        forward('type: "Softmax" softmax_param { axis: 4 }', [scores(2, 3, 4, 5)])


# --------------------------------------------------------------------------- SoftmaxWithLoss
SWL = 'type: "SoftmaxWithLoss" loss_param {{ {} }}'


def test_softmax_loss_hand_value():
    # p(label) = 2/8 and 5/8 -> L = -(ln 0.25 + ln 0.625) / 2
    x = np.log(np.array([[1.0, 2.0, 5.0], [1.0, 2.0, 5.0]], np.float32))
    layer, bottoms, tops = setup('type: "SoftmaxWithLoss"', [x, np.array([1.0, 2.0])])
    loss = layer.forward(bottoms, tops)
    want = -(np.log(0.25) + np.log(0.625)) / 2
    assert tops[0].shape == ()
    assert tops[0].data.dtype == np.float32
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-6)
    np.testing.assert_allclose(loss, want, rtol=1e-6)       # loss weight 1 by default
    assert layer.loss_weights == [1.0]


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_normalization_modes(mode):
    x = scores(3, 5, 2, 3)
    labels = spatial_labels(3, 5, 2, 3, ignore=255, n_ignored=5)
    spec = SWL.format(f"ignore_label: 255 normalization: {mode}")
    check_forward(spec, [x, labels], [ref_softmax_loss(x, labels, mode, 255)])


@pytest.mark.parametrize("normalize,mode", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize(normalize, mode):
    x = scores(4, 3, 2, 2)
    labels = spatial_labels(4, 3, 2, 2, ignore=-1, n_ignored=3)
    spec = SWL.format(f"ignore_label: -1 normalize: {normalize}")
    check_forward(spec, [x, labels], [ref_softmax_loss(x, labels, mode, -1)])


def test_softmax_loss_normalization_overrides_normalize():
    x = scores(2, 3, 2, 2)
    labels = spatial_labels(2, 3, 2, 2, ignore=7, n_ignored=2)
    spec = SWL.format("ignore_label: 7 normalize: false normalization: FULL")
    check_forward(spec, [x, labels], [ref_softmax_loss(x, labels, "FULL", 7)])


def test_softmax_loss_default_is_valid_without_ignore_label():
    x = scores(2, 4, 3)
    labels = RNG.integers(0, 4, size=(2, 3)).astype(np.float32)
    p = ref_softmax(x)
    want = -np.mean(np.log(np.take_along_axis(p, labels[:, None, :].astype(int), 1)))
    check_forward('type: "SoftmaxWithLoss"', [x, labels], [want])


def test_softmax_loss_axis_and_truncated_labels():
    # classes on the last axis; fractional labels are truncated toward zero like a C cast
    x = scores(2, 3, 4)
    labels = np.array([[0.9, 3.7, 2.2], [1.0, 0.0, 3.99]], np.float32)
    p = ref_softmax(x, -1)
    want = -np.mean(np.log(np.take_along_axis(p, np.trunc(labels)[..., None].astype(int), -1)))
    check_forward('type: "SoftmaxWithLoss" softmax_param { axis: -1 }', [x, labels], [want])


def test_softmax_loss_clamps_at_flt_min():
    x = np.array([[0.0, 200.0]], np.float32)   # p(class 0) underflows to 0
    check_forward('type: "SoftmaxWithLoss"', [x, [0.0]], [-np.log(np.float64(FLT_MIN))])


def test_softmax_loss_all_ignored_gives_zero():
    x = scores(2, 3)
    spec = SWL.format("ignore_label: 1")
    layer, bottoms, tops = setup(spec, [x, [1.0, 1.0]])
    layer.forward(bottoms, tops)
    assert tops[0].data == 0
    layer.backward(tops, [True, False], bottoms)
    assert not bottoms[0].diff.any()


def test_softmax_loss_prob_top_and_loss_weight():
    x = scores(2, 4, 3)
    labels = RNG.integers(0, 4, size=(2, 3)).astype(np.float32)
    spec = 'type: "SoftmaxWithLoss" loss_weight: 2 loss_weight: 0'
    layer, bottoms, tops = setup(spec, [x, labels], num_tops=2)
    loss = layer.forward(bottoms, tops)
    np.testing.assert_allclose(tops[1].data, ref_softmax(x), rtol=1e-6)
    np.testing.assert_allclose(loss, 2 * tops[0].data, rtol=1e-7)
    layer.backward(tops, [True, False], bottoms)     # the loss weight 2 scales the gradient
    onehot = np.eye(4)[labels.astype(int)].transpose(0, 2, 1)
    np.testing.assert_allclose(bottoms[0].diff, 2 * (ref_softmax(x) - onehot) / 6, rtol=1e-5,
                               atol=1e-7)


def test_softmax_loss_two_tops_need_two_weights():
    with pytest.raises(RistrettoError, match="loss_weight"):
        setup('type: "SoftmaxWithLoss"', [scores(2, 3), [0.0, 1.0]], num_tops=2)


def test_softmax_loss_errors():
    x = scores(2, 3, 2)
    with pytest.raises(RistrettoError, match="number of labels"):
        forward('type: "SoftmaxWithLoss"', [x, np.zeros((2, 3))])
    with pytest.raises(RistrettoError, match="first dimension"):
        forward('type: "SoftmaxWithLoss"', [scores(2, 3), np.zeros((1, 2))])
    with pytest.raises(RistrettoError, match="outside the valid range"):
        forward('type: "SoftmaxWithLoss"', [scores(2, 3), [0.0, 3.0]])
    layer, bottoms, tops = setup('type: "SoftmaxWithLoss"', [scores(2, 3), [0.0, 2.0]])
    layer.forward(bottoms, tops)
    with pytest.raises(RistrettoError, match="label inputs"):
        layer.backward(tops, [True, True], bottoms)
    assert not layer.allow_force_backward(1) and layer.allow_force_backward(0)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_softmax_loss_gradient(mode):
    x = scores(2, 4, 2, 2, scale=1.0)
    labels = spatial_labels(2, 4, 2, 2, ignore=9, n_ignored=2)
    check_gradient(SWL.format(f"ignore_label: 9 normalization: {mode}"), [x, labels],
                   check_bottoms=[0])


def test_softmax_loss_gradient_axis():
    x = scores(3, 2, 4, scale=1.0)
    labels = RNG.integers(0, 4, size=(3, 2)).astype(np.float32)
    check_gradient('type: "SoftmaxWithLoss" softmax_param { axis: 2 }', [x, labels],
                   check_bottoms=[0])


def test_softmax_loss_in_a_net_gets_an_automatic_top():
    text = """
    layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 } } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" }
    """
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), TEST)
    x = scores(2, 3)
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = [2, 0]
    loss = net.forward()
    p = ref_softmax(x)
    np.testing.assert_allclose(loss, -(np.log(p[0, 2]) + np.log(p[1, 0])) / 2, rtol=1e-6)
    assert net.layers[-1].loss_weights == [1.0]
    assert net.output_names == []          # the anonymous loss top is never a net output


# --------------------------------------------------------------------------- Accuracy
def ref_accuracy(x, labels, top_k, ignore=None, axis=1):
    """Loop-based top-k accuracy with ties against the prediction, and per class."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    c = x.shape[-1]
    x = x.reshape(-1, c)
    lab = np.asarray(labels).reshape(-1).astype(int)
    hits, seen, correct, count = np.zeros(c), np.zeros(c), 0, 0
    for row, label in zip(x, lab):
        if ignore is not None and label == ignore:
            continue
        seen[label] += 1
        if np.sum(row >= row[label]) <= top_k:
            correct += 1
            hits[label] += 1
        count += 1
    per_class = np.divide(hits, seen, out=np.zeros(c), where=seen > 0)
    return (correct / count if count else 0.0), per_class


def test_accuracy_hand_values_and_ties():
    x = np.array([[0.1, 0.5, 0.4],      # label 1: best -> correct
                  [0.3, 0.3, 0.4],      # label 0: tie with class 1 and class 2 better -> wrong
                  [0.5, 0.5, 0.1],      # label 1: tie with class 0 counts against -> wrong
                  [0.2, 0.1, 0.7]],     # label 2: best -> correct
                 np.float32)
    labels = [1.0, 0.0, 1.0, 2.0]
    check_forward('type: "Accuracy"', [x, labels], [0.5])
    # top 2: row 2 now counts (2 classes >= true), row 1 still has 3 classes >= 0.3
    check_forward('type: "Accuracy" accuracy_param { top_k: 2 }', [x, labels], [0.75])
    check_forward('type: "Accuracy" accuracy_param { top_k: 3 }', [x, labels], [1.0])


def test_accuracy_per_class_and_ignore():
    x = scores(4, 6, 2, 3)
    labels = RNG.integers(0, 6, size=(4, 2, 3)).astype(np.float32)
    labels.reshape(-1)[[0, 5, 7]] = 4
    acc, per_class = ref_accuracy(x, labels, 3, ignore=4)
    tops = check_forward('type: "Accuracy" accuracy_param { top_k: 3 ignore_label: 4 }',
                         [x, labels], [acc, per_class], num_tops=2)
    assert tops[0].shape == () and tops[1].shape == (6,)
    assert tops[1][4] == 0          # never counted: ignored


@pytest.mark.parametrize("top_k", [1, 2, 5])
def test_accuracy_matches_loop_reference_with_many_ties(top_k):
    x = RNG.integers(0, 3, size=(20, 5)).astype(np.float32)   # many equal scores
    labels = RNG.integers(0, 5, size=20).astype(np.float32)
    acc, per_class = ref_accuracy(x, labels, top_k)
    check_forward(f'type: "Accuracy" accuracy_param {{ top_k: {top_k} }}', [x, labels],
                  [acc, per_class], num_tops=2)


def test_accuracy_axis():
    x = scores(3, 2, 4)
    labels = RNG.integers(0, 4, size=(3, 2)).astype(np.float32)
    acc, _ = ref_accuracy(x, labels, 1, axis=2)
    check_forward('type: "Accuracy" accuracy_param { axis: -1 }', [x, labels], [acc])


def test_accuracy_nan_true_score_counts_correct_and_no_valid_is_zero():
    x = np.array([[np.nan, 1.0, 2.0]], np.float32)
    check_forward('type: "Accuracy"', [x, [0.0]], [1.0])
    check_forward('type: "Accuracy" accuracy_param { ignore_label: 0 }', [x, [0.0]], [0.0])


def test_accuracy_errors_and_no_backward():
    with pytest.raises(RistrettoError, match="top_k"):
        forward('type: "Accuracy" accuracy_param { top_k: 4 }', [scores(2, 3), [0.0, 1.0]])
    with pytest.raises(RistrettoError, match="number of labels"):
        forward('type: "Accuracy"', [scores(2, 3, 2), [0.0, 1.0]])
    with pytest.raises(RistrettoError, match="outside the valid range"):
        forward('type: "Accuracy"', [scores(2, 3), [0.0, -1.0]])
    layer, bottoms, tops = setup('type: "Accuracy"', [scores(2, 3), [0.0, 1.0]])
    layer.forward(bottoms, tops)
    assert not layer.is_loss and layer.loss_weights == [0.0]
    with pytest.raises(RistrettoError, match="no backward"):
        layer.backward(tops, [True, False], bottoms)


# --------------------------------------------------------------------------- ArgMax
def test_argmax_per_item_ties_toward_larger_index():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 0.0]], np.float32)
    check_forward('type: "ArgMax"', [x], [[[[2.0]], [[2.0]]]])
    check_forward('type: "ArgMax" argmax_param { top_k: 3 }', [x],
                  [[[[2.0, 1.0, 3.0]], [[2.0, 1.0, 0.0]]]])
    check_forward('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [x],
                  [[[[2.0, 1.0], [3.0, 3.0]], [[2.0, 1.0], [5.0, 5.0]]]])


def test_argmax_4d_layout_flattens_each_item():
    x = scores(2, 3, 2, 2)
    flat = x.reshape(2, -1).astype(np.float64)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :2]    # distinct values: no ties
    vals = np.take_along_axis(flat, order, 1)
    want = np.stack([order, vals], axis=1)[..., None]          # (2, 2, top_k, 1)
    check_forward('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', [x], [want])
    tops = forward('type: "ArgMax"', [x])
    assert tops[0].shape == (2, 1, 1, 1)


@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_along_axis(out_max_val):
    x = RNG.integers(0, 4, size=(2, 5, 3)).astype(np.float32)    # ties included
    # ties toward the larger index: the first maximum of the reversed axis
    rev = x[:, ::-1, :].astype(np.float64)
    order = 4 - np.argsort(-rev, axis=1, kind="stable")[:, :2, :]
    want = np.take_along_axis(x, order, 1) if out_max_val else order
    spec = f'type: "ArgMax" argmax_param {{ axis: 1 top_k: 2 out_max_val: {str(out_max_val).lower()} }}'
    check_forward(spec, [x], [want])
    check_forward('type: "ArgMax" argmax_param { axis: -1 }', [x],
                  [(2 - np.argmax(x[..., ::-1], axis=-1))[..., None]])


def test_argmax_errors_and_no_backward():
    with pytest.raises(RistrettoError, match="top_k"):
        forward('type: "ArgMax" argmax_param { top_k: 7 }', [scores(2, 3, 2)])
    with pytest.raises(RistrettoError, match="top_k"):
        forward('type: "ArgMax" argmax_param { axis: 1 top_k: 4 }', [scores(2, 3, 2)])
    with pytest.raises(RistrettoError, match="top_k"):
        forward('type: "ArgMax" argmax_param { top_k: 0 }', [scores(2, 3)])
    layer, bottoms, tops = setup('type: "ArgMax"', [scores(2, 3)])
    layer.forward(bottoms, tops)
    with pytest.raises(RistrettoError, match="no backward"):
        layer.backward(tops, [True], bottoms)


# --------------------------------------------------------------------------- EuclideanLoss
def test_euclidean_loss_forward_and_gradient():
    a, b = scores(3, 2, 2), scores(3, 4)
    want = np.sum((a.reshape(3, -1).astype(np.float64) - b) ** 2) / (2 * 3)
    check_forward('type: "EuclideanLoss"', [a, b], [want])
    check_gradient('type: "EuclideanLoss"', [a, b])
    layer, bottoms, tops = setup('type: "EuclideanLoss" loss_weight: 3', [a, b])
    layer.forward(bottoms, tops)
    layer.backward(tops, [True, True], bottoms)
    d = (a.reshape(3, -1) - b) * 3 / 3
    np.testing.assert_allclose(bottoms[0].diff.reshape(3, -1), d, rtol=1e-6)
    np.testing.assert_allclose(bottoms[1].diff, -d, rtol=1e-6)
    assert layer.allow_force_backward(0) and layer.allow_force_backward(1)


def test_euclidean_loss_dimension_mismatch():
    with pytest.raises(RistrettoError, match="same dimension"):
        forward('type: "EuclideanLoss"', [scores(3, 2), scores(3, 3)])


# --------------------------------------------------------------------------- SigmoidCrossEntropyLoss
def ref_sigmoid_ce(x, t, norm, ignore=None):
    x64, t64 = np.asarray(x, np.float64).reshape(-1), np.asarray(t, np.float64).reshape(-1)
    s = 1 / (1 + np.exp(-x64))
    per = -(t64 * np.log(s) + (1 - t64) * np.log(1 - s))
    valid = np.ones(per.size, bool) if ignore is None else np.trunc(t64) != ignore
    n = {"FULL": per.size, "VALID": valid.sum(), "BATCH_SIZE": x.shape[0], "NONE": 1}[norm]
    return per[valid].sum() / max(1, n)


SCE = 'type: "SigmoidCrossEntropyLoss" loss_param {{ {} }}'


@pytest.mark.parametrize("param,mode", [("", "BATCH_SIZE"), ("normalize: true", "VALID"),
                                        ("normalize: false", "BATCH_SIZE"),
                                        ("normalization: FULL", "FULL"),
                                        ("normalization: VALID", "VALID"),
                                        ("normalization: NONE", "NONE")])
def test_sigmoid_ce_normalization(param, mode):
    x = scores(3, 4, 2)
    t = RNG.random((3, 4, 2)).astype(np.float32)   # fractional targets allowed
    t.reshape(-1)[[1, 6, 9]] = -1
    check_forward(SCE.format(param + " ignore_label: -1"), [x, t], [ref_sigmoid_ce(x, t, mode, -1)])


def test_sigmoid_ce_extreme_inputs_stay_finite():
    x = np.array([[80.0, -80.0, 0.0]], np.float32)
    t = np.array([[0.0, 1.0, 1.0]], np.float32)
    check_forward('type: "SigmoidCrossEntropyLoss"', [x, t], [80 + 80 + np.log(2)], rtol=1e-6)


@pytest.mark.parametrize("param", ["", "ignore_label: -1 normalization: VALID"])
def test_sigmoid_ce_gradient(param):
    x = scores(2, 3, 2, scale=1.0)
    t = RNG.random((2, 3, 2))
    t.reshape(-1)[[2, 5]] = [-1.0, -1.5]   # both truncate to the ignore label in the second case
    check_gradient(SCE.format(param), [x, t], check_bottoms=[0])


def test_sigmoid_ce_errors():
    with pytest.raises(RistrettoError, match="same count"):
        forward('type: "SigmoidCrossEntropyLoss"', [scores(2, 3), scores(2, 2)])
    layer, bottoms, tops = setup('type: "SigmoidCrossEntropyLoss"', [scores(2, 3), scores(2, 3)])
    layer.forward(bottoms, tops)
    with pytest.raises(RistrettoError, match="label inputs"):
        layer.backward(tops, [True, True], bottoms)


# --------------------------------------------------------------------------- HingeLoss
def hinge_scores(n, c):
    x = RNG.uniform(-2, 2, size=(n, c)).astype(np.float32)
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.3           # keep away from the kinks at |x| = 1
    return x


def ref_hinge(x, labels, l2):
    x = np.asarray(x, np.float64).reshape(len(labels), -1)
    s = np.ones_like(x)
    s[np.arange(len(labels)), np.asarray(labels, int)] = -1
    m = np.maximum(0, 1 + s * x)
    return (np.sum(m ** 2) if l2 else np.sum(m)) / len(labels), m


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_forward_and_scratch_diff(norm):
    x = hinge_scores(4, 5)
    labels = np.array([0.0, 4.0, 2.0, 2.0], np.float32)
    want, m = ref_hinge(x, labels, norm == "L2")
    spec = f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}'
    check_forward(spec, [x, labels], [want])
    layer, bottoms, tops = setup(spec, [x, labels])
    layer.forward(bottoms, tops)
    np.testing.assert_allclose(bottoms[0].diff, m, rtol=1e-6)   # margins kept as Caffe does


def test_hinge_loss_hand_value():
    x = np.array([[0.5, -0.5, 2.0]], np.float32)   # label 2: m = [1.5, 0.5, 0]
    check_forward('type: "HingeLoss"', [x, [2.0]], [2.0])
    check_forward('type: "HingeLoss" hinge_loss_param { norm: L2 }', [x, [2.0]], [2.5])


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss_gradient(norm):
    x = hinge_scores(3, 4).reshape(3, 2, 2, 1)
    labels = np.array([1.0, 3.0, 0.0])
    check_gradient(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', [x, labels],
                   check_bottoms=[0], kink=1.0, kink_range=0.02)


# --------------------------------------------------------------------------- MultinomialLogisticLoss
def test_multinomial_logistic_loss_forward_and_gradient():
    p = RNG.uniform(0.2, 1.0, size=(4, 5)).astype(np.float32)
    labels = np.array([[[[1.0]]], [[[0.0]]], [[[4.0]]], [[[4.0]]]], np.float32)
    lab = labels.reshape(-1).astype(int)
    want = -np.mean(np.log(p[np.arange(4), lab].astype(np.float64)))
    check_forward('type: "MultinomialLogisticLoss"', [p, labels], [want])
    check_gradient('type: "MultinomialLogisticLoss"', [p, labels], check_bottoms=[0])


def test_multinomial_logistic_loss_threshold_and_label_shape():
    p = np.array([[0.0, 1.0]], np.float32)
    check_forward('type: "MultinomialLogisticLoss"', [p, [0.0]], [-np.log(np.float32(1e-20))],
                  rtol=1e-6)
    layer, bottoms, tops = setup('type: "MultinomialLogisticLoss" loss_weight: 2', [p, [0.0]])
    layer.forward(bottoms, tops)
    layer.backward(tops, [True, False], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, [[-2 / np.float32(1e-20), 0.0]], rtol=1e-6)
    with pytest.raises(RistrettoError, match="N x 1 x 1 x 1"):
        forward('type: "MultinomialLogisticLoss"', [p, np.zeros((1, 2))])


# --------------------------------------------------------------------------- InfogainLoss
def ref_infogain(x, labels, h, mode, ignore=None, axis=1):
    p = np.moveaxis(ref_softmax(x, axis), axis, -1).reshape(-1, x.shape[axis])
    lab = np.asarray(labels).reshape(-1).astype(int)
    valid = np.ones(lab.size, bool) if ignore is None else lab != ignore
    per = -(np.asarray(h, np.float64)[np.where(valid, lab, 0)] * np.log(np.maximum(p, 1e-20))).sum(1)
    outer = int(np.prod(x.shape[:axis]))
    n = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": outer, "NONE": 1}[mode]
    return per[valid].sum() / max(1, n)


def infogain_matrix(c):
    return (np.eye(c) + RNG.uniform(0, 0.5, size=(c, c))).astype(np.float32)


@pytest.mark.parametrize("mode", ["FULL", "VALID", "BATCH_SIZE", "NONE"])
def test_infogain_loss_forward(mode):
    x, h = scores(3, 4, 2), infogain_matrix(4)
    labels = RNG.integers(0, 4, size=(3, 2)).astype(np.float32)
    labels[1, 0] = 8
    spec = f'type: "InfogainLoss" loss_param {{ ignore_label: 8 normalization: {mode} }}'
    check_forward(spec, [x, labels, h], [ref_infogain(x, labels, h, mode, 8)])


def test_infogain_identity_equals_softmax_loss_and_prob_top():
    x = scores(4, 3)
    labels = np.array([0.0, 2.0, 1.0, 2.0], np.float32)
    softmax_loss = forward('type: "SoftmaxWithLoss"', [x, labels])[0]
    spec = 'type: "InfogainLoss" loss_weight: 1 loss_weight: 0'
    tops = forward(spec, [x, labels, np.eye(3, dtype=np.float32)], num_tops=2)
    np.testing.assert_allclose(tops[0], softmax_loss, rtol=1e-6)
    np.testing.assert_allclose(tops[1], ref_softmax(x), rtol=1e-6)


def test_infogain_axis():
    x, h = scores(2, 3, 4), infogain_matrix(4)
    labels = RNG.integers(0, 4, size=(2, 3)).astype(np.float32)
    check_forward('type: "InfogainLoss" infogain_loss_param { axis: 2 }', [x, labels, h],
                  [ref_infogain(x, labels, h, "VALID", axis=2)])


@pytest.mark.parametrize("mode", ["VALID", "BATCH_SIZE"])
def test_infogain_loss_gradient(mode):
    x, h = scores(3, 4, scale=1.0), infogain_matrix(4)
    labels = np.array([1.0, 5.0, 3.0])
    spec = f'type: "InfogainLoss" loss_param {{ ignore_label: 5 normalization: {mode} }}'
    check_gradient(spec, [x, labels, h], check_bottoms=[0])


def test_infogain_errors():
    x, labels = scores(2, 3), np.array([0.0, 1.0], np.float32)
    with pytest.raises(RistrettoError, match="normalize is deprecated"):
        forward('type: "InfogainLoss" loss_param { normalize: true }', [x, labels, np.eye(3)])
    with pytest.raises(RistrettoError, match="3x3"):
        forward('type: "InfogainLoss"', [x, labels, np.eye(2)])
    with pytest.raises(RistrettoError, match="source"):
        forward('type: "InfogainLoss"', [x, labels])
    layer, bottoms, tops = setup('type: "InfogainLoss"', [x, labels, np.eye(3)])
    layer.forward(bottoms, tops)
    with pytest.raises(RistrettoError, match="infogain matrix"):
        layer.backward(tops, [True, False, True], bottoms)
    with pytest.raises(RistrettoError, match="label inputs"):
        layer.backward(tops, [True, True, False], bottoms)


def test_infogain_matrix_from_binaryproto(tmp_path):
    pytest.importorskip("ristretto_cli.io.binaryproto")
    from ristretto_cli.io.blobproto import array_to_blob
    h = infogain_matrix(3)
    path = tmp_path / "H.binaryproto"
    path.write_bytes(array_to_blob(h.reshape(1, 1, 3, 3)).SerializeToString())
    x, labels = scores(4, 3), np.array([0.0, 2.0, 1.0, 1.0], np.float32)
    spec = f'type: "InfogainLoss" infogain_loss_param {{ source: "{path}" }}'
    check_forward(spec, [x, labels], [ref_infogain(x, labels, h, "VALID")])
    check_gradient(spec, [x.astype(np.float64), labels], check_bottoms=[0])


# --------------------------------------------------------------------------- ContrastiveLoss
def ref_contrastive(a, b, y, margin, legacy):
    d2 = np.sum((np.asarray(a, np.float64) - b).reshape(len(y), -1) ** 2, axis=1)
    sim = np.asarray(y).reshape(-1).astype(int) != 0
    if legacy:
        dis = np.maximum(margin - d2, 0)
    else:
        dis = np.maximum(margin - np.sqrt(d2), 0) ** 2
    return np.sum(np.where(sim, d2, dis)) / (2 * len(y))


def contrastive_inputs(c=3):
    """Pairs at chosen distances: dissimilar ones inside and outside the margin 1 (d and d^2),
    none close enough to the hinge for finite differences to cross it."""
    dist = np.array([0.5, 0.7, 1.5, 0.3, 0.6, 1.4])
    direction = RNG.standard_normal((6, c))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    a = RNG.uniform(-0.5, 0.5, size=(6, c))
    b = a + dist[:, None] * direction
    y = np.array([0, 1, 0, 1, 0, 0], np.float32).reshape(6, 1, 1, 1)
    return (a.reshape(6, c, 1, 1).astype(np.float32), b.reshape(6, c, 1, 1).astype(np.float32), y)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_forward(legacy):
    a, b, y = contrastive_inputs()
    spec = (f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 0.8 '
            f'legacy_version: {str(legacy).lower()} }}')
    check_forward(spec, [a, b, y], [ref_contrastive(a, b, y, 0.8, legacy)])


def test_contrastive_loss_hand_value():
    a = np.array([[3.0, 0.0], [0.0, 0.0]], np.float32).reshape(2, 2, 1, 1)
    b = np.array([[0.0, 4.0], [0.3, 0.4]], np.float32).reshape(2, 2, 1, 1)
    y = np.array([1.0, 0.0], np.float32).reshape(2, 1, 1, 1)
    # similar: d^2 = 25; dissimilar: d = 0.5, (1 - 0.5)^2 = 0.25 -> (25 + 0.25) / 4
    check_forward('type: "ContrastiveLoss"', [a, b, y], [25.25 / 4])


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_gradient(legacy):
    a, b, y = contrastive_inputs()
    spec = (f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: 1.0 '
            f'legacy_version: {str(legacy).lower()} }}')
    check_gradient(spec, [a, b, y], check_bottoms=[0, 1])


def test_contrastive_loss_checks():
    a, b, y = contrastive_inputs()
    with pytest.raises(RistrettoError, match="same channels"):
        forward('type: "ContrastiveLoss"', [a, b[:, :2], y])
    with pytest.raises(RistrettoError, match="N x C x 1 x 1"):
        forward('type: "ContrastiveLoss"', [a.reshape(6, 1, 3, 1), b.reshape(6, 1, 3, 1), y])
    layer = setup('type: "ContrastiveLoss"', [a, b, y])[0]
    assert layer.allow_force_backward(1) and not layer.allow_force_backward(2)


# --------------------------------------------------------------------------- shared rules
def test_labels_convert_like_a_c_cast():
    from ristretto_cli.layers.loss import int_labels
    got = int_labels(np.array([2.9, -2.9, -0.5, np.nan, 3e9], np.float32))
    assert got.tolist() == [2, -2, 0, -(2**31), -(2**31)]


@pytest.mark.parametrize("layer_type,bottoms", [
    ("SoftmaxWithLoss", 2), ("EuclideanLoss", 2), ("SigmoidCrossEntropyLoss", 2),
    ("HingeLoss", 2), ("MultinomialLogisticLoss", 2), ("InfogainLoss", 3),
    ("ContrastiveLoss", 3)])
def test_loss_layers_blob_counts(layer_type, bottoms):
    data = [np.ones((2, 2, 1, 1), np.float32)] * (bottoms + 1)
    with pytest.raises(RistrettoError, match="bottom"):
        setup(f'type: "{layer_type}"', data)
    with pytest.raises(RistrettoError, match="top"):
        setup(f'type: "{layer_type}"', data[:bottoms], num_tops=3)
