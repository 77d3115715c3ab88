"""Errors that need a built net: one line naming the file and the layer, exit status 1."""

from __future__ import annotations

from conftest import test_data

from ristretto_cli.cli import main


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
