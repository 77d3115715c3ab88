"""Forward passes layer by layer, in our engine and in OpenCV's dnn module, for parity tests.

OpenCV's Caffe importer is an independent implementation of Caffe's layers. Asking it for a
layer's output (``net.forward([names])``) keeps that output from being fused with the layer
after it (ReLU into Convolution, in-place activations), so each output it returns is that
layer's own result. Our side matches that by copying each layer's top right after the layer
runs: a later in-place layer (ReLU on ``conv1``) overwrites the blob itself.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ristretto_cli.io import read_net_param
from ristretto_cli.net import TEST, Net

# The comparison rule: max|ours - opencv| <= RTOL * max|opencv|, per blob.
RTOL = 1e-4


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max|ours - theirs| / max|theirs| (float64, so the measure adds no rounding)."""
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    scale = np.abs(theirs).max()
    diff = np.abs(ours - theirs).max()
    return float(diff / scale) if scale else float(diff)


def deploy_param(prototxt, batch: int):
    """The upgraded NetParameter of a deploy file, its (single) input set to ``batch`` items."""
    param = read_net_param(str(prototxt))
    inputs = [lp for lp in param.layer if lp.type == "Input"]
    assert len(inputs) == 1 and len(inputs[0].input_param.shape) == 1, "expected one Input layer"
    inputs[0].input_param.shape[0].dim[0] = batch
    return param


def he_filled_net(param, seed: int, input_scale: float, replace_fillers: bool = False) -> Net:
    """Our Net with seeded gaussian weights for a deploy file that carries no fillers.

    Weights are He-scaled (Caffe's ``msra``: std sqrt(2 / fan_in)), which keeps ReLU
    activations at the input's own scale (tens to hundreds for mean-subtracted pixels, as in
    trained ImageNet nets, so LRN really normalises). The last layer with weights (the
    classifier) is divided by ``input_scale`` so that the class scores are of order one and
    the softmax is not saturated. Biases are gaussian (std 1) so that a dropped bias shows.
    A filler the file does set (other than constant zero) is kept, unless ``replace_fillers``
    (GoogLeNet's xavier, half the He variance, shrinks the activations layer after layer).
    """
    param = type(param).FromString(param.SerializeToString())
    weighted = [lp for lp in param.layer if lp.type in ("Convolution", "InnerProduct")]
    for lp in weighted:
        p = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
        if replace_fillers or _unset(p.weight_filler):
            p.weight_filler.Clear()
            p.weight_filler.type = "msra"
        if p.bias_term and (replace_fillers or _unset(p.bias_filler)):
            p.bias_filler.Clear()
            p.bias_filler.type = "gaussian"
            p.bias_filler.std = 1.0
    net = Net(param, TEST, seed=seed)
    net.layer_by_name(weighted[-1].name).blobs[0].data *= np.float32(1.0 / input_scale)
    return net


def calibrate_batch_norm(net: Net, x: np.ndarray, seed: int) -> None:
    """Running statistics and affine factors for a filled net's BatchNorm and Scale layers,
    as training would leave them: each BatchNorm's mean near its input's channel means on
    ``x`` (offsets of a tenth of a standard deviation), its variance that of the channel plus
    that of the whole blob (so that no channel of near-constant values divides by a tiny
    deviation and blows up float32 rounding), times 0.7-1.4; Scale factors 0.5-1.5, offsets
    of std 0.2. Runs the net layer by layer on ``x`` to see each layer's input."""
    rng = np.random.default_rng(seed)
    (name,) = net.input_names
    net.blobs[name].reshape(x.shape)
    net.blobs[name].data[...] = x
    for i, layer in enumerate(net.layers):
        if layer.type == "BatchNorm":
            b = net.bottom_vecs[i][0].data
            axes = (0,) + tuple(range(2, b.ndim))
            c = b.shape[1]
            layer.blobs[0].data[...] = (b.mean(axis=axes) + rng.normal(0, 0.1, c) * b.std(axis=axes)).reshape(
                layer.blobs[0].shape)
            layer.blobs[1].data[...] = ((b.var(axis=axes) + b.var()) * rng.uniform(0.7, 1.4, c)).reshape(
                layer.blobs[1].shape)
            layer.blobs[2].data[...] = 1.0
        elif layer.type == "Scale":
            layer.blobs[0].data[...] = rng.uniform(0.5, 1.5, layer.blobs[0].shape)
            for blob in layer.blobs[1:]:
                blob.data[...] = rng.normal(0, 0.2, blob.shape)
        net.forward(i, i)


def _unset(filler) -> bool:
    return filler.type == "constant" and filler.value == 0


def our_layer_outputs(net: Net, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's first top, copied right after that layer ran (keyed by layer name)."""
    (name,) = net.input_names
    net.blobs[name].reshape(x.shape)
    net.blobs[name].data[...] = x
    outputs = {}
    for i, layer_name in enumerate(net.layer_names):
        net.forward(i, i)
        if net.top_vecs[i]:
            outputs[layer_name] = net.top_vecs[i][0].data.copy()
    return outputs


def _opencv_net(prototxt, caffemodel):
    return cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))


def opencv_layer_outputs(prototxt, caffemodel, x: np.ndarray) -> dict[str, np.ndarray]:
    """The output of every layer OpenCV exposes, keyed by layer name.

    Winograd convolution is switched off: its float32 transforms add a rounding error of
    their own (about 1e-5 relative on VGG-16), and the reference should be direct
    convolution as in Caffe.
    """
    net = _opencv_net(prototxt, caffemodel)
    net.enableWinograd(False)
    names = list(net.getLayerNames())
    net.setInput(x)
    return dict(zip(names, net.forward(names)))


def opencv_default_output(prototxt, caffemodel, x: np.ndarray) -> np.ndarray:
    """The final output of OpenCV's ordinary inference (layer fusion, default convolution)."""
    net = _opencv_net(prototxt, caffemodel)
    net.setInput(x)
    return net.forward()


# ---------------------------------------------------------------------------- inputs
def _label(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


def mnist_batch(folder: Path, count: int) -> tuple[np.ndarray, list[int]]:
    """MNIST digits scaled by 1/256, as LeNet was trained (transform_param scale 0.00390625)."""
    paths = sorted(folder.glob("mnist_*.png"))[:count]
    images = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in paths]).astype(np.float32)
    return images[:, None] / np.float32(256.0), [_label(p) for p in paths]


# Per-channel means (R, G, B) of CIFAR-10 training images; the nets' mean.binaryproto
# is not available.
CIFAR_MEAN_RGB = np.array([125.3, 123.0, 113.9], np.float32)


def cifar_batch(folder: Path, count: int) -> tuple[np.ndarray, list[int]]:
    """CIFAR-10 images in RGB order (as convert_cifar_data stores them) minus the mean."""
    paths = sorted(folder.glob("cifar10_*.png"))[:count]
    rgb = np.stack([cv2.imread(str(p), cv2.IMREAD_COLOR)[:, :, ::-1] for p in paths]).astype(np.float32)
    return (rgb - CIFAR_MEAN_RGB).transpose(0, 3, 1, 2).copy(), [_label(p) for p in paths]


def imagenet_batch(folder: Path, mean_file: Path, size: int, count: int) -> np.ndarray:
    """Photos resized to ``size`` x ``size``, BGR, minus the ILSVRC12 per-channel mean (as
    Caffe's classify.py preprocesses for the model-zoo nets)."""
    mean_bgr = np.load(mean_file).mean(axis=(1, 2)).astype(np.float32)
    paths = sorted(folder.glob("*.jpg"))[:count]
    images = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (size, size), interpolation=cv2.INTER_AREA)
              for p in paths]
    return (np.stack(images).astype(np.float32) - mean_bgr).transpose(0, 3, 1, 2).copy()
