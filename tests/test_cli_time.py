"""`ristretto time` prints caffe time's lines: per-layer averages and the totals."""

from __future__ import annotations

import logging
import re

import pytest
from conftest import test_data

from ristretto_cli.cli import main
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import read_net_param
from ristretto_cli.log import LOGGER_NAME
from ristretto_cli.net import TRAIN, Net
from ristretto_cli.timing import time_model


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_time_prints_per_layer_and_average_lines():
    handler = _Lines()
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        result = time_model(str(test_data("models/lenet/lenet_train_test.prototxt").with_name("lenet.prototxt")),
                            iterations=2, phase="TRAIN")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    text = "\n".join(handler.lines)
    assert "*** Benchmark begins ***" in text and "*** Benchmark ends ***" in text
    assert re.search(r"^Iteration: 2 forward-backward time: [\d.e+-]+ ms\.$", text, re.M)
    assert re.search(r"^     conv1\tforward: [\d.e+-]+ ms\.$", text, re.M)
    assert re.search(r"^     conv1\tbackward: [\d.e+-]+ ms\.$", text, re.M)
    for what in ("Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"):
        assert re.search(rf"^{what}: [\d.e+-]+ ms\.$", text, re.M), what
    assert [name for name, _, _ in result["layers"]][:2] == ["data", "conv1"]
    assert result["forward_ms"] > 0


def test_time_cli_errors_are_one_line(capsys):
    assert main(["time"]) == 1
    assert capsys.readouterr().err.strip() == "ristretto: error: Need a model definition to time."
    assert main(["time", "--model", "nope.prototxt"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ristretto: error: nope.prototxt")


def test_time_skips_the_backward_of_layers_that_have_none(tmp_path):
    """A deploy net ending in ArgMax and Threshold, layers without a backward pass, is timed
    whole: their backward is not called (Caffe's tool would stop there:
    docs/compatibility.md)."""
    model = tmp_path / "deploy.prototxt"
    model.write_text('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
                     'inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }\n'
                     'layer { name: "top" type: "ArgMax" bottom: "y" top: "k" }\n'
                     'layer { name: "on" type: "Threshold" bottom: "y" top: "t" }\n')
    result = time_model(str(model), iterations=2)
    times = {name: (f, b) for name, f, b in result["layers"]}
    assert set(times) == {"in", "ip", "y_ip_0_split", "top", "on"}   # Caffe's split of y included
    net = Net(read_net_param(str(model)), TRAIN)
    for i, layer in enumerate(net.layers):
        if layer.name in ("top", "on"):     # called, either would stop the run
            with pytest.raises(RistrettoError, match="has no backward pass"):
                layer.backward(net.top_vecs[i], [False], net.bottom_vecs[i])
    assert main(["time", "--model", str(model), "--iterations", "1"]) == 0
