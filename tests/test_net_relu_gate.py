"""The backward half of the net's ReLU fusion: an in-place ReLU's backward pass runs inside the
layer that reads its blob, while that layer writes the blob's gradient (``gates_relu``). Every
gradient must equal the one of the same net with the ReLUs run on their own, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import small_work_units
from google.protobuf import text_format

from ristretto_cli.net import TRAIN, Net
from ristretto_cli.proto import caffe_pb2

HEAD = '''
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 dim: 9 dim: 9 } } }
layer { name: "conv0" type: "Convolution" bottom: "x" top: "y"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
'''
SECOND = '''
layer { name: "conv1" type: "Convolution" bottom: "x" top: "y1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "gaussian" } } }
layer { name: "relu1" type: "ReLU" bottom: "y1" top: "y1" }
'''


def _conv(name: str, params: str) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "y" top: "z" convolution_param {{ '
            f'{params} weight_filler {{ type: "gaussian" std: 0.2 }} bias_filler {{ type: "gaussian" }} }} }}')


READERS = {
    # the convolution's four ways to its input gradient
    "conv shifted rows": _conv("c", "num_output: 16 kernel_size: 5 pad: 2"),
    "conv flipped kernels": _conv("c", "num_output: 8 kernel_size: 3 pad: 1"),
    "conv col2im": _conv("c", "num_output: 8 kernel_size: 3 pad: 1 stride: 2"),
    "conv grouped col2im": _conv("c", "num_output: 32 kernel_size: 3 pad: 1 group: 2"),
    "conv pointwise": _conv("c", "num_output: 8 kernel_size: 1"),
    "max pooling": 'layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }',
    "average pooling": 'layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }',
    "global max pooling": 'layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: MAX global_pooling: true } }',
    "global average pooling": 'layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: AVE global_pooling: true } }',
    "stochastic pooling": 'layer { name: "p" type: "Pooling" bottom: "y" top: "z" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }',
    "concat channels": SECOND + 'layer { name: "cat" type: "Concat" bottom: "y" bottom: "y1" top: "z" }',
    "concat items": SECOND + 'layer { name: "cat" type: "Concat" bottom: "y1" bottom: "y" top: "z" concat_param { axis: 0 } }',
    "split of one": 'layer { name: "s" type: "Split" bottom: "y" top: "z" }',
    "split of three": 'layer { name: "s" type: "Split" bottom: "y" top: "z" top: "z2" top: "z3" }',
    "implicit split": _conv("c", "num_output: 8 kernel_size: 1") + 'layer { name: "p" type: "Pooling" bottom: "y" top: "z2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }',
}


def _pair(text: str) -> tuple[Net, Net]:
    """The net twice (same seed: same weights): with its ReLUs gated, and with them run alone."""
    param = caffe_pb2.NetParameter()
    text_format.Parse(text, param)
    gated, alone = Net(param, TRAIN, seed=11), Net(param, TRAIN, seed=11)
    alone._gated_relus = {}
    return gated, alone


def _run(net: Net, x: np.ndarray, diffs: dict[str, np.ndarray], **backward) -> None:
    net.blobs["x"].data[...] = x
    net.forward()
    for name, d in diffs.items():
        net.blobs[name].diff[...] = d
    net.backward(**backward)


def _relu_calls(net: Net) -> list[str]:
    """Records the names of the ReLUs whose own backward runs."""
    calls = []
    for layer in net.layers:
        if layer.type == "ReLU":
            def counted(*args, _layer=layer, _backward=layer.backward):
                calls.append(_layer.name)
                return _backward(*args)
            layer.backward = counted
    return calls


def _assert_same_gradients(a: Net, b: Net) -> None:
    for name in a.blobs:
        np.testing.assert_array_equal(a.blobs[name].diff, b.blobs[name].diff, err_msg=name)
    for la, lb in zip(a.layers, b.layers):
        for pa, pb in zip(la.blobs, lb.blobs):
            np.testing.assert_array_equal(pa.diff, pb.diff, err_msg=la.name)


def _inputs(net: Net, seed: int = 2) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 9, 9)).astype(np.float32)
    diffs = {name: rng.standard_normal(net.blobs[name].shape).astype(np.float32)
             for name in net.output_names}
    return x, diffs


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("threads", [1, 2])
def test_a_relu_gated_by_the_layer_that_reads_it_gives_the_same_gradients(reader, threads, monkeypatch):
    small_work_units(monkeypatch, threads)
    gated, alone = _pair(HEAD + READERS[reader])
    relu = gated.layer_names.index("relu")
    assert any(r == relu for pairs in gated._gated_relus.values() for _, r in pairs)
    x, diffs = _inputs(gated)
    calls = _relu_calls(gated)
    _run(gated, x, diffs)
    _run(alone, x, diffs)
    y = gated.blobs["y"].data
    assert (y == 0).mean() > 0.2 and (y > 0).mean() > 0.2     # the gate matters
    _assert_same_gradients(gated, alone)
    # Global max pooling leaves the ReLU to the net
    ungated = reader == "global max pooling"
    assert ("relu" in calls) == ungated
    assert "relu1" not in calls


def test_the_gate_multiplies_as_caffe_does_an_infinite_gradient_on_a_zero_output_is_nan():
    gated, alone = _pair(HEAD + READERS["split of three"])
    x, diffs = _inputs(gated)
    alone.blobs["x"].data[...] = x
    alone.forward()
    dead = np.argwhere(alone.blobs["y"].data == 0)[0]
    diffs["z2"][tuple(dead)] = np.inf
    with np.errstate(invalid="ignore"):
        _run(gated, x, diffs)
        _run(alone, x, diffs)
    assert np.isnan(gated.blobs["y"].diff[tuple(dead)])
    _assert_same_gradients(gated, alone)


def test_a_backward_that_stops_between_the_two_layers_leaves_the_gradient_ungated():
    gated, alone = _pair(HEAD + READERS["max pooling"])
    x, diffs = _inputs(gated)
    relu, reader = gated.layer_names.index("relu"), gated.layer_names.index("p")
    _run(gated, x, diffs, start=reader, end=reader)
    _run(alone, x, diffs, start=reader, end=reader)
    np.testing.assert_array_equal(gated.blobs["y"].diff, alone.blobs["y"].diff)
    assert (gated.blobs["y"].diff[gated.blobs["y"].data == 0] != 0).any()
    gated.backward(start=relu)            # the ReLU then runs on its own
    alone.backward(start=relu)
    _assert_same_gradients(gated, alone)


@pytest.mark.parametrize("change", [
    ('type: "ReLU" bottom: "y" top: "y" }', 'type: "ReLU" bottom: "y" top: "y" relu_param { negative_slope: 0.1 } }'),
    ('type: "ReLU" bottom: "y" top: "y" }', 'type: "ReLU" bottom: "y" top: "r" }'),
    ('pooling_param', 'loss_weight: 1 pooling_param'),
])
def test_only_an_in_place_plain_relu_read_by_one_layer_without_a_loss_is_gated(change):
    text = (HEAD + READERS["max pooling"]).replace(*change).replace('bottom: "y" top: "z"', 'bottom: "%s" top: "z"'
                                                                    % ("r" if "top: \"r\"" in change[1] else "y"))
    gated, alone = _pair(text)
    assert gated._gated_relus == {}
