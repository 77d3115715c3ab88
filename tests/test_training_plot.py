"""`ristretto plot_training_log` on real Caffe training logs: valid PNG, right size, and as
many plotted points as the log has values of that kind."""

from __future__ import annotations

import re

import pytest
from conftest import shared_data

from ristretto_cli.cli import main
from ristretto_cli.errors import RistrettoError
from ristretto_cli.logparse import parse_training_log
from ristretto_cli.plotting import png_size, read_png_summary
from ristretto_cli.training_plot import HEIGHT, SUMMARY_KEY, WIDTH, plot_training_log


def count(path, pattern):
    return len(re.findall(pattern, path.read_text(errors="replace"), re.M))


def test_parse_real_logs_with_and_without_year():
    old = shared_data("models/cifar10_full_v1/train_log.txt")      # glog prefix I1105 ...
    new = shared_data("reference/solver_sgd_inv/sgd_inv.log")       # glog prefix I20261125 ...
    log = parse_training_log(str(old))
    assert len(log.test) == count(old, r"Test net output #0:")
    assert log.test[0]["NumIters"] == 0 and log.test[-1]["NumIters"] == 5000
    assert log.train[1]["NumIters"] == 100 and log.train[1]["loss"] == pytest.approx(1.68744)
    assert log.train[0]["LearningRate"] == pytest.approx(0.001)
    assert log.test[-1]["Seconds"] > log.test[0]["Seconds"] >= 0
    log = parse_training_log(str(new))
    assert [r["NumIters"] for r in log.train] == list(range(31))  # 30 = the display after Solve
    assert [r["NumIters"] for r in log.learning_rates] == list(range(30))
    assert log.train[0]["loss"] == pytest.approx(2.32814)
    assert log.train[1]["LearningRate"] == pytest.approx(0.00999925)
    assert log.test[0]["accuracy"] == pytest.approx(0.774)


@pytest.mark.parametrize("chart_type,pattern", [(0, r"Test net output #0: accuracy"),
                                                (6, r"Train net output #0: loss"),
                                                (4, r"Iteration \d+, lr = ")])
def test_plot_is_a_png_of_the_expected_size_with_every_point(tmp_path, chart_type, pattern):
    log = shared_data("models/cifar10_full_v1/train_log.txt")
    out = tmp_path / "chart.png"
    assert main(["plot_training_log", str(chart_type), str(out), str(log)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert png_size(data) == (WIDTH, HEIGHT)
    summary = read_png_summary(data, SUMMARY_KEY)
    assert summary["series"][0]["points"] == count(log, pattern)


def test_two_logs_two_series(tmp_path):
    logs = [shared_data("models/cifar10_full_v1/train_log.txt"), shared_data("reference/solver_sgd_inv/sgd_inv.log")]
    summary = plot_training_log(7, str(tmp_path / "loss.png"), [str(p) for p in logs])
    assert [s["points"] for s in summary["series"]] == [count(p, r"Train net output #0: loss") for p in logs]


def test_bad_inputs(tmp_path, capsys):
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(RistrettoError, match="no training iterations"):
        plot_training_log(0, str(tmp_path / "x.png"), [str(empty)])
    assert main(["plot_training_log", "9", str(tmp_path / "x.png"), str(empty)]) == 1
    assert "unknown chart type 9" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
