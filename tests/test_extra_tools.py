"""`ristretto parse_log`, `extract_seconds` and `summarize`: Caffe's tools/extra scripts.

Expected outputs are written out here from the log lines and the scripts' rules, not from
our parser: CSV rows with NumIters as a float, seconds since the "Solving" line, the learning
rate last logged (the first row takes the second's), CRLF line ends; summary tables with
every column one wider than its widest cell, trailing spaces included.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO, shared_data, test_data
from log_support import run_cli

from ristretto_cli.cli import main
from ristretto_cli.net_summary import summarize

SMALL_LOG = """\
I1105 00:00:00.000000  1 solver.cpp:160] Solving Tiny
I1105 00:00:00.500000  1 solver.cpp:247] Iteration 0, Testing net (#0)
I1105 00:00:01.000000  1 solver.cpp:298]     Test net output #0: accuracy = 0.1
I1105 00:00:01.000100  1 solver.cpp:298]     Test net output #1: loss = 2.30259 (* 1 = 2.30259 loss)
I1105 00:00:01.250000  1 solver.cpp:191] Iteration 0, loss = 2.3
I1105 00:00:01.250001  1 solver.cpp:206]     Train net output #0: loss = 2.3 (* 1 = 2.3 loss)
I1105 00:00:01.250002  1 sgd_solver.cpp:106] Iteration 0, lr = 0.01
I1105 00:00:03.000000  1 solver.cpp:191] Iteration 100, loss = 1.5
I1105 00:00:03.000001  1 solver.cpp:206]     Train net output #0: loss = 1.5 (* 1 = 1.5 loss)
I1105 00:00:03.000002  1 sgd_solver.cpp:106] Iteration 100, lr = 1e-05
I1105 00:00:04.000000  1 solver.cpp:247] Iteration 200, Testing net (#0)
I1105 00:00:04.500000  1 solver.cpp:298]     Test net output #0: accuracy = 0.75
I1105 00:00:04.600000  1 solver.cpp:298]     Test net output #1: loss = 0.5 (* 1 = 0.5 loss)
I1105 00:00:05.000000  1 solver.cpp:191] Iteration 200, loss = 0.25
I1105 00:00:05.000001  1 solver.cpp:206]     Train net output #0: loss = 0.25 (* 1 = 0.25 loss)
I1105 00:00:06.000000  1 solver.cpp:247] Iteration 300, Testing net (#0)
I1105 00:00:06.500000  1 solver.cpp:298]     Test net output #0: accuracy = 0.8
"""
# the test at 300 never gets its loss: an incomplete last row is dropped, as Caffe's script does
SMALL_TRAIN = ["NumIters,Seconds,LearningRate,loss",
               "0.0,1.250001,0.01,2.3",
               "100.0,3.000001,0.01,1.5",
               "200.0,5.000001,1e-05,0.25"]
SMALL_TEST = ["NumIters,Seconds,LearningRate,accuracy,loss",
              "0.0,1.0,1e-05,0.1,2.30259",
              "200.0,4.5,1e-05,0.75,0.5"]


def crlf(lines: list[str]) -> str:
    return "".join(line + "\r\n" for line in lines)


def expected_tables(log_text: str) -> dict[str, list[str]]:
    """The CSV lines of a log whose every display and test is complete: a row per output #0
    line, its time since "Solving", the rate of the last "lr =" line, then its outputs."""
    lines = log_text.splitlines()
    start_index = next(i for i, line in enumerate(lines) if "Solving" in line)
    micros, day, last = [], 0, 0
    for line in lines[start_index:]:
        m = re.match(r"I\d{4} (\d\d):(\d\d):(\d\d)\.(\d{6}) ", line)
        if m:
            h, mi, s, us = map(int, m.groups())
            t = ((h * 60 + mi) * 60 + s) * 10**6 + us
            day += t < last  # past midnight
            last = t
            micros.append(t + day * 86400 * 10**6)
        else:
            micros.append(None)
    start = micros[0]
    tables = {"train": [], "test": []}
    names = {"train": [], "test": []}
    iteration, rate = None, "nan"
    for line, t in zip(lines[start_index:], micros):
        m = re.search(r"Iteration (\d+)", line)
        if m:
            iteration = m.group(1)
        m = re.search(r"lr = (\S+)", line)
        if m:
            rate = repr(float(m.group(1)))
        m = re.search(r"(Train|Test) net output #(\d+): (\S+) = (\S+)", line)
        if m and t is not None:
            kind = m.group(1).lower()
            if m.group(2) == "0":
                tables[kind].append([f"{iteration}.0", repr((t - start) / 10**6), rate])
            if len(tables[kind]) == 1:
                names[kind].append(m.group(3))
            tables[kind][-1].append(repr(float(m.group(4))))
    out = {}
    for kind, rows in tables.items():
        if len(rows) > 1:
            rows[0][2] = rows[1][2]
        out[kind] = [",".join(["NumIters", "Seconds", "LearningRate", *names[kind]])] + [",".join(r) for r in rows]
    return out


# ------------------------------------------------------------------------------ parse_log
def test_parse_log_small_log(tmp_path, capsys):
    log = tmp_path / "caffe.INFO"
    log.write_text(SMALL_LOG)
    assert main(["parse_log", str(log), str(tmp_path), "--verbose"]) == 0
    assert (tmp_path / "caffe.INFO.train").read_bytes().decode() == crlf(SMALL_TRAIN)
    assert (tmp_path / "caffe.INFO.test").read_bytes().decode() == crlf(SMALL_TEST)
    assert capsys.readouterr().out.splitlines() == [f"Wrote {tmp_path}/caffe.INFO.train",
                                                    f"Wrote {tmp_path}/caffe.INFO.test"]
    assert expected_tables(SMALL_LOG)["train"] == SMALL_TRAIN


def test_parse_log_delimiter_and_missing_table(tmp_path, capsys):
    log = tmp_path / "only_train.log"
    log.write_text(SMALL_LOG.split("I1105 00:00:04.000000")[0].replace("Test net", "Test-net"))
    assert main(["parse_log", str(log), str(tmp_path), "--delimiter=;"]) == 0
    assert capsys.readouterr().out == ""  # without --verbose nothing is printed
    assert (tmp_path / "only_train.log.train").read_bytes().decode() == crlf(
        [line.replace(",", ";") for line in SMALL_TRAIN[:3]])
    assert not (tmp_path / "only_train.log.test").exists()
    assert main(["parse_log", str(log), str(tmp_path), "--verbose"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == (f"Not writing {tmp_path}/only_train.log.test; "
                                                       "no lines to write")


def test_parse_log_of_our_training_run(tmp_path):
    net = """name: "tiny"
      layer { name: "data" type: "DummyData" top: "x" top: "t"
              dummy_data_param { shape { dim: 8 dim: 5 } shape { dim: 8 dim: 2 }
                                 data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" } } }
      layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
              inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
      layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
      layer { name: "half" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "half" loss_weight: 0.5 }"""
    (tmp_path / "solver.prototxt").write_text(
        f"net_param {{ {net} }}\nbase_lr: 0.1 lr_policy: \"step\" gamma: 0.5 stepsize: 2 max_iter: 5 "
        "display: 1 test_iter: 1 test_interval: 2 snapshot_prefix: \"out\" random_seed: 1\n")
    done = subprocess.run([sys.executable, "-m", "ristretto_cli", "train", "--solver=solver.prototxt",
                           "--log=train.log"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert main(["parse_log", str(tmp_path / "train.log"), str(tmp_path)]) == 0
    expected = expected_tables((tmp_path / "train.log").read_text())
    assert len(expected["train"]) == 6 and len(expected["test"]) == 4  # iterations 0-4; tests at 0, 2, 4
    for kind in ("train", "test"):
        assert (tmp_path / f"train.log.{kind}").read_bytes().decode() == crlf(expected[kind])


def test_parse_log_real_caffe_log(tmp_path):
    log = shared_data("models/cifar10_full_v1/train_log.txt")
    assert main(["parse_log", str(log), str(tmp_path)]) == 0
    train = (tmp_path / "train_log.txt.train").read_bytes().decode()
    test = (tmp_path / "train_log.txt.test").read_bytes().decode()
    # Solving at 00:37:55.565062; the first train output at 00:38:01.939870
    assert train.startswith(crlf(["NumIters,Seconds,LearningRate,loss", "0.0,6.374808,0.001,2.30245",
                                  "100.0,26.843398,0.001,1.68744"]))
    assert test.startswith(crlf(["NumIters,Seconds,LearningRate,accuracy,loss",
                                 "0.0,6.264315,0.001,0.0926,2.30268",
                                 "500.0,114.766253,0.001,0.5551,1.26168"]))
    expected = expected_tables(log.read_text())
    assert len(expected["train"]) == 51 and len(expected["test"]) == 13  # the resumed run tests 4000 again
    assert train == crlf(expected["train"]) and test == crlf(expected["test"])


def test_parse_log_year_in_prefix(tmp_path):
    log = shared_data("reference/solver_sgd_inv/sgd_inv.log")  # I20261125 prefixes, one test
    assert main(["parse_log", str(log), str(tmp_path)]) == 0
    lines = (tmp_path / "sgd_inv.log.train").read_text().splitlines()
    # Solving at 17:24:53.248795, the first output at 17:24:53.288599; lr 0.01 then 0.00999925
    assert lines[:3] == ["NumIters,Seconds,LearningRate,loss", "0.0,0.039804,0.01,2.32814",
                         "1.0,0.087663,0.01,2.34839"]
    assert len(lines) == 1 + 30
    assert not (tmp_path / "sgd_inv.log.test").exists()  # a single test row is never complete


# ------------------------------------------------------------------------ extract_seconds
def test_extract_seconds_over_new_year(tmp_path):
    log = tmp_path / "new_year.log"
    log.write_text(
        "I1231 23:59:50.000000  1 lr_policy.cpp:1] MultiStep Status: Iteration 0, step = 1\n"
        "I1231 23:59:58.500000  1 solver.cpp:160] Solving Tiny\n"
        "I1231 23:59:59.000000  1 solver.cpp:191] Iteration 0, loss = 1\n"
        "I1231 23:59:59.100000  1 solver.cpp:206]     Train net output #0: loss = 1\n"
        "I0101 00:00:01.250000  1 solver.cpp:191] Iteration 10, loss = 0.5\n"
        "I0101 00:01:00.000001  1 sgd_solver.cpp:106] Iteration 10, lr = 0.01\n")
    out = tmp_path / "seconds.txt"
    assert main(["extract_seconds", str(log), str(out)]) == 0
    # every line that mentions Iteration, the one before "Solving" included
    assert out.read_text() == "-8.500000\n0.500000\n2.750000\n61.500001\n"


def test_extract_seconds_year_in_prefix_counts_leap_day(tmp_path):
    log = tmp_path / "leap.log"
    log.write_text("I20240228 23:59:59.000000  1 solver.cpp:160] Solving Tiny\n"
                   "I20240301 00:00:01.000000  1 solver.cpp:191] Iteration 5, loss = 1\n")
    assert main(["extract_seconds", str(log), str(tmp_path / "s")]) == 0
    assert (tmp_path / "s").read_text() == "86402.000000\n"


def test_extract_seconds_real_caffe_log(tmp_path):
    log = shared_data("models/cifar10_full_v1/train_log.txt")
    assert main(["extract_seconds", str(log), str(tmp_path / "s")]) == 0
    lines = (tmp_path / "s").read_text().splitlines()
    assert len(lines) == log.read_text().count("Iteration")
    # Solving 00:37:55.565062; Iteration 0 testing 00:37:55.565091, loss 00:38:01.939831
    assert lines[:2] == ["0.000029", "6.374769"]


# ------------------------------------------------------------------------------ summarize
LENET = [
    "mnist    Data                                -> data, label      ",
    "mnist    Data                                -> data, label      ",
    "conv1    Convolution     (, x2.0) data       -> conv1       5 20 ",
    "pool1    Pooling                  conv1      -> pool1       2/2  ",
    "conv2    Convolution     (, x2.0) pool1      -> conv2       5 50 ",
    "pool2    Pooling                  conv2      -> pool2       2/2  ",
    "ip1      InnerProduct    (, x2.0) pool2      -> ip1              ",
    "relu1    ReLU                     ip1        -> ip1              ",
    "ip2      InnerProduct    (, x2.0) ip1        -> ip2              ",
    "accuracy Accuracy                 ip2, label -> accuracy         ",
    "loss     SoftmaxWithLoss          ip2, label -> loss             ",
]
CIFAR10_QUICK = [
    "data  Input                       -> data         ",
    "conv1 Convolution  (, x2.0) data  -> conv1 5+2 32 ",
    "pool1 Pooling               conv1 -> pool1 3/2    ",
    "relu1 ReLU                  pool1 -> pool1        ",
    "conv2 Convolution  (, x2.0) pool1 -> conv2 5+2 32 ",
    "relu2 ReLU                  conv2 -> conv2        ",
    "pool2 Pooling               conv2 -> pool2 3/2    ",
    "conv3 Convolution  (, x2.0) pool2 -> conv3 5+2 64 ",
    "relu3 ReLU                  conv3 -> conv3        ",
    "pool3 Pooling               conv3 -> pool3 3/2    ",
    "ip1   InnerProduct (, x2.0) pool3 -> ip1          ",
    "ip2   InnerProduct (, x2.0) ip1   -> ip2          ",
    "prob  Softmax               ip2   -> prob         ",
]


@pytest.mark.parametrize("model, expected", [("lenet/lenet_train_test.prototxt", LENET),
                                             ("lenet_v1/lenet_train_test.prototxt", LENET),
                                             ("cifar10_quick/cifar10_quick.prototxt", CIFAR10_QUICK)])
def test_summarize_models(capsys, model, expected):
    assert main(["summarize", str(test_data(f"models/{model}"))]) == 0
    assert capsys.readouterr().out.split("\n") == [*expected, ""]  # piped: no colour codes


RULES_NET = """name: "rules"
layer { name: "in" type: "Python" top: "x" python_param { module: "mod" layer: "Src" } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
        param { name: "w" lr_mult: 0.5 decay_mult: 0 } param { lr_mult: 2 }
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 group: 2 } }
layer { name: "rect" type: "Convolution" bottom: "c" top: "r"
        convolution_param { num_output: 4 kernel_h: 3 kernel_w: 1 } }
layer { name: "gpool" type: "Pooling" bottom: "r" top: "p" pooling_param { global_pooling: true } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "label" top: "l" loss_weight: 0.3 }
"""


def test_summarize_rules_colours_and_max_width(tmp_path, capsys):
    net = tmp_path / "rules.prototxt"
    net.write_text(RULES_NET)
    # Python type as module.layer; multipliers; kernel/stride+pad num_output/group; a rectangular
    # kernel gives nothing; pooling shows kernel_size (0 when global); loss weights before tops
    assert summarize(str(net), color=False) == [
        "in    mod.Src                                     -> x                 ",
        "conv  Convolution   (w x0.5 Dx0.0, x2.0) x        -> c       3/2+1 8/2 ",
        "rect  Convolution                        c        -> r                 ",
        "gpool Pooling                            r        -> p       0         ",
        "loss  EuclideanLoss                      p, label -> 0.3 * l           ",
    ]
    # one colour per blob in order of production; an unproduced bottom on red; an unconsumed top
    # bold and underlined
    assert summarize(str(net))[4] == ("loss  EuclideanLoss                      \033[95mp\033[0m, \033[41mlabel"
                                      "\033[0m -> \033[97m0.3 * \033[1;4ml\033[0m           ")
    assert main(["summarize", "--color", str(net)]) == 0
    assert "\033[41mlabel\033[0m" in capsys.readouterr().out
    assert main(["summarize", "-w", "6", str(net)]) == 0
    assert capsys.readouterr().out.splitlines()[:2] == [
        "in    mod.Src           -> x           ",
        "conv  Convolution (w x0.5 Dx0.0, x2.0) x -> c 3/2+1 8/2 ",
    ]


# --------------------------------------------------------------------------------- errors
def test_errors(tmp_path, capsys):
    missing = tmp_path / "missing.log"
    log = tmp_path / "small.log"
    log.write_text(SMALL_LOG)
    cases = [
        (["parse_log", missing, tmp_path], f"{missing}: cannot read"),
        (["parse_log", log, tmp_path / "nowhere"], f"{tmp_path}/nowhere/small.log.train: cannot write"),
        (["parse_log", log, tmp_path, "--delimiter=ab"], "--delimiter must be a single character"),
        (["extract_seconds", missing, tmp_path / "s"], f"{missing}: cannot read"),
        (["extract_seconds", test_data("models/lenet/lenet_solver.prototxt"), tmp_path / "s"],
         "no 'Solving' line"),
        (["summarize", tmp_path / "missing.prototxt"], f"{tmp_path}/missing.prototxt: cannot read"),
    ]
    for args, text in cases:
        status, err = run_cli(capsys, *args)
        assert status == 1 and len(err) == 1, (args, err)
        assert err[0].startswith("ristretto: error: ") and text in err[0], (args, err)
    log.write_text(SMALL_LOG.replace("I1105 00:00:03.000000  1", "[00:00:03]"))
    status, err = run_cli(capsys, "extract_seconds", log, tmp_path / "s")
    assert status == 1 and err == [f"ristretto: error: {log}:8: this 'Iteration' line has no glog time stamp"]
    assert sorted(os.listdir(tmp_path)) == ["small.log"]
