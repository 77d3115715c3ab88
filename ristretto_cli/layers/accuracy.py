"""Metric layers without a backward pass: Accuracy (top-k, per class) and ArgMax."""

from __future__ import annotations

import numpy as np

from ristretto_cli.blob import count
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.loss import int_labels
from ristretto_cli.layers.registry import register
from ristretto_cli.layers.softmax import split_axis


@register("Accuracy")
class AccuracyLayer(Layer):
    """Fraction of labelled positions whose true class is among the top_k scores.

    A class scoring *equal* to the true class counts as better (ties count against the
    prediction), exactly as Caffe's ``>=`` count. Optional top[1]: accuracy per class.
    """
    exact_bottoms = 2
    min_tops = 1
    max_tops = 2
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.accuracy_param
        self._top_k = p.top_k
        self._ignore = p.ignore_label if p.HasField("ignore_label") else None

    def reshape(self, bottom, top):
        n_labels = bottom[1].count
        if n_labels and self._top_k > bottom[0].count // n_labels:
            raise self.error(f"top_k ({self._top_k}) must be less than or equal to the number "
                             f"of classes ({bottom[0].count // n_labels})")
        _, self._outer, self._classes, self._inner = split_axis(
            self, bottom[0].shape, self.param.accuracy_param.axis, "accuracy axis")
        if self._outer * self._inner != n_labels:
            raise self.error(
                f"number of labels must match number of predictions: the scores "
                f"{bottom[0].shape} need {self._outer * self._inner} labels, got {n_labels} "
                f"(e.g. for axis 1 and scores (N, C, H, W) the labels are N*H*W values in [0, C))")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape((self._classes,))

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        scores = bottom[0].data.reshape(self._outer, self._classes, self._inner)
        labels = int_labels(bottom[1].data).reshape(self._outer, self._inner)
        valid = np.ones(labels.shape, bool) if self._ignore is None else labels != self._ignore
        bad = valid & ((labels < 0) | (labels >= self._classes))
        if bad.any():
            # Caffe reads arbitrary memory for such labels (only debug builds check); refuse.
            raise self.error(f"label value {int(labels[bad][0])} is outside the valid range "
                             f"[0, {self._classes}) (use accuracy_param.ignore_label to skip it)")
        safe = np.where(valid, labels, 0)
        true_score = np.take_along_axis(scores, safe[:, None, :], axis=1)
        # classes at least as good as the true one, itself included (none if it is NaN)
        at_least = np.count_nonzero(scores >= true_score, axis=1)
        correct = valid & (at_least - 1 < self._top_k)
        n_valid = int(valid.sum())
        top[0].data = np.asarray(
            dtype(0) if n_valid == 0 else dtype(int(correct.sum())) / dtype(n_valid), dtype)
        if len(top) > 1:
            seen = np.bincount(labels[valid], minlength=self._classes).astype(dtype)
            hits = np.bincount(labels[correct], minlength=self._classes).astype(dtype)
            with np.errstate(invalid="ignore", divide="ignore"):
                top[1].data = np.where(seen == 0, dtype(0), hits / seen).astype(dtype)


@register("ArgMax")
class ArgMaxLayer(Layer):
    """Indices (and optionally values) of the top_k largest entries, per item or along an axis.

    Ties go to the larger index (Caffe sorts (value, index) pairs in descending order).
    """
    exact_bottoms = 1
    exact_tops = 1
    has_backward = False

    def layer_setup(self, bottom, top):
        p = self.param.argmax_param
        self._out_max_val = p.out_max_val
        self._top_k = p.top_k
        self._has_axis = p.HasField("axis")
        if self._top_k < 1:
            raise self.error("argmax_param.top_k must not be less than 1")
        shape = bottom[0].shape
        if self._has_axis:
            axis = split_axis(self, shape, p.axis, "argmax axis")[0]
            if self._top_k > shape[axis]:
                raise self.error(f"top_k ({self._top_k}) must be less than or equal to the "
                                 f"dimension of the axis ({shape[axis]})")
        elif self._top_k > count(shape, 1):
            raise self.error(f"top_k ({self._top_k}) must be less than or equal to the dimension "
                             f"of the flattened bottom blob per instance ({count(shape, 1)})")

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        if self._has_axis:
            axis, self._outer, self._dim, self._inner = split_axis(
                self, shape, self.param.argmax_param.axis, "argmax axis")
            top_shape = list(shape)
            top_shape[axis] = self._top_k
        else:
            self._outer, self._dim, self._inner = shape[0], count(shape, 1), 1
            top_shape = [1] * max(len(shape), 3)
            top_shape[0] = shape[0]
            top_shape[1] = 2 if self._out_max_val else 1
            top_shape[2] = self._top_k
        top[0].reshape(top_shape)

    def forward_cpu(self, bottom, top):
        x = bottom[0].data.reshape(self._outer, self._dim, self._inner)
        k = self._top_k
        # Reversed along the axis, a stable descending order puts equal values' larger
        # original index first.
        rev = x[:, ::-1, :]
        if k == 1:
            pos = np.argmax(rev, axis=1)[:, None, :]
        else:
            pos = np.argsort(-rev, axis=1, kind="stable")[:, :k, :]
        idx = (self._dim - 1) - pos                                   # (outer, k, inner)
        if self._has_axis:
            out = np.take_along_axis(x, idx, axis=1) if self._out_max_val else idx
        elif self._out_max_val:
            out = np.concatenate([idx, np.take_along_axis(x, idx, axis=1)], axis=1)
        else:
            out = idx
        top[0].data = out.astype(x.dtype).reshape(top[0].shape)
