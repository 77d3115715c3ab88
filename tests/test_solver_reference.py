"""The real `caffe train` run in reference/solver_sgd_inv (LeNet, SGD, inv, 30 iterations from
fixed weights) reproduced: losses, learning rates, test outputs, final weights; and our
snapshot loads in OpenCV's dnn module with the same outputs as our forward."""

from __future__ import annotations

import re
import shutil

import cv2
import numpy as np
import pytest
from conftest import shared_data
from solver_support import capture_log

from ristretto_cli.data.tools import convert_mnist_data, load_mnist
from ristretto_cli.io import blob_to_array, read_net_param, read_weights
from ristretto_cli.net import TEST, Net
from ristretto_cli.solver import train

REF = "reference/solver_sgd_inv"
LOSS_LINE = re.compile(r"Iteration (\d+) \(.*\), loss = (\S+)$")
LR_LINE = re.compile(r"Iteration (\d+), lr = (\S+)$")
TEST_LINE = re.compile(r"    Test net output #\d+: (\w+) = (\S+)")


@pytest.fixture(scope="session")
def mnist_train_lmdb(tmp_path_factory):
    """The 60k-record MNIST train LMDB, built once per session by our convert_mnist_data."""
    db = tmp_path_factory.mktemp("mnist") / "mnist_train_lmdb"
    n = convert_mnist_data(shared_data("mnist/train-images-idx3-ubyte.gz"),
                           shared_data("mnist/train-labels-idx1-ubyte.gz"), str(db), progress=False)
    assert n == 60000
    return db


@pytest.fixture(scope="module")
def reference_run(mnist_train_lmdb, tmp_path_factory):
    """Our `train` in a folder laid out as the reference run's; returns (folder, log lines)."""
    run = tmp_path_factory.mktemp("sgd_inv")
    (run / "examples/mnist").mkdir(parents=True)
    (run / "examples/mnist/mnist_train_lmdb").symlink_to(mnist_train_lmdb)
    (run / "examples/mnist/mnist_test_lmdb").symlink_to(shared_data("reference/mnist_test_lmdb"))
    shutil.copy(shared_data("models/lenet/lenet_train_test.prototxt"), run / "net.prototxt")
    shutil.copy(shared_data(f"{REF}/sgd_inv.solver.prototxt"), run / "sgd_inv.solver.prototxt")
    shutil.copy(shared_data(f"{REF}/init_iter_1.caffemodel"), run / "init_iter_1.caffemodel")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(run)
        with capture_log() as lines:
            train("sgd_inv.solver.prototxt", weights="init_iter_1.caffemodel", show_progress=False)
    return run, lines


def _matches(pattern, lines):
    return [m.groups() for ln in lines if (m := pattern.search(ln))]


def test_losses_and_learning_rates(reference_run):
    _, ours = reference_run
    theirs = shared_data(f"{REF}/sgd_inv.log").read_text().splitlines()
    our_loss, ref_loss = _matches(LOSS_LINE, ours), _matches(LOSS_LINE, theirs)
    assert len(our_loss) == len(ref_loss) == 30
    assert our_loss[0] == ("0", "2.32814")  # the first forward pass, to the printed digits
    got = np.array([float(v) for _, v in our_loss])
    want = np.array([float(v) for _, v in ref_loss])
    # per-iteration losses after updates: float32 rounding order differs from OpenBLAS
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert _matches(LR_LINE, ours) == _matches(LR_LINE, theirs)
    # the final forward-only pass and test at iteration 30
    final = [ln for ln in ours if ln.startswith("Iteration 30, loss = ")]
    assert final and float(final[0].split("= ")[1]) == pytest.approx(0.522422, rel=2e-5)
    tests = dict(_matches(TEST_LINE, ours))
    assert tests["accuracy"] == "0.774"
    assert float(tests["loss"]) == pytest.approx(0.715769, rel=2e-5)


def test_final_weights(reference_run):
    run, _ = reference_run
    ours = read_weights(run / "sgd_inv_iter_30.caffemodel")
    theirs = read_weights(shared_data(f"{REF}/sgd_inv_iter_30.caffemodel"))
    assert [layer.name for layer in ours.layer] == [layer.name for layer in theirs.layer]
    for a, b in zip(ours.layer, theirs.layer):
        assert len(a.blobs) == len(b.blobs)
        for x, y in zip(a.blobs, b.blobs):
            x, y = blob_to_array(x), blob_to_array(y)
            assert x.shape == y.shape
            assert np.abs(x - y).max() <= 1e-3 * np.abs(y).max(), a.name


def test_snapshot_loads_in_opencv(reference_run):
    run, _ = reference_run
    deploy = shared_data("models/lenet/lenet.prototxt")
    model = run / "sgd_inv_iter_30.caffemodel"
    images, _ = load_mnist(shared_data("mnist/t10k-images-idx3-ubyte.gz"),
                           shared_data("mnist/t10k-labels-idx1-ubyte.gz"))
    x = (images[:64, None].astype(np.float32) * np.float32(0.00390625))
    cv_net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
    cv_net.setInput(x)
    cv_prob = cv_net.forward()
    net = Net(read_net_param(deploy), TEST)
    net.copy_trained_layers_from(read_weights(model))
    net.blobs["data"].data[...] = x
    net.forward()
    ours = net.blobs["prob"].data.reshape(cv_prob.shape)
    np.testing.assert_allclose(ours, cv_prob, atol=1e-5)
    assert (ours.argmax(1) == cv_prob.argmax(1)).all()


_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def _log_text(messages) -> list[str]:
    """The run's log lines (multi-line messages split), numbers masked where they come from
    the clock ("Iteration n (x iter/s, ys/1 iters)") or from float32 rounding (net outputs,
    checked to 2e-5 above); every other line is kept word for word."""
    out = []
    for msg in messages:
        for line in msg.split("\n"):
            if "iter/s" in line or "net output #" in line:
                line = _NUMBER.sub("#", line)
            out.append(line)
    return out


def test_the_whole_log_is_caffes_line_for_line(reference_run):
    """Solver and net set-up (parameters, NetState rules, nets' text, layers, shapes, memory,
    backward analysis), every iteration's lines, the test, the snapshot: as caffe train."""
    _, ours = reference_run
    theirs = [re.sub(r"^[IWEF]\d{8} \S+ +\d+ \S+\] ", "", ln)
              for ln in shared_data(f"{REF}/sgd_inv.log").read_text().splitlines()]
    got, want = _log_text(ours), _log_text(theirs)
    assert len(want) > 600 and "Solver scaffolding done." in want
    assert got == want
