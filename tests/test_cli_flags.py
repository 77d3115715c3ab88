"""Caffe's tool (tools/caffe.cpp) flag by flag: usage, device_query, flag defaults and
repeats, and the order of the log lines of ``test`` and ``time``."""

from __future__ import annotations

import re

import pytest
from log_support import message, run_cli

from ristretto_cli.cli import main
from ristretto_cli.proto import caffe_pb2

_STAGED = """
name: "s"
layer { name: "a" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 }
        data_filler { type: "constant" value: 1 } } include { stage: "a" } }
layer { name: "a" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 }
        data_filler { type: "constant" value: 2 } } include { stage: "b" } }
layer { name: "a" type: "DummyData" top: "x" dummy_data_param { shape { dim: 1 }
        data_filler { type: "constant" value: 3 } } include { stage: "" } }
layer { name: "p" type: "Power" bottom: "x" top: "y" }
"""


@pytest.fixture
def staged(tmp_path):
    """A net whose output y is 1, 2 or 3 by stage, and a weights file with nothing for it."""
    model = tmp_path / "staged.prototxt"
    model.write_text(_STAGED)
    weights = caffe_pb2.NetParameter(name="s")
    weights.layer.add(name="unrelated")
    path = tmp_path / "staged.caffemodel"
    path.write_bytes(weights.SerializeToString())
    return model, path


def _only_the_net_dump_unstamped(lines: list[str]) -> bool:
    """Every line is a glog line but the continuation lines of Caffe's multi-line
    "Initializing net from parameters:" message (the net's text)."""
    in_dump = False
    for line in lines:
        if re.match(r"^[IWEF]\d{4} ", line):
            in_dump = message(line).startswith("Initializing net from parameters:")
        elif not in_dump:
            return False
    return True


def _timestamps(lines: list[str]) -> list[str]:
    """glog's ``<L><MMDD> <HH:MM:SS.uuuuuu>`` of every log line, as sortable strings."""
    out = []
    for line in lines:
        m = re.match(r"^[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d{6}) ", line)
        if m:
            out.append(f"{m.group(1)} {m.group(2)}")
    return out


def test_no_command_prints_the_usage_on_stdout_and_exits_0(capsys):
    # caffe.cpp main(): argc != 2 -> gflags::ShowUsageWithFlagsRestrict (stdout), main returns 0
    assert main([]) == 0
    out, err = capsys.readouterr()
    assert "Usage:" in out and "test" in out and "train" in out and "device_query" in out
    assert err == ""


def test_device_query_without_gpu_logs_the_query_line_and_exits_0(capsys):
    # caffe.cpp device_query(): LOG(INFO) << "Querying GPUs " << FLAGS_gpu; no ids, nothing more
    status, lines = run_cli(capsys, "device_query")
    assert status == 0
    assert [message(x) for x in lines] == ["Querying GPUs "]


@pytest.mark.parametrize("flag", [["--gpu=0"], ["-gpu", "0"], ["--gpu", "all"]])
def test_device_query_with_gpu_warns_once_and_exits_0(capsys, flag):
    status, lines = run_cli(capsys, "device_query", *flag)
    assert status == 0
    assert message(lines[0]) == f"Querying GPUs {flag[-1].split('=')[-1]}"
    warnings = [x for x in lines if x.startswith("W")]
    assert len(warnings) == 1 and "no GPU backend is available" in warnings[0]


def test_test_defaults_and_a_repeated_stage_flag(capsys, staged):
    model, weights = staged
    # --iterations defaults to 50; no --stage gives the one empty stage ""
    status, lines = run_cli(capsys, "test", f"--model={model}", f"--weights={weights}")
    msgs = [message(x) for x in lines]
    assert status == 0 and "Running for 50 iterations." in msgs
    assert msgs[-3:] == ["Batch 49, y = 3", "Loss: 0", "y = 3"]
    # gflags: a flag given twice keeps its last value
    status, lines = run_cli(capsys, "test", f"--model={model}", f"--weights={weights}", "--iterations=1",
                            "--stage=a", "--stage=b")
    assert status == 0 and [message(x) for x in lines][-1] == "y = 2"


def test_test_log_lines_are_in_time_order(capsys, staged):
    # glog stamps every line when it is logged: Caffe's "Use CPU." comes first, before the net's
    # lines, and the time stamps never go back.
    model, weights = staged
    status, lines = run_cli(capsys, "test", f"--model={model}", f"--weights={weights}", "--iterations=2")
    assert status == 0
    assert message(lines[0]) == "Use CPU."
    stamps = _timestamps(lines)
    assert _only_the_net_dump_unstamped(lines) and stamps == sorted(stamps)


def test_time_defaults_and_log_lines_in_time_order(capsys, staged):
    model, _ = staged
    status, lines = run_cli(capsys, "time", f"--model={model}")
    assert status == 0
    msgs = [message(x) for x in lines]
    assert msgs[0] == "Use CPU."
    assert "Testing for 50 iterations." in msgs and "Iteration: 50 forward-backward time:" in " ".join(msgs)
    assert msgs.index("Performing Forward") < msgs.index("Initial loss: 0") < msgs.index("Performing Backward")
    stamps = _timestamps(lines)
    assert _only_the_net_dump_unstamped(lines) and stamps == sorted(stamps)
