"""`ristretto time` prints caffe time's lines: per-layer averages and the totals."""

from __future__ import annotations

import logging
import re

from conftest import test_data

from ristretto_cli.cli import main
from ristretto_cli.log import LOGGER_NAME
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
