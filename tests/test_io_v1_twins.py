"""Upgraded V1 prototxts against their hand-maintained new-format twins, field by field.

The twins come from different repositories; each difference that the source files
themselves contain (read off a plain diff of the two files) is listed below, by layer and
field path. Everything else must be identical after the upgrade.
"""

from __future__ import annotations

import pytest
from conftest import test_data
from io_support import flatten

from ristretto_cli.io import read_net_param

ABSENT = "<absent>"

# path -> (value in the upgraded V1 file, value in the twin)
EXPECTED_DIFFERENCES = {
    ("models/lenet_v1/lenet_train_test.prototxt", "models/lenet/lenet_train_test.prototxt"): {},
    ("models/lenet_v1/lenet.prototxt", "models/lenet/lenet.prototxt"): {
        # the V1 file declares input/input_dim: the upgrade names its Input layer "input";
        # the twin's hand-written Input layer is called "data"
        "layer[0].name": ("input", "data"),
    },
    ("models/cifar10_quick_v1/cifar10_quick_train_test.prototxt",
     "models/cifar10_quick/cifar10_quick_train_test.prototxt"): {
        # the twin reads LMDBs from another folder; the V1 file uses LevelDB (the default)
        "layer[0].data_param.source": ("examples/cifar10/cifar10_train_leveldb",
                                       "/mnt/data/cifar10/cifar10_train_lmdb"),
        "layer[0].data_param.backend": (ABSENT, 1),
        "layer[0].transform_param.mean_file": ("examples/cifar10/mean.binaryproto",
                                               "/mnt/data/cifar10/mean.binaryproto"),
        "layer[1].data_param.source": ("examples/cifar10/cifar10_test_leveldb",
                                       "/mnt/data/cifar10/cifar10_test_lmdb"),
        "layer[1].data_param.backend": (ABSENT, 1),
        "layer[1].transform_param.mean_file": ("examples/cifar10/mean.binaryproto",
                                               "/mnt/data/cifar10/mean.binaryproto"),
    },
    ("models/cifar10_quick_v1/cifar10_quick.prototxt", "models/cifar10_quick/cifar10_quick.prototxt"): {
        "layer[0].name": ("input", "data"),
    },
}


@pytest.mark.parametrize("v1, twin", list(EXPECTED_DIFFERENCES))
def test_upgraded_v1_prototxt_differs_from_twin_only_where_the_sources_differ(v1, twin):
    old = read_net_param(test_data(v1))
    new = read_net_param(test_data(twin))
    a, b = flatten(old), flatten(new)
    differences = {key: (a.get(key, ABSENT), b.get(key, ABSENT))
                   for key in sorted(set(a) | set(b)) if a.get(key, ABSENT) != b.get(key, ABSENT)}
    assert differences == EXPECTED_DIFFERENCES[(v1, twin)]
    assert len(a) > 60  # the comparison covered the whole net


def test_layer_order_and_types_of_an_upgraded_v1_net():
    net = read_net_param(test_data("models/cifar10_quick_v1/cifar10_quick.prototxt"))
    assert [(l.name, l.type) for l in net.layer] == [
        ("input", "Input"), ("conv1", "Convolution"), ("pool1", "Pooling"), ("relu1", "ReLU"),
        ("conv2", "Convolution"), ("relu2", "ReLU"), ("pool2", "Pooling"), ("conv3", "Convolution"),
        ("relu3", "ReLU"), ("pool3", "Pooling"), ("ip1", "InnerProduct"), ("ip2", "InnerProduct"),
        ("prob", "Softmax")]
