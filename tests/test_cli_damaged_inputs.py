"""Damaged inputs, drawn at random: every run ends with exit 0, or with exactly one
``ristretto: error:`` line and exit 1, and never with a traceback.

The bad-input corpus (test_io_bad_inputs.py) pins one message per kind of damage; here
seeded mutations of the bundled LeNet and CIFAR-10 files look for what nobody thought of.
Prototxts get changed numbers, deleted or repeated lines, swapped type names and stray
fields; caffemodels (new and legacy V1) are cut short or get bytes flipped, inserted or
deleted. Caffemodels damaged this way once ended in a UnicodeDecodeError traceback (a layer
name that was not UTF-8); that is one line now. (Fields too large for the machine's memory
are in test_cli_errors.py, simulated: no test here asks for much memory.)
"""

from __future__ import annotations

import random
import re
import subprocess
import sys

import pytest
from conftest import test_data
from log_support import run_cli

from ristretto_cli.io import read_weights, write_caffemodel

PROTOTXTS = ["models/lenet/lenet.prototxt", "models/cifar10_quick/cifar10_quick.prototxt"]
WEIGHTS = [("models/lenet/lenet.prototxt", "models/lenet/lenet_iter_10000.caffemodel"),
           ("models/lenet/lenet.prototxt", "models/lenet_v1/lenet_iter_10000.caffemodel"),
           ("models/cifar10_quick/cifar10_quick.prototxt",
            "models/cifar10_quick/cifar10_quick_iter_4000.caffemodel")]
NUMBERS = ["0", "-1", "1", "2", "3", "7", "64", "0.5", "-3"]
TYPES = ['"ReLU"', '"Pooling"', '"Convolution"', '"InnerProduct"', '"Softmax"', '"Concat"',
         '"Eltwise"', '"Deconvolution"', '"LRN"', '"Flatten"', '"data"', '"conv1"']
FIELDS = ["pad: 3", "stride: 0", "group: 3", "kernel_size: 0", "axis: 5", "axis: -5", "dilation: 0",
          "pool: AVE", "global_pooling: true", "bias_term: false", "num_output: 0", "engine: CAFFE"]


def damaged_prototxt(rnd: random.Random, text: str) -> str:
    lines = text.splitlines()
    for _ in range(rnd.randint(1, 3)):
        i, op = rnd.randrange(len(lines)), rnd.random()
        if op < 0.5:
            numbers = list(re.finditer(r"(?<![\w.])-?\d+(\.\d+)?", lines[i]))
            if numbers:
                m = rnd.choice(numbers)
                lines[i] = lines[i][:m.start()] + rnd.choice(NUMBERS) + lines[i][m.end():]
        elif op < 0.65:
            del lines[i]
        elif op < 0.8:
            lines.insert(i, lines[rnd.randrange(len(lines))])
        elif op < 0.9:
            names = list(re.finditer(r'"[A-Za-z]+"', lines[i]))
            if names:
                m = rnd.choice(names)
                lines[i] = lines[i][:m.start()] + rnd.choice(TYPES) + lines[i][m.end():]
        else:
            lines.insert(i, rnd.choice(FIELDS))
    return "\n".join(lines)


def damaged_bytes(rnd: random.Random, data: bytes) -> bytes:
    data, op = bytearray(data), rnd.random()
    if op < 0.3:
        return bytes(data[:rnd.randrange(len(data))])
    if op < 0.7:       # mostly in the first 4 KB: names, types, shapes
        for _ in range(rnd.randint(1, 8)):
            i = rnd.randrange(min(len(data), 4096) if rnd.random() < 0.8 else len(data))
            data[i] = rnd.randrange(256)
    elif op < 0.85:
        i = rnd.randrange(len(data))
        data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    else:
        i = rnd.randrange(len(data))
        del data[i:i + rnd.randint(1, 64)]
    return bytes(data)


def assert_clean_end(status: int, err: list[str], what: str) -> None:
    assert status in (0, 1), what
    assert not any("Traceback" in line for line in err), what
    if status == 1:
        errors = [line for line in err if line.startswith("ristretto: error: ")]
        assert len(errors) == 1 and "\n" not in errors[0], (what, err[-5:])


@pytest.mark.parametrize("first", range(0, 120, 40), ids=lambda s: f"seeds {s}-{s + 39}")
def test_damaged_prototxts(first, tmp_path, capsys):
    texts = [test_data(p).read_text() for p in PROTOTXTS]
    model = tmp_path / "net.prototxt"
    for seed in range(first, first + 40):
        rnd = random.Random(seed)
        model.write_text(damaged_prototxt(rnd, rnd.choice(texts)))
        status, err = run_cli(capsys, "time", "--model", model, "--iterations", "1")
        assert_clean_end(status, err, f"seed {seed}:\n{model.read_text()}")


@pytest.mark.parametrize("first", range(0, 200, 40), ids=lambda s: f"seeds {s}-{s + 39}")
def test_damaged_caffemodels(first, tmp_path, capsys):
    cases = [(test_data(p), test_data(w).read_bytes()) for p, w in WEIGHTS]
    weights = tmp_path / "net.caffemodel"
    for seed in range(first, first + 40):
        rnd = random.Random(1000 + seed)
        model, data = rnd.choice(cases)
        weights.write_bytes(damaged_bytes(rnd, data))
        status, err = run_cli(capsys, "time", "--model", model, "--weights", weights, "--iterations", "1")
        assert_clean_end(status, err, f"seed {seed}, {model}")


def test_weights_holding_nan_and_infinities_compute_quietly_as_in_caffe(tmp_path):
    """A diverged snapshot: the scores come out NaN, with no NumPy warning on stderr (the
    package ignores RuntimeWarnings raised in its own modules). In a fresh process, since
    pytest resets warning filters between tests."""
    net = read_weights(test_data("models/lenet/lenet_iter_10000.caffemodel"))
    for layer in net.layer:
        for blob in layer.blobs:
            blob.data[0], blob.data[-1] = float("nan"), float("inf")
    weights = tmp_path / "diverged.caffemodel"
    write_caffemodel(weights, net)
    run = subprocess.run([sys.executable, "-m", "ristretto_cli", "time", "--model",
                          str(test_data("models/lenet/lenet.prototxt")), "--weights", str(weights),
                          "--iterations", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-500:]
    assert "Warning" not in run.stderr and "Traceback" not in run.stderr, run.stderr[-500:]
