"""pycaffe's net specification: NetSpec, layers, params, to_proto. The nets built are compared
with prototxt written by hand, and run."""

from __future__ import annotations

import numpy as np
import pytest

from ristretto_cli import pycaffe as caffe
from ristretto_cli.io import parse_text
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.pycaffe import NetSpec
from ristretto_cli.pycaffe import layers as L
from ristretto_cli.pycaffe import params as P

# What Caffe's "learning LeNet" example writes for its NetSpec (by hand, from its calls).
LENET = """
layer { name: "data" type: "Data" top: "data" top: "label"
        transform_param { scale: 0.00392156886 }
        data_param { source: "mnist_train_lmdb" batch_size: 64 backend: LMDB } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc1" type: "InnerProduct" bottom: "pool2" top: "fc1"
        inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "fc1" top: "fc1" }
layer { name: "score" type: "InnerProduct" bottom: "fc1" top: "score"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" }
"""


def lenet(lmdb: str, batch_size: int) -> NetSpec:
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=batch_size, backend=P.Data.LMDB, source=lmdb,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=5, num_output=50, weight_filler=dict(type='xavier'))
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=500, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=10, weight_filler=dict(type='xavier'))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n


def test_lenet_example_gives_the_hand_written_net():
    net = lenet("mnist_train_lmdb", 64).to_proto()
    assert net == parse_text(LENET, caffe_pb2.NetParameter())
    # str() is the text format a script writes to a .prototxt file
    assert parse_text(str(net), caffe_pb2.NetParameter()) == net


def test_layer_and_message_fields_lists_and_auto_names():
    data = L.Input(input_param=dict(shape=dict(dim=[2, 3, 8, 8])))
    conv = L.Convolution(data, num_output=4, kernel_size=3, pad=1,
                         param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                         include=dict(phase=caffe.TRAIN), loss_weight=0.5)
    silence = L.Silence(conv, ntop=0)          # no tops: the call itself is returned
    assert not silence.tops
    net = caffe.to_proto(conv, silence)
    assert [layer.name for layer in net.layer] == ["Input1", "Convolution1", "Silence1"]
    assert net.layer[1].top == ["Convolution1"] and net.layer[1].bottom == ["Input1"]
    assert net.layer[2].bottom == ["Convolution1"] and not net.layer[2].top
    want = parse_text("""
        name: "Convolution1" type: "Convolution" bottom: "Input1" top: "Convolution1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        include { phase: TRAIN } loss_weight: 0.5
        convolution_param { num_output: 4 pad: 1 kernel_size: 3 }""", caffe_pb2.LayerParameter())
    assert net.layer[1] == want
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 8, 8]
    n = NetSpec()
    n.x = data
    n.y = conv
    n["s"] = silence
    assert n.keys() == ["x", "y", "s"] and n["y"] is conv
    assert [layer.name for layer in n.to_proto().layer] == ["x", "y", "s"]
    assert n.to_proto().layer[1].top == ["y"]
    del n["s"]
    assert [layer.name for layer in n.to_proto().layer] == ["x", "y"]


def test_a_specified_net_runs(tmp_path):
    n = NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[4, 3, 10, 10]), dict(dim=[4])],
                                  data_filler=[dict(type="gaussian", std=1), dict(type="constant", value=2)],
                                  ntop=2)
    n.conv = L.Convolution(n.data, num_output=6, kernel_size=3, weight_filler=dict(type="xavier"))
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.AVE)
    n.score = L.InnerProduct(n.pool, num_output=5, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    path = tmp_path / "spec.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TRAIN, seed=0)
    out = net.forward()
    assert net.blobs["pool"].data.shape == (4, 6, 4, 4)
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    grads = net.backward()
    assert net.params["conv"][0].diff.any() and set(grads) == set()


def test_params_and_bad_calls():
    assert P.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert P.Data.LMDB == caffe_pb2.DataParameter.LMDB
    with pytest.raises(AttributeError, match="NoSuchParameter"):
        assert P.NoSuch is None
    with pytest.raises(TypeError, match=r"^Convolution input 0 is not a Top \(type is <class 'str'>\)$"):
        L.Convolution("data", num_output=1)
    # pycaffe's test_net_spec.py: a layer's several tops go one by one
    data = L.DummyData(ntop=2)
    with pytest.raises(TypeError, match=r"^Silence input 0 is not a Top \(type is <class 'tuple'>\)$"):
        L.Silence(data, ntop=0)
    L.Silence(*data, ntop=0)


# ----------------------------------------------------------------------------- coord_map
def conv_pool_deconv(ks=3, pad=0, pool=2, dstride=2, dpad=0) -> NetSpec:
    """Input 100 x 100 -> Convolution -> MAX Pooling -> Deconvolution (kernel 2 x stride)."""
    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=ks, pad=pad,
                           weight_filler=dict(type="xavier"))
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool)
    n.deconv = L.Deconvolution(n.pool, convolution_param=dict(
        num_output=2, kernel_size=2 * dstride, stride=dstride, pad=dpad, weight_filler=dict(type="xavier")))
    return n


def as_lists(coord_map) -> tuple:
    axis, scale, shift = coord_map
    return axis, np.ravel(scale).tolist(), np.ravel(shift).tolist()


def test_coord_map_through_conv_pool_deconv_and_crop():
    """pycaffe's coord_map.py: ``(axis, scale, shift)`` per layer (Convolution: 1/stride,
    (pad - (k - 1)/2)/stride; Deconvolution: stride, (k - 1)/2 - pad; ReLU: identity;
    Crop: -offset), composed along the path; the cases of pycaffe's test_coord_map.py."""
    from ristretto_cli.pycaffe.coord_map import coord_map_from_to

    n = conv_pool_deconv()
    assert as_lists(coord_map_from_to(n.deconv, n.data)) == (1, [1], [0])      # 2x down, 2x up
    n = conv_pool_deconv(pool=4, dstride=4)
    assert as_lists(coord_map_from_to(n.deconv, n.data)) == (1, [1], [-1])
    n = conv_pool_deconv(pad=3, dpad=1)              # conv padding shifts by -3, deconv's by +1
    assert as_lists(coord_map_from_to(n.deconv, n.data)) == (1, [1], [-2])
    n = conv_pool_deconv(ks=[3, 5])                  # one value per spatial axis
    assert as_lists(coord_map_from_to(n.deconv, n.data)) == (1, [1], [0, 1])
    n.relu = L.ReLU(n.deconv)
    n.crop = L.Crop(n.relu, n.data, axis=2, offset=4)
    assert as_lists(coord_map_from_to(n.relu, n.data)) == (1, [1], [0, 1])
    assert as_lists(coord_map_from_to(n.crop, n.data)) == (1, [1], [4, 5])
    n.ip = L.InnerProduct(n.deconv, num_output=2)
    with pytest.raises(RuntimeError, match="connected by spatial layers"):
        coord_map_from_to(n.ip, n.data)


def test_coord_map_crop_aligns_a_net_that_runs(tmp_path):
    """``crop(top_from, top_to)`` is a Crop layer with the offset the map gives; the net
    runs and the cropped top has the reference's size. Unequal scales or an offset past the
    reference: AssertionError, as pycaffe asserts."""
    n = conv_pool_deconv(ks=3, pad=2)                # 102 -> 51 -> 104: 2 rows more each side
    n.score = caffe.coord_map.crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [2]
    path = tmp_path / "crop.prototxt"
    path.write_text(str(n.to_proto()))
    net = caffe.Net(str(path), caffe.TEST, seed=0)
    net.forward()
    assert net.blobs["deconv"].data.shape == (1, 2, 104, 104)
    assert net.blobs["score"].data.shape == (1, 2, 100, 100)
    np.testing.assert_array_equal(net.blobs["score"].data, net.blobs["deconv"].data[:, :, 2:102, 2:102])
    with pytest.raises(AssertionError, match="cannot crop negative offset"):
        caffe.coord_map.crop(n.data, n.deconv)
    odd = conv_pool_deconv(pool=3, dstride=2)
    with pytest.raises(AssertionError, match="scale mismatch"):
        caffe.coord_map.crop(odd.deconv, odd.data)
