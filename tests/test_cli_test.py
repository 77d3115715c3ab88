"""``ristretto test`` (Caffe's ``caffe test``) and the scoring API quantize reuses.

The LeNet runs reproduce the real ``caffe test`` logs in reference/lenet_test.txt line for
line: every ``Batch i, name = v`` line, ``Loss:`` and the means, to the printed digits.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from conftest import SHARED_DATA, shared_data
from data_support import build_net, capture_log, message, reference_runs, run_cli  # noqa: F401

from ristretto_cli.errors import RistrettoError
from ristretto_cli.scoring import run_forward_batches

LENET = "models/lenet/lenet_train_test.prototxt"
LENET_V1 = "models/lenet_v1/lenet_train_test.prototxt"
WEIGHTS = {LENET: "models/lenet/lenet_iter_10000.caffemodel",
           LENET_V1: "models/lenet_v1/lenet_iter_10000.caffemodel"}
FINAL = {LENET: ("0.9909", "0.0289774"), LENET_V1: ("0.9905", "0.0291821")}


@pytest.fixture
def mnist_workdir(tmp_path, monkeypatch):
    """A working directory where examples/mnist/mnist_test_lmdb is the reference LMDB (how the
    reference logs were made: the prototxts use that relative path, unchanged)."""
    lmdb_dir = shared_data("reference/mnist_test_lmdb")
    (tmp_path / "examples" / "mnist").mkdir(parents=True)
    os.symlink(lmdb_dir, tmp_path / "examples" / "mnist" / "mnist_test_lmdb")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _scoring_lines(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        msg = message(line)
        if msg.startswith(("Batch ", "Loss: ")) or (" = " in msg and msg.split(" = ")[0].isidentifier()):
            out.append(msg)
    return out


def _close_batch_loss(got: str, want: str) -> bool:
    """Equal as printed, or within float32 rounding noise of the loss: 1e-5 relative (one
    unit in the 6th digit) plus 1e-8 absolute (one float32 step of a probability near 1 moves
    -log(p) by ~6e-8, i.e. a batch mean of 100 terms by ~1e-9 per term)."""
    if got == want:
        return True
    a, b = float(got), float(want)
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)


def check_against_reference(got: list[str], reference: list[str], model: str) -> None:
    """Every scoring line of the real log, in order. Accuracy lines, ``Loss:`` and the means
    must be identical strings. A per-batch *loss* line may differ in its last printed digits:
    those values come out of float32 GEMMs (convolution, inner product) whose rounding
    depends on the BLAS kernel's summation order, which no NumPy build reproduces exactly
    (about a third of the 100 batch losses differ, by at most 6e-9; the data, labels and the
    float32 accumulation of the scores are exact, as the identical accuracy lines and means
    show)."""
    assert len(got) == len(reference) == 203
    for g, r in zip(got, reference):
        g_name, g_val = g.rsplit(" = ", 1) if g.startswith("Batch ") else (g, None)
        r_name, r_val = r.rsplit(" = ", 1) if r.startswith("Batch ") else (r, None)
        assert g_name == r_name
        if g.startswith("Batch ") and g_name.endswith(", loss"):
            assert _close_batch_loss(g_val, r_val), (g, r)
        else:
            assert g == r
    acc, loss = FINAL[model]
    assert got[-3:] == [f"Loss: {loss}", f"accuracy = {acc}", f"loss = {loss} (* 1 = {loss} loss)"]


@pytest.mark.slow
@pytest.mark.parametrize("model", [LENET, LENET_V1], ids=["lenet", "lenet_v1"])
def test_lenet_matches_the_real_caffe_test_log(model, mnist_workdir, capsys):
    reference = reference_runs(shared_data("reference/lenet_test.txt"))[model]
    status, lines = run_cli(capsys, "test", f"--model={SHARED_DATA / model}",
                            f"--weights={shared_data(WEIGHTS[model])}", "--iterations=100")
    assert status == 0, lines[-5:]
    msgs = [message(x) for x in lines]
    assert msgs[0] == "Use CPU."
    assert "Running for 100 iterations." in msgs
    assert "output data size: 100,1,28,28" in msgs
    assert msgs.count("Restarting data prefetching from start.") == 1  # reads ahead past record 9999
    check_against_reference(_scoring_lines(lines), reference, model)


def _setup_text(lines) -> list[str]:
    """A run's lines up to "Running for N iterations.", glog prefixes dropped (the net's text
    that "Initializing net from parameters:" spans keeps its own lines)."""
    out = []
    for line in lines:
        out.append(re.sub(r"^[IWEF]\d{4}(\d{4})? \S+ +\d+ \S+\] ", "", line.rstrip("\n")))
        if out[-1].startswith("Running for "):
            return out
    raise AssertionError("no 'Running for' line")


def _reference_setup_text(model: str) -> list[str]:
    lines, current = [], None
    for line in open(shared_data("reference/lenet_test.txt"), encoding="utf-8"):
        if line.startswith("##########"):
            current = line.split("--model=")[1].split()[0] if "--model=" in line else current
            continue
        if current == model:
            lines.append(line)
    return _setup_text(lines)


@pytest.mark.slow
@pytest.mark.parametrize("model", [LENET, LENET_V1], ids=["lenet", "lenet_v1"])
def test_the_set_up_log_is_caffes_line_for_line(model, mnist_workdir, capsys):
    """Everything ``caffe test`` logs before scoring, in order and word for word: the NetState
    rule, the net's text, each layer's creation, blobs, top shapes, memory, the backward
    analysis, the V1 upgrade lines, the DB opened as the layer is created."""
    os.symlink(SHARED_DATA / "models", mnist_workdir / "models")
    status, lines = run_cli(capsys, "test", f"--model={model}", f"--weights={WEIGHTS[model]}",
                            "--iterations=100")
    assert status == 0, lines[-5:]
    ours, theirs = _setup_text(lines), _reference_setup_text(model)
    assert len(theirs) > 250 and "Memory required for data: 8086808" in theirs
    assert ours == theirs


@pytest.mark.slow
def test_our_converted_mnist_db_gives_the_same_figures(tmp_path, monkeypatch):
    """A DB written by our convert_mnist_data scores exactly like Caffe's own DB."""
    from ristretto_cli.data.tools import convert_mnist_data
    from ristretto_cli.scoring import test_model
    images = shared_data("mnist/t10k-images-idx3-ubyte.gz")
    labels = shared_data("mnist/t10k-labels-idx1-ubyte.gz")
    (tmp_path / "examples" / "mnist").mkdir(parents=True)
    convert_mnist_data(images, labels, tmp_path / "examples" / "mnist" / "mnist_test_lmdb", "lmdb",
                       progress=False)
    monkeypatch.chdir(tmp_path)
    with capture_log() as log:
        result = test_model(str(SHARED_DATA / LENET), str(shared_data(WEIGHTS[LENET])), iterations=100,
                            progress=False)
    reference = reference_runs(shared_data("reference/lenet_test.txt"))[LENET]
    got = [m for m in log.messages if m.startswith(("Batch ", "Loss: ", "accuracy =", "loss ="))]
    check_against_reference(got, reference, LENET)
    assert result.batches == 100
    assert [(n, i) for n, i, _, _ in result.means] == [("accuracy", 0), ("loss", 0)]
    assert f"{result.score():g}" == "0.9909"
    assert f"{result.score('loss'):g}" == "0.0289774"
    assert f"{result.loss:g}" == "0.0289774"
    assert result.means[1][3] == 1.0 and result.means[0][3] == 0.0


# ---------------------------------------------------------------------- scoring API, small nets
_TINY = """
name: "tiny"
layer { name: "d" type: "DummyData" top: "a" top: "b"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 1 }
    data_filler { type: "constant" value: 0.1 } data_filler { type: "constant" value: 0.7 } } }
layer { name: "s" type: "Power" bottom: "a" top: "z_out" power_param { scale: 3 } }
layer { name: "l" type: "Power" bottom: "b" top: "b_out" loss_weight: 2 }
"""


def test_run_forward_batches_float32_means_order_and_log():
    net = build_net(_TINY)
    assert net.output_names == ["b_out", "z_out"]  # alphabetical, as Caffe
    with capture_log() as log:
        result = run_forward_batches(net, 3, progress=False)
    msgs = log.messages
    v = np.float32(np.float32(0.1) * np.float32(3))
    assert msgs[:7] == ["Batch 0, b_out = 0.7"] + [f"Batch 0, z_out = {v:g}"] * 6
    loss = np.float32(np.float32(2) * np.float32(0.7))
    total = np.float32(np.float32(loss + loss) + loss)
    assert f"Loss: {np.float32(total / np.float32(3)):g}" in msgs
    f7 = np.float32(0.7)
    mean_b = np.float32(np.float32(np.float32(f7 + f7) + f7) / np.float32(3))
    assert f"b_out = {mean_b:g} (* 2 = {np.float32(2 * mean_b):g} loss)" in msgs
    assert [(n, i) for n, i, _, _ in result.means] == [("b_out", 0)] + [("z_out", k) for k in range(6)]
    assert result.means[0][3] == 2.0 and result.means[1][3] == 0.0
    assert result.means[0][2].dtype == np.float32
    assert result.score() == pytest.approx(0.7) and result.score("z_out") == pytest.approx(0.3)
    with pytest.raises(RistrettoError, match="no output 'nope'"):
        result.score("nope")


def test_run_forward_batches_without_outputs_is_an_error():
    net = build_net('name: "x" layer { name: "i" type: "Input" top: "d" input_param { shape { dim: 1 } } } '
                    'layer { name: "s" type: "Silence" bottom: "d" }')
    with pytest.raises(RistrettoError, match="no outputs to score"):
        run_forward_batches(net, 1, log=False, progress=False)


# ---------------------------------------------------------------------- CLI errors and flags
def test_test_needs_model_and_weights(capsys):
    status, lines = run_cli(capsys, "test", "--weights=x.caffemodel")
    assert status == 1 and lines[-1] == "ristretto: error: Need a model definition to score."
    status, lines = run_cli(capsys, "test", "--model=x.prototxt")
    assert status == 1 and lines[-1] == "ristretto: error: Need model weights to score."


def test_test_with_a_missing_db_names_the_path(tmp_path, capsys, monkeypatch):
    model = shared_data(LENET)
    weights = shared_data(WEIGHTS[LENET])
    monkeypatch.chdir(tmp_path)
    status, lines = run_cli(capsys, "test", f"--model={model}", f"--weights={weights}", "--iterations=1")
    assert status == 1
    assert lines[-1] == ("ristretto: error: examples/mnist/mnist_test_lmdb: layer 'mnist': cannot open lmdb "
                         "DB: No such file or directory")


def test_gpu_flag_warns_once_and_runs_on_the_cpu(mnist_workdir, capsys, tmp_path):
    # A 2-image copy of the net keeps this fast: batch_size 2, one iteration.
    text = (SHARED_DATA / LENET).read_text().replace("batch_size: 100", "batch_size: 2")
    model = tmp_path / "lenet_small.prototxt"
    model.write_text(text)
    status, lines = run_cli(capsys, "test", f"--model={model}", f"--weights={shared_data(WEIGHTS[LENET])}",
                            "--iterations=1", "--gpu=0", "--stage=a,b", "--level=0")
    assert status == 0, lines[-3:]
    warnings = [x for x in lines if x.startswith("W")]
    assert len(warnings) == 1 and "no GPU backend is available" in warnings[0]
    assert not any(message(x) == "Use CPU." for x in lines)
    batch = [message(x) for x in lines if "Batch 0," in x]
    assert [b.split(" = ")[0] for b in batch] == ["Batch 0, accuracy", "Batch 0, loss"]


def test_stage_flag_and_empty_stage(tmp_path):
    """Unset --stage gives Caffe's one empty stage "", so `not_stage: ""` rules apply."""
    from ristretto_cli.scoring import test_model
    text = """
name: "s"
layer { name: "a" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 }
        data_filler { type: "constant" value: 1 } } include { stage: "" } }
layer { name: "a" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 }
        data_filler { type: "constant" value: 2 } } include { stage: "deploy" } }
layer { name: "p" type: "Power" bottom: "x" top: "y" }
"""
    model = tmp_path / "m.prototxt"
    model.write_text(text)
    empty = tmp_path / "empty.caffemodel"
    from ristretto_cli.proto import caffe_pb2
    weights = caffe_pb2.NetParameter(name="s")
    weights.layer.add(name="unrelated")  # no layer of the net has parameters
    empty.write_bytes(weights.SerializeToString())
    r1 = test_model(str(model), str(empty), iterations=1, progress=False)
    r2 = test_model(str(model), str(empty), iterations=1, stage="deploy", progress=False)
    assert r1.score() == 1.0 and r2.score() == 2.0


def test_iterations_must_be_positive(capsys):
    status, lines = run_cli(capsys, "test", "--model=m", "--weights=w", "--iterations=0")
    assert status == 1 and "iterations must be positive" in lines[-1]
