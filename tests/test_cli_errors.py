"""Errors that need a built net: one line naming the file and the layer, exit status 1."""

from __future__ import annotations

import pytest
from conftest import test_data

from ristretto_cli import pycaffe
from ristretto_cli.blob import Blob
from ristretto_cli.cli import main
from ristretto_cli.errors import OutOfMemoryError, RistrettoError
from ristretto_cli.layers.inner_product import InnerProductLayer
from ristretto_cli.net import Net


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("ristretto: error: ")
    return err[0]


def test_weights_whose_blob_shapes_do_not_match_the_net(capsys):
    model = test_data("models/lenet/lenet.prototxt")
    weights = test_data("models/cifar10_quick/cifar10_quick_iter_4000.caffemodel")
    assert main(["time", f"--model={model}", f"--weights={weights}", "--iterations=1"]) == 1
    line = one_error_line(capsys)
    # names the weights file, the layer, and both shapes
    assert str(weights) in line and "layer 'conv1'" in line and "shape mismatch" in line
    assert "32 3 5 5 (2400)" in line and "20 1 5 5 (500)" in line


def test_unknown_layer_type_names_the_layer_and_lists_known_types(capsys, tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n'
                     'layer { name: "odd" type: "Frobnicate" bottom: "x" top: "y" }\n')
    assert main(["time", f"--model={model}", "--iterations=1"]) == 1
    line = one_error_line(capsys)
    assert "layer 'odd'" in line and "unknown layer type 'Frobnicate'" in line and "Convolution" in line


def test_missing_bottom_blob_names_the_layer(capsys, tmp_path):
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "relu" type: "ReLU" bottom: "nowhere" top: "y" }\n')
    assert main(["time", f"--model={model}", "--iterations=1"]) == 1
    line = one_error_line(capsys)
    assert "layer 'relu'" in line and "unknown bottom blob 'nowhere'" in line


def test_a_blob_past_caffes_int_max_count_names_the_layer(capsys, tmp_path):
    # Caffe's Blob::Reshape checks count <= INT_MAX; so does ours, before allocating.
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "x" '
                     'input_param { shape { dim: 100000 dim: 100000 dim: 100000 } } }\n'
                     'layer { name: "relu" type: "ReLU" bottom: "x" top: "y" }\n')
    assert main(["time", f"--model={model}", "--iterations=1"]) == 1
    line = one_error_line(capsys)
    assert "layer 'in'" in line and "blob size exceeds INT_MAX" in line and "2147483647" in line
    with pytest.raises(RistrettoError, match="exceeds INT_MAX"):
        Blob((2**16, 2**15))
    with pytest.raises(RistrettoError, match="exceeds INT_MAX"):
        Blob((1,)).reshape((2**31,))


def test_running_out_of_memory_is_one_line_naming_the_layer(capsys, tmp_path, monkeypatch):
    """An input or num_output too large for the machine (but under Caffe's INT_MAX) fails
    where the layer allocates: simulated here, so that no test asks for that much memory."""
    model = tmp_path / "net.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 4 } }\n')

    def refuse(self, bottom, top):
        raise MemoryError("Unable to allocate 119. GiB for an array with shape (20000000, 800)")
    monkeypatch.setattr(InnerProductLayer, "layer_setup", refuse)
    assert main(["time", f"--model={model}", "--iterations=1"]) == 1
    line = one_error_line(capsys)
    assert line == ("ristretto: error: layer 'ip': out of memory: Unable to allocate 119. GiB for "
                    "an array with shape (20000000, 800)")
    # In the Python API the error is still a MemoryError, as pycaffe's std::bad_alloc is
    with pytest.raises(MemoryError) as info:
        pycaffe.Net(str(model), pycaffe.TEST)
    assert isinstance(info.value, OutOfMemoryError) and info.value.layer == "ip"
    capsys.readouterr()                             # the API's log lines
    # Outside any layer (here: while the net is built), the CLI still prints one line
    def no_net(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 1.00 TiB")
    monkeypatch.setattr(Net, "__init__", no_net)
    assert main(["time", f"--model={model}", "--iterations=1"]) == 1
    assert one_error_line(capsys) == "ristretto: error: out of memory: Unable to allocate 1.00 TiB"
