"""The `ristretto train` command: flags, weights lists, NetState level/stage, GPU requests,
the log file, errors; and the signal handler's flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from solver_support import DROPOUT_NET, TINY_NET, capture_log

from ristretto_cli.io import blob_to_array, read_weights
from ristretto_cli.solver import SignalHandler, train

NET = TINY_NET % {"w_lr": 1, "b_lr": 2}
SOLVER = 'base_lr: 0.1 lr_policy: "fixed" max_iter: 0 snapshot_prefix: "out" random_seed: 1\n'


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def write(name: str, text: str) -> str:
    with open(name, "w") as f:
        f.write(text)
    return name


def ristretto(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "ristretto_cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def ip_weights(path) -> np.ndarray:
    layer = next(layer for layer in read_weights(path).layer if layer.name == "ip")
    return blob_to_array(layer.blobs[0])


def test_weights_list_later_files_win():
    write("s.prototxt", f"net_param {{ {DROPOUT_NET} }}\n{SOLVER}")
    train("s.prototxt", show_progress=False)  # max_iter 0: the final snapshot holds the init
    os.rename("out_iter_0.caffemodel", "a.caffemodel")
    write("s2.prototxt", f"net_param {{ {DROPOUT_NET} }}\n"
          + SOLVER.replace("random_seed: 1", "random_seed: 2"))
    train("s2.prototxt", show_progress=False)
    os.rename("out_iter_0.caffemodel", "b.caffemodel")
    assert not np.array_equal(ip_weights("a.caffemodel"), ip_weights("b.caffemodel"))
    with capture_log() as lines:
        train("s.prototxt", weights="a.caffemodel, b.caffemodel", show_progress=False)
    assert "Finetuning from a.caffemodel" in lines and "Finetuning from b.caffemodel" in lines
    assert np.array_equal(ip_weights("out_iter_0.caffemodel"), ip_weights("b.caffemodel"))


def test_level_and_stage_select_layers():
    extra = ('layer { name: "extra" type: "Power" bottom: "loss" top: "twice" '
             'power_param { scale: 2 } include { stage: "more" min_level: 1 } }')
    write("s.prototxt", f"net_param {{ {NET} {extra} }}\n{SOLVER}")
    solver = train("s.prototxt", show_progress=False)
    assert "extra" not in solver.net.layer_names
    assert list(solver.net.state.stage) == [""]  # Caffe's split of an empty --stage
    solver = train("s.prototxt", level=1, stage="more,other", show_progress=False)
    assert "extra" in solver.net.layer_names
    assert solver.net.state.level == 1 and list(solver.net.state.stage) == ["more", "other"]


def test_test_nets_states_and_compute_loss():
    write("s.prototxt", f"net_param {{ {NET} }}\n" + SOLVER.replace("max_iter: 0", "max_iter: 2")
          + "test_iter: 1 test_iter: 2 test_interval: 2 test_compute_loss: true "
          "test_state { stage: 'a' } test_state { stage: 'b' }")
    with capture_log() as lines:
        solver = train("s.prototxt", show_progress=False)
    assert len(solver.test_nets) == 2
    assert [list(n.state.stage) for n in solver.test_nets] == [["a"], ["b"]]
    for i in (0, 1):
        assert lines.count(f"Iteration 0, Testing net (#{i})") == 1
        assert lines.count(f"Iteration 2, Testing net (#{i})") == 1
    assert sum(ln.startswith("Test loss: ") for ln in lines) == 4


def test_cli_train_log_file_and_gpu_warning():
    write("s.prototxt", f"net_param {{ {NET} }}\n"
          + SOLVER.replace("max_iter: 0", "max_iter: 3 display: 1") + "solver_mode: GPU\n")
    done = ristretto("train", "-solver=s.prototxt", "--log", "train.log")
    assert done.returncode == 0, done.stderr
    log = open("train.log").read()
    assert log.count("GPU requested") == 1 and "Use CPU." in log
    assert log.splitlines()[0].startswith("W")  # glog-style warning line
    for text in ("Iteration 0 (", "Iteration 2, lr = 0.1", "Snapshotting to binary proto file "
                 "out_iter_3.caffemodel", "Optimization Done."):
        assert text in log
    assert "Optimization Done." in done.stderr  # the log goes to stderr as well
    assert done.stdout == ""
    done = ristretto("train", "--solver=s.prototxt", "--gpu=0", "--log=g.log")
    assert open("g.log").read().count("GPU requested (--gpu=0)") == 1


@pytest.mark.parametrize("args, message", [
    ([], "Need a solver definition"),
    (["--solver=s.prototxt", "--weights=a", "--snapshot=b"], "but not both"),
    (["--solver=s.prototxt", "--sighup_effect=kill"], 'Invalid signal effect "kill"'),
    (["--solver=missing.prototxt"], "missing.prototxt"),
    (["--solver=s.prototxt", "--snapshot=nothere.solverstate"], "nothere.solverstate"),
])
def test_cli_errors(args, message):
    write("s.prototxt", f"net_param {{ {NET} }}\n{SOLVER}")
    done = ristretto("train", *args)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("ristretto: error: ")
    assert message in done.stderr


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_signal_handler_flags_order_and_restore():
    before = signal.getsignal(signal.SIGINT)
    with SignalHandler("stop", "snapshot") as handler:
        assert handler() == "none"
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGHUP)
        assert [handler(), handler(), handler()] == ["snapshot", "stop", "none"]
    assert signal.getsignal(signal.SIGINT) is before
    with SignalHandler("none", "none") as handler:
        os.kill(os.getpid(), signal.SIGINT)
        assert handler() == "none"
