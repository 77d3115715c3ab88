"""Loss layers: SoftmaxWithLoss, EuclideanLoss, SigmoidCrossEntropyLoss, HingeLoss,
MultinomialLogisticLoss, InfogainLoss, ContrastiveLoss.

Every loss is a 0-axis scalar top; its loss weight sits in that top's diff (set by the base
class) and backward scales by it, so the same code serves nets and gradient checks. Sums that
Caffe accumulates in a scalar loop are accumulated sequentially in the data's dtype so that
printed float32 losses match Caffe's digit for digit.
"""

from __future__ import annotations

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.neuron import sigmoid_in_double
from ristretto_cli.layers.registry import register
from ristretto_cli.layers.softmax import exact_exp, exact_log, softmax, split_axis
from ristretto_cli.proto import caffe_pb2

FLT_MIN = float(np.finfo(np.float32).tiny)
LOG_THRESHOLD = 1e-20  # Caffe's kLOG_THRESHOLD

_NORM = caffe_pb2.LossParameter
_INT_MIN, _INT_LIMIT = -(2**31), 2**31


def int_labels(values: np.ndarray) -> np.ndarray:
    """Labels as C's ``static_cast<int>(float)``: truncation toward zero; NaN and values out of
    the int range give INT_MIN, as the x86 conversion does."""
    values = np.asarray(values)
    with np.errstate(invalid="ignore"):
        ok = (values >= _INT_MIN) & (values < _INT_LIMIT)  # False for NaN
        return np.where(ok, values, _INT_MIN).astype(np.int64)


def sequential_sum(terms: np.ndarray, dtype) -> np.ndarray:
    """Sum in element order with one rounding per addition, like Caffe's ``loss += t`` loop."""
    flat = np.ravel(terms)
    if flat.size == 0:
        return dtype(0)
    return np.add.accumulate(flat, dtype=dtype)[-1]


def legacy_shape(shape) -> tuple[int, int, int, int]:
    """(num, channels, height, width) as Caffe's legacy accessors see a blob (missing axes = 1)."""
    if len(shape) > 4:
        raise ValueError(f"legacy accessors need a blob with at most 4 axes, got {len(shape)}")
    return tuple(int(shape[i]) if i < len(shape) else 1 for i in range(4))


class LossLayer(Layer):
    """Shared by the loss layers: default loss weight 1, a 0-axis loss top, equal batch sizes."""
    is_loss = True
    exact_bottoms = 2
    exact_tops = 1

    def reshape(self, bottom, top):
        if bottom[0].num_axes == 0 or bottom[1].num_axes == 0:
            raise self.error(f"{self.type} layer needs bottoms with a batch axis")
        if bottom[0].shape[0] != bottom[1].shape[0]:
            raise self.error(f"the data and label should have the same first dimension "
                             f"({bottom[0].shape[0]} vs {bottom[1].shape[0]})")
        top[0].reshape(())

    def set_loss(self, top, value, dtype) -> None:
        top[0].data = np.asarray(value, dtype=dtype)

    @staticmethod
    def top_weight(top, dtype):
        """The loss weight (or, in gradient checks, the objective's weight) of the loss top."""
        return dtype(top[0].diff.reshape(-1)[0])

    def no_label_gradient(self, propagate_down, index: int = 1, what: str = "label") -> None:
        if len(propagate_down) > index and propagate_down[index]:
            raise self.error(f"{self.type} layer cannot backpropagate to {what} inputs")

    def legacy(self, blob):
        try:
            return legacy_shape(blob.shape)
        except ValueError as exc:
            raise self.error(str(exc)) from None

    def check_label_range(self, labels: np.ndarray, num_classes: int) -> None:
        # Caffe reads arbitrary memory for such labels (only debug builds check); refuse instead.
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise self.error(f"label value {int(labels[bad][0])} is outside the valid range "
                             f"[0, {num_classes}) (use loss_param.ignore_label for labels to skip)")


class NormalizedLossLayer(LossLayer):
    """The normalization rules (loss_param.normalization, legacy normalize) and ignore_label."""
    #: mode used when neither ``normalization`` nor ``normalize`` is given
    default_normalization = _NORM.VALID

    def read_loss_param(self) -> None:
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _NORM.VALID if lp.normalize else _NORM.BATCH_SIZE
        else:
            self.normalization = self.default_normalization

    def valid_mask(self, labels: np.ndarray) -> np.ndarray:
        if self.ignore_label is None:
            return np.ones(labels.shape, bool)
        return labels != self.ignore_label

    def normalizer(self, outer: int, inner: int, valid_count: int, dtype):
        mode = self.normalization
        if mode == _NORM.FULL:
            n = outer * inner
        elif mode == _NORM.VALID:
            n = valid_count
        elif mode == _NORM.BATCH_SIZE:
            n = outer
        elif mode == _NORM.NONE:
            n = 1
        else:
            raise self.error(f"unknown normalization mode {mode}")
        # max(1, .) keeps a batch without valid labels from dividing by zero
        return max(dtype(1), dtype(n))


class _SoftmaxLossBase(NormalizedLossLayer):
    """Softmax over an axis, then a loss per labelled position; optional top[1] = probabilities."""
    creates_inner_layer = True
    exact_tops = None
    min_tops = 1
    max_tops = 2

    def axis_param(self) -> int:
        raise NotImplementedError

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        _, self._outer, self._channels, self._inner = split_axis(
            self, bottom[0].shape, self.axis_param(), f"{self.type} axis")
        if self._outer * self._inner != bottom[1].count:
            raise self.error(
                f"number of labels must match number of predictions: the scores "
                f"{bottom[0].shape} need {self._outer * self._inner} labels, got {bottom[1].count} "
                f"(e.g. for axis 1 and scores (N, C, H, W) the labels are N*H*W values in [0, C))")
        if len(top) >= 2:
            top[1].reshape(bottom[0].shape)

    def softmax_and_labels(self, bottom, top):
        """Probabilities (outer, C, inner), labels (outer, inner) and the mask of counted ones."""
        prob = softmax(bottom[0].data.reshape(self._outer, self._channels, self._inner))
        self._prob = prob
        if len(top) == 2:
            top[1].data = prob.reshape(bottom[0].shape)  # shares the values, as Caffe's ShareData
        return prob, *self.labels(bottom)

    def labels(self, bottom):
        labels = int_labels(bottom[1].data).reshape(self._outer, self._inner)
        valid = self.valid_mask(labels)
        self.check_label_range(labels[valid], self._channels)
        return np.where(valid, labels, 0), valid


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_SoftmaxLossBase):
    """L = -sum over counted positions of log(max(p[label], FLT_MIN)) / normalizer."""

    def axis_param(self):
        return self.param.softmax_param.axis

    def layer_setup(self, bottom, top):
        self.read_loss_param()

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        prob, labels, valid = self.softmax_and_labels(bottom, top)
        p = np.take_along_axis(prob, labels[:, None, :], axis=1)[:, 0, :]
        logs = exact_log(np.maximum(p, dtype(FLT_MIN)))
        loss = -sequential_sum(np.where(valid, logs, dtype(0)), dtype)
        norm = self.normalizer(self._outer, self._inner, int(valid.sum()), dtype)
        self.set_loss(top, loss / norm, dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dtype = self._prob.dtype.type
        labels, valid = self.labels(bottom)
        dx = self._prob.copy()
        outer_idx, inner_idx = np.nonzero(valid)
        dx[outer_idx, labels[valid], inner_idx] -= dtype(1)
        dx *= valid[:, None, :]
        norm = self.normalizer(self._outer, self._inner, int(valid.sum()), dtype)
        dx *= self.top_weight(top, dtype) / norm
        bottom[0].diff = dx.reshape(bottom[0].shape)


@register("InfogainLoss")
class InfogainLossLayer(_SoftmaxLossBase):
    """Softmax, then L = -sum over counted positions of sum_l H[label, l] log(max(p_l, 1e-20))
    / normalizer. H (L x L) comes from bottom[2] or the BlobProto file infogain_loss_param.source."""
    exact_bottoms = None
    min_bottoms = 2
    max_bottoms = 3

    def axis_param(self):
        return self.param.infogain_loss_param.axis

    def layer_setup(self, bottom, top):
        if self.param.loss_param.HasField("normalize"):
            raise self.error('loss_param.normalize is deprecated for InfogainLoss; use "normalization"')
        self.read_loss_param()
        self._file_h = None
        if len(bottom) < 3:
            p = self.param.infogain_loss_param
            if not p.HasField("source") or not p.source:
                raise self.error("infogain matrix source (infogain_loss_param.source) must be "
                                 "specified when there is no third bottom")
            from ristretto_cli.io.binaryproto import read_blob_file
            try:
                self._file_h = read_blob_file(p.source)
            except RistrettoError as exc:
                raise exc.located(layer=self.name) from None

    def _matrix(self, bottom) -> np.ndarray:
        h = bottom[2].data if len(bottom) >= 3 else self._file_h
        return h.reshape(self._channels, self._channels).astype(bottom[0].data.dtype, copy=False)

    @staticmethod
    def _row_sums(h: np.ndarray) -> np.ndarray:
        return np.add.accumulate(h, axis=1)[:, -1]  # row by row, in order, as Caffe's loop

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        c = self._channels
        h_count = bottom[2].count if len(bottom) >= 3 else self._file_h.size
        if h_count != c * c:
            raise self.error(f"the infogain matrix H must be {c}x{c} ({c * c} values) for {c} "
                             f"labels, got {h_count} values")

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        prob, labels, valid = self.softmax_and_labels(bottom, top)
        h = self._matrix(bottom)
        logs = exact_log(np.maximum(prob, dtype(LOG_THRESHOLD))).transpose(0, 2, 1)
        terms = h[labels] * logs  # (outer, inner, L): Caffe's loop order
        loss = -sequential_sum(np.where(valid[:, :, None], terms, dtype(0)), dtype)
        norm = self.normalizer(self._outer, self._inner, int(valid.sum()), dtype)
        self.set_loss(top, loss / norm, dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_gradient(propagate_down)
        self.no_label_gradient(propagate_down, 2, "infogain matrix")
        if not propagate_down[0]:
            return
        dtype = self._prob.dtype.type
        h = self._matrix(bottom)
        labels, valid = self.labels(bottom)
        sums = self._row_sums(h)[labels]                       # (outer, inner)
        dx = self._prob * sums[:, None, :] - h[labels].transpose(0, 2, 1)
        dx *= valid[:, None, :]
        norm = self.normalizer(self._outer, self._inner, int(valid.sum()), dtype)
        dx *= self.top_weight(top, dtype) / norm
        bottom[0].diff = dx.reshape(bottom[0].shape)


@register("EuclideanLoss")
class EuclideanLossLayer(LossLayer):
    """L = sum((a - b)^2) / (2 N); both bottoms receive gradients."""

    def allow_force_backward(self, bottom_index):
        return True

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same dimension: {bottom[0].shape} vs "
                             f"{bottom[1].shape}")

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        a = bottom[0].data.reshape(-1)
        self._diff = a - bottom[1].data.reshape(-1).astype(a.dtype, copy=False)
        dot = dtype(np.dot(self._diff, self._diff))
        self.set_loss(top, dot / dtype(bottom[0].shape[0]) / dtype(2), dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        dtype = self._diff.dtype.type
        for i, sign in ((0, 1), (1, -1)):
            if propagate_down[i]:
                alpha = dtype(sign) * self.top_weight(top, dtype) / dtype(bottom[i].shape[0])
                bottom[i].diff = (alpha * self._diff).reshape(bottom[i].shape)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(NormalizedLossLayer):
    """L = -sum over counted elements of [x (t - [x>=0]) - log(1 + exp(x - 2x[x>=0]))]
    / normalizer; the targets t may be fractional. Normalization defaults to BATCH_SIZE."""
    default_normalization = _NORM.BATCH_SIZE

    def layer_setup(self, bottom, top):
        self.read_loss_param()

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[0].count != bottom[1].count:
            raise self.error(f"inputs must have the same count: {bottom[0].shape} vs {bottom[1].shape}")

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        x = bottom[0].data.reshape(-1)
        t = bottom[1].data.reshape(-1).astype(x.dtype, copy=False)
        self._sigmoid = sigmoid_in_double(x, np.empty_like(x))    # Caffe's Sigmoid layer's values
        pos = (x >= 0).astype(x.dtype)
        log_term = exact_log(dtype(1) + exact_exp(x - dtype(2) * x * pos))
        terms = x * (t - pos) - log_term
        valid = self.valid_mask(int_labels(t))
        loss = -sequential_sum(np.where(valid, terms, dtype(0)), dtype)
        self._norm = self.normalizer(bottom[0].shape[0], x.size // max(bottom[0].shape[0], 1),
                                     int(valid.sum()), dtype)
        self.set_loss(top, loss / self._norm, dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dtype = self._sigmoid.dtype.type
        t = bottom[1].data.reshape(-1).astype(self._sigmoid.dtype, copy=False)
        dx = self._sigmoid - t
        dx *= self.valid_mask(int_labels(t))
        dx *= self.top_weight(top, dtype) / self._norm
        bottom[0].diff = dx.reshape(bottom[0].shape)


class _PerItemLabelLoss(LossLayer):
    """Layers with one label per batch item (the first N label values) over count/N scores."""

    def item_labels(self, bottom) -> tuple[np.ndarray, np.ndarray]:
        num = bottom[0].shape[0]
        scores = bottom[0].data.reshape(num, -1) if num else bottom[0].data.reshape(0, 0)
        labels = int_labels(bottom[1].data.reshape(-1)[:num])
        self.check_label_range(labels, scores.shape[1])
        return scores, labels


@register("HingeLoss")
class HingeLossLayer(_PerItemLabelLoss):
    """m = max(0, 1 + s x) with s = -1 at the label, +1 elsewhere; L1: sum(m)/N, L2: sum(m^2)/N."""

    def layer_setup(self, bottom, top):
        norm = self.param.hinge_loss_param.norm
        if norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise self.error(f"unknown hinge loss norm {norm}")
        self._l2 = norm == caffe_pb2.HingeLossParameter.L2

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        x, labels = self.item_labels(bottom)
        rows = np.arange(x.shape[0])
        m = x.copy()
        m[rows, labels] *= dtype(-1)
        m = np.maximum(dtype(0), dtype(1) + m)
        self._margins, self._labels = m, labels
        # Caffe keeps the margins in bottom[0]'s diff between forward and backward
        bottom[0].diff = m.reshape(bottom[0].shape).copy()
        total = np.dot(m.reshape(-1), m.reshape(-1)) if self._l2 else np.sum(m)
        self.set_loss(top, dtype(total) / dtype(x.shape[0]), dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        m = self._margins
        dtype = m.dtype.type
        num = dtype(m.shape[0])
        d = m.copy()
        d[np.arange(m.shape[0]), self._labels] *= dtype(-1)
        w = self.top_weight(top, dtype)
        if self._l2:
            d *= w * dtype(2) / num
        else:
            d = np.sign(d) * (w / num)
        bottom[0].diff = d.reshape(bottom[0].shape)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_PerItemLabelLoss):
    """Probabilities in, L = -sum_n log(max(p[n, label_n], 1e-20)) / N."""

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if self.legacy(bottom[1])[1:] != (1, 1, 1):
            raise self.error(f"the label blob must be N x 1 x 1 x 1, got {bottom[1].shape}")

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        p, labels = self.item_labels(bottom)
        prob = np.maximum(p[np.arange(p.shape[0]), labels], dtype(LOG_THRESHOLD))
        loss = -sequential_sum(exact_log(prob), dtype)
        self.set_loss(top, loss / dtype(p.shape[0]), dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        self.no_label_gradient(propagate_down)
        if not propagate_down[0]:
            return
        dtype = bottom[0].data.dtype.type
        p, labels = self.item_labels(bottom)
        rows = np.arange(p.shape[0])
        prob = np.maximum(p[rows, labels], dtype(LOG_THRESHOLD))
        dx = np.zeros_like(p)
        dx[rows, labels] = -self.top_weight(top, dtype) / dtype(p.shape[0]) / prob
        bottom[0].diff = dx.reshape(bottom[0].shape)


@register("ContrastiveLoss")
class ContrastiveLossLayer(LossLayer):
    """Pairs (a, b) with similarity y: L = sum_n [y ? d^2 : max(margin - d, 0)^2] / (2N),
    d = ||a - b|| (legacy_version: max(margin - d^2, 0))."""
    exact_bottoms = 3

    def allow_force_backward(self, bottom_index):
        return bottom_index != 2

    def layer_setup(self, bottom, top):
        a, b, y = (self.legacy(blob) for blob in bottom)
        if a[1] != b[1]:
            raise self.error(f"the two inputs must have the same channels ({a[1]} vs {b[1]})")
        if a[2:] != (1, 1) or b[2:] != (1, 1):
            raise self.error("the two inputs must be N x C x 1 x 1")
        if y[1:] != (1, 1, 1):
            raise self.error(f"the similarity input must be N x 1 x 1 x 1, got {bottom[2].shape}")
        p = self.param.contrastive_loss_param
        self._margin = p.margin
        self._legacy = p.legacy_version

    def reshape(self, bottom, top):
        super().reshape(bottom, top)
        if bottom[2].count < bottom[0].shape[0]:
            raise self.error(f"the similarity input has {bottom[2].count} values for "
                             f"{bottom[0].shape[0]} pairs")

    def forward_cpu(self, bottom, top):
        dtype = bottom[0].data.dtype.type
        num = bottom[0].shape[0]
        a = bottom[0].data.reshape(num, -1)
        self._diff = a - bottom[1].data.reshape(num, -1).astype(a.dtype, copy=False)
        self._dist_sq = np.einsum("ij,ij->i", self._diff, self._diff)
        self._similar = int_labels(bottom[2].data.reshape(-1)[:num]) != 0
        margin = dtype(self._margin)
        if self._legacy:
            dissimilar = np.maximum(margin - self._dist_sq, dtype(0))
        else:
            dissimilar = np.maximum(margin - np.sqrt(self._dist_sq), dtype(0)) ** 2
        terms = np.where(self._similar, self._dist_sq, dissimilar)
        self.set_loss(top, sequential_sum(terms, dtype) / dtype(num) / dtype(2), dtype)

    def backward_cpu(self, top, propagate_down, bottom):
        # Like Caffe, a request to propagate to the similarity input (bottom 2) is ignored.
        dtype = self._diff.dtype.type
        margin = dtype(self._margin)
        for i, sign in ((0, 1), (1, -1)):
            if not propagate_down[i]:
                continue
            alpha = dtype(sign) * self.top_weight(top, dtype) / dtype(bottom[i].shape[0])
            if self._legacy:
                mdist = margin - self._dist_sq
                beta = np.full_like(mdist, -alpha)
            else:
                dist = np.sqrt(self._dist_sq)
                mdist = margin - dist
                beta = -alpha * mdist / (dist + dtype(1e-4))
            coef = np.where(self._similar, alpha, np.where(mdist > 0, beta, dtype(0)))
            bottom[i].diff = (coef[:, None] * self._diff).reshape(bottom[i].shape)
