"""Resume is exact: training stopped at a snapshot and resumed ends with the same weights,
bit for bit, as an uninterrupted run (random data, dropout, crops, an LMDB cursor; binary and
HDF5 snapshots; a real SIGINT to a training process)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import REPO, shared_data
from solver_support import DROPOUT_NET, capture_log

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import blob_to_array, read_solverstate, read_weights, write_solverstate
from ristretto_cli.solver import train


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def weights_of(path) -> list[np.ndarray]:
    return [blob_to_array(b) for layer in read_weights(path).layer for b in layer.blobs]


def write_solver(name: str, net: str, text: str) -> str:
    with open(name, "w") as f:
        f.write(f"net_param {{ {net} }}\n{text}\n")
    return name


def assert_same(a_path, b_path):
    a, b = weights_of(a_path), weights_of(b_path)
    assert len(a) == len(b) and a
    for x, y in zip(a, b):
        assert x.tobytes() == y.tobytes()


COMMON = ('base_lr: 0.05 lr_policy: "inv" gamma: 0.01 power: 0.75 momentum: 0.9 '
          "weight_decay: 0.001 random_seed: 7 display: 2 average_loss: 2 "
          "test_iter: 2 test_interval: 4 ")


@pytest.mark.parametrize("fmt, kind", [("BINARYPROTO", "SGD"), ("HDF5", "Adam"),
                                       ("BINARYPROTO", "AdaDelta")])
def test_resume_is_bit_exact(fmt, kind):
    text = COMMON + f'max_iter: 12 snapshot: 5 snapshot_format: {fmt} type: "{kind}"'
    ext = ".h5" if fmt == "HDF5" else ""
    train(write_solver("full.prototxt", DROPOUT_NET, text + ' snapshot_prefix: "full"'),
          show_progress=False)
    train(write_solver("part.prototxt", DROPOUT_NET, text + ' snapshot_prefix: "part"'),
          show_progress=False)  # writes part_iter_5, _10, _12
    os.remove(f"part_iter_12.caffemodel{ext}")
    with capture_log() as lines:
        train("part.prototxt", snapshot=f"part_iter_5.solverstate{ext}", show_progress=False)
    assert f"Resuming from part_iter_5.solverstate{ext}" in lines
    assert lines.count("Iteration 8, Testing net (#0)") == 1
    assert_same(f"full_iter_12.caffemodel{ext}", f"part_iter_12.caffemodel{ext}")
    assert_same(f"full_iter_10.caffemodel{ext}", f"part_iter_10.caffemodel{ext}")
    # and the randomness is real: another seed trains to other weights
    train(write_solver("other.prototxt", DROPOUT_NET,
                       text.replace("random_seed: 7", "random_seed: 8") + ' snapshot_prefix: "o"'),
          show_progress=False)
    assert weights_of(f"o_iter_12.caffemodel{ext}")[0].tobytes() != \
        weights_of(f"full_iter_12.caffemodel{ext}")[0].tobytes()


MNIST_NET = """
name: "mnist"
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 crop_size: 24 mirror: true }
        data_param { source: "%(db)s" batch_size: 8 backend: LMDB } }
layer { name: "mnist" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 crop_size: 24 }
        data_param { source: "%(db)s" batch_size: 8 backend: LMDB } }
layer { name: "drop" type: "Dropout" bottom: "data" top: "data" }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_resume_with_lmdb_cursor_crops_and_mirror():
    net = MNIST_NET % {"db": shared_data("reference/mnist_test_lmdb")}
    text = COMMON + 'max_iter: 9 snapshot: 4 type: "Nesterov"'
    train(write_solver("full.prototxt", net, text + ' snapshot_prefix: "full"'), show_progress=False)
    write_solver("part.prototxt", net, text + ' snapshot_prefix: "part"')
    with capture_log() as lines:
        train("part.prototxt", snapshot=_stop_after_first_snapshot("part.prototxt"),
              show_progress=False)
    assert "Optimization Done." in lines
    assert_same("full_iter_9.caffemodel", "part_iter_9.caffemodel")


def _stop_after_first_snapshot(solver_file: str) -> str:
    """Train until the first snapshot (a stop request right after it); return its state."""
    from ristretto_cli.io import read_solver_param
    from ristretto_cli.solver import Solver
    param = read_solver_param(solver_file)
    solver = Solver(param, action=lambda: "stop" if solver.iter == param.snapshot else "none",
                    show_progress=False)
    solver.solve()
    assert solver.iter == param.snapshot
    return f"{param.snapshot_prefix}_iter_{param.snapshot}.solverstate"


def test_resume_from_a_caffe_state_without_extension(tmp_path):
    text = COMMON + 'max_iter: 6 snapshot: 5 type: "SGD" snapshot_prefix: "c"'
    train(write_solver("c.prototxt", DROPOUT_NET, text), show_progress=False)
    state = read_solverstate("c_iter_5.solverstate")
    state.ClearField("resume_state")  # what real Caffe writes
    write_solverstate("caffe.solverstate", state)
    with capture_log() as lines:
        train("c.prototxt", snapshot="caffe.solverstate", show_progress=False)
    assert any("has no resume state" in ln for ln in lines)
    assert read_solverstate("c_iter_6.solverstate").iter == 6


def test_resume_errors():
    text = COMMON + 'max_iter: 6 snapshot: 5 type: "SGD" snapshot_prefix: "e"'
    train(write_solver("e.prototxt", DROPOUT_NET, text), show_progress=False)
    write_solver("adam.prototxt", DROPOUT_NET, text.replace('"SGD"', '"Adam"'))
    with pytest.raises(RistrettoError, match="Incorrect length of history blobs"):
        train("adam.prototxt", snapshot="e_iter_5.solverstate", show_progress=False)
    with pytest.raises(RistrettoError, match="not both"):
        train("e.prototxt", snapshot="e_iter_5.solverstate", weights="e_iter_5.caffemodel")


def test_learned_net_found_beside_the_state(tmp_path):
    text = COMMON + 'max_iter: 6 snapshot: 5 type: "SGD" snapshot_prefix: "run/b"'
    os.mkdir("run")
    train(write_solver("b.prototxt", DROPOUT_NET, text), show_progress=False)
    os.rename("run", "moved")
    os.mkdir("run")  # the prefix folder exists again, but the weights are only in moved/
    train("b.prototxt", snapshot="moved/b_iter_5.solverstate", show_progress=False)
    assert_same("moved/b_iter_6.caffemodel", "run/b_iter_6.caffemodel")


def test_sigint_stops_with_a_snapshot_that_resumes(tmp_path):
    text = ('base_lr: 0.01 lr_policy: "inv" gamma: 0.001 power: 0.75 momentum: 0.9 '
            'random_seed: 3 display: 50 snapshot: 200 snapshot_prefix: "sig" type: "SGD" ')
    write_solver("sig.prototxt", DROPOUT_NET, text + "max_iter: 100000000")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen([sys.executable, "-m", "ristretto_cli", "train",
                              "--solver=sig.prototxt"], stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(240, child.kill)  # never hang the test run
    watchdog.start()
    seen = []
    try:
        for line in child.stderr:
            seen.append(line)
            if "Snapshotting solver state" in line:
                break
        child.send_signal(signal.SIGINT)
        _, rest = child.communicate(timeout=120)
    finally:
        watchdog.cancel()
        if child.poll() is None:
            child.kill()
    log = "".join(seen) + rest
    assert child.returncode == 0, log[-2000:]
    assert "Optimization stopped early." in log
    stopped = int(re.findall(r"Snapshotting solver state to binary proto file sig_iter_(\d+)", log)[-1])
    assert stopped >= 200
    # resume to a few more iterations == an uninterrupted run to the same point
    write_solver("sig2.prototxt", DROPOUT_NET, text + f"max_iter: {stopped + 7}")
    train("sig2.prototxt", snapshot=f"sig_iter_{stopped}.solverstate", show_progress=False)
    resumed = weights_of(f"sig_iter_{stopped + 7}.caffemodel")
    write_solver("fresh.prototxt", DROPOUT_NET,
                 text.replace('"sig"', '"fresh"').replace("snapshot: 200", "snapshot: 0")
                 + f"max_iter: {stopped + 7}")
    train("fresh.prototxt", show_progress=False)
    fresh = weights_of(f"fresh_iter_{stopped + 7}.caffemodel")
    assert all(a.tobytes() == b.tobytes() for a, b in zip(resumed, fresh))
