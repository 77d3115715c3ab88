"""Ristretto's SqueezeNet fine-tuning solver runs unchanged apart from its paths.

examples/squeezenet/solver_finetune.prototxt is Ristretto's demo solver with only ``net`` and
``snapshot_prefix`` pointing into examples/squeezenet/ (checked here against the original in
the shared data folder). It is run to the end exactly as written — Adam (the deprecated
``solver_type: ADAM``), ``iter_size: 32``, ``solver_mode: GPU``, 2,000 iterations, a 2,000-batch
test every 100 iterations and at the start, a snapshot every 100, ``average_loss: 40`` — with a
small Ristretto net standing in at the net path: the real SqueezeNet would take hours per
test on a CPU (examples/squeezenet/smoke_test.sh runs the real net on a few photos).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import REPO, shared_data
from log_support import capture_log

from ristretto_cli.cli import main
from ristretto_cli.io import read_solver_param
from ristretto_cli.proto import caffe_pb2

SOLVER = REPO / "examples" / "squeezenet" / "solver_finetune.prototxt"

# One image of 3x6x6 per batch (iter_size 32 makes 32 per update), 8-bit dynamic fixed point.
# With the solver's base_lr of 1e-6 nothing is learned in 2,000 steps; the run shows that
# every setting of the file is carried out.
STAND_IN = """name: "SqueezeNetStandIn"
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TRAIN }
  dummy_data_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } shape { dim: 1 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 3 } } }
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: TEST }
  dummy_data_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } shape { dim: 1 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 3 } } }
layer { name: "conv1" type: "ConvolutionRistretto" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } }
  quantization_param { bw_layer_in: 8 bw_layer_out: 8 bw_params: 8
                       fl_layer_in: 5 fl_layer_out: 4 fl_params: 7 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "FcRistretto" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } }
  quantization_param { bw_layer_in: 8 bw_layer_out: 8 bw_params: 8
                       fl_layer_in: 4 fl_layer_out: 4 fl_params: 7 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""


def _path_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not re.match(r"\s*(net|snapshot_prefix)\s*:", line)]


def test_the_example_solver_is_ristrettos_apart_from_its_paths():
    original = shared_data("prototxt/ristretto_demo/solver_finetune.prototxt").read_text()
    ours = SOLVER.read_text()
    assert _path_lines(ours) == _path_lines(original)
    assert ours != original                               # the paths do differ
    param = read_solver_param(str(SOLVER))
    assert (param.type, param.iter_size, param.max_iter, param.test_iter[0]) == ("Adam", 32, 2000, 2000)


@pytest.mark.slow
def test_ristrettos_finetuning_solver_runs_to_the_end(tmp_path, monkeypatch):
    folder = tmp_path / "examples" / "squeezenet"
    folder.mkdir(parents=True)
    (folder / "quantized.prototxt").write_text(STAND_IN)
    (folder / "solver_finetune.prototxt").write_text(SOLVER.read_text())
    monkeypatch.chdir(tmp_path)
    with capture_log() as log:
        assert main(["train", "--solver=examples/squeezenet/solver_finetune.prototxt"]) == 0
    text = "\n".join(log.messages)
    assert "GPU" in text                                  # solver_mode GPU: one warning, then the CPU
    tests = re.findall(r"Iteration (\d+), Testing net", text)
    assert [int(t) for t in tests] == list(range(0, 2001, 100))   # test_initialization, every 100
    assert len(re.findall(r"Test net output #0: accuracy = ", text)) == 21
    displayed = re.findall(r"Iteration (\d+) \(.*\), loss = ", text)
    assert [int(i) for i in displayed] == list(range(0, 2000, 10))    # display: 10
    assert "Optimization Done." in text
    for it in range(100, 2001, 100):                      # snapshot: 100
        for ext in ("caffemodel", "solverstate"):
            assert (folder / f"squeezenet_iter_{it}.{ext}").exists()
    # Adam moved the full-precision shadow weights, and those are what the snapshots hold.
    first, last = (weights(folder / f"squeezenet_iter_{it}.caffemodel") for it in (100, 2000))
    assert not np.array_equal(first, last)
    assert not np.array_equal(last, np.round(last * 2**7) / 2**7)   # not on conv1's 8-bit grid
    state = caffe_pb2.SolverState.FromString((folder / "squeezenet_iter_2000.solverstate").read_bytes())
    assert state.iter == 2000


def weights(path) -> np.ndarray:
    """conv1's weights in a caffemodel."""
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    layer = next(lp for lp in net.layer if lp.name == "conv1")
    return np.asarray(layer.blobs[0].data, np.float32)
