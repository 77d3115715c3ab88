"""Helpers shared by the test_data_* and test_cli_test modules."""

from __future__ import annotations

import contextlib
import logging
import re
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]

    def levels(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@contextlib.contextmanager
def capture_log():
    """Collect the project logger's records (INFO and up) while the block runs."""
    handler = _ListHandler()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    """``ristretto ARGS`` in-process: (exit status, stderr lines)."""
    from ristretto_cli.cli import main
    capsys.readouterr()
    # The glog handler keeps the stream it was made with: point it at this test's stderr for
    # the call, and back afterwards (the captured stream is closed after the test).
    from ristretto_cli import log
    log.configure()
    _point_glog_at(sys.stderr)
    try:
        status = main([str(a) for a in args])
    finally:
        _point_glog_at(sys.__stderr__)
    return status, capsys.readouterr().err.splitlines()


def _point_glog_at(stream) -> None:
    for h in logger.handlers:
        if type(h).__name__ == "_TqdmAwareHandler":
            h.stream = stream


@pytest.fixture(autouse=True)
def glog_to_real_stderr():
    """Import into a test module: its log lines never go to a stream a previous test closed."""
    _point_glog_at(sys.__stderr__)
    yield


def message(line: str) -> str:
    """The message part of a glog line (after ``] ``)."""
    return line.split("] ", 1)[1] if "] " in line else line


def net_param(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def build_net(text: str, phase=caffe_pb2.TEST, seed: int = 1701):
    from ristretto_cli.net import Net
    return Net(net_param(text), phase, seed=seed)


def data_net(layer: str, phase=caffe_pb2.TEST, seed: int = 1701):
    """A net made of one data layer given as prototxt text (inside ``layer { }``)."""
    return build_net(f"name: 'd' layer {{ name: 'd' {layer} }}", phase, seed)


def forward_batches(net, n: int, blobs=("data", "label")) -> list[list[np.ndarray]]:
    out = []
    for _ in range(n):
        net.forward()
        out.append([net.blobs[b].data.copy() for b in blobs])
    return out


_RUN_RE = re.compile(r"^##########\s+caffe test --model=(\S+)")


def reference_runs(path) -> dict[str, list[str]]:
    """The messages of each ``caffe test`` run in reference/lenet_test.txt, keyed by the model
    path of its header line; only the scoring lines (Batch, Loss, means) are kept."""
    runs: dict[str, list[str]] = {}
    current = None
    for line in open(path, encoding="utf-8"):
        m = _RUN_RE.match(line)
        if m:
            current = m.group(1)
            runs[current] = []
            continue
        if current is None or "caffe.cpp:" not in line:
            continue
        msg = message(line.rstrip("\n"))
        if msg.startswith(("Batch ", "Loss: ")) or re.match(r"^\w+ = ", msg):
            runs[current].append(msg)
    return runs


# ---------------------------------------------------------------------- MNIST working folders
def make_mnist_lmdbs(tmp_path_factory):
    """(test LMDB, train LMDB) as the LeNet prototxts read them: the reference test LMDB (made by
    Caffe's convert_mnist_data) and the 60k train LMDB built by ours (which writes byte-identical
    records) in about 2 s; for a session-scoped fixture."""
    from conftest import shared_data

    from ristretto_cli.data.tools import convert_mnist_data
    test_db = shared_data("reference/mnist_test_lmdb")
    train_db = tmp_path_factory.mktemp("mnist_train") / "mnist_train_lmdb"
    n = convert_mnist_data(shared_data("mnist/train-images-idx3-ubyte.gz"),
                           shared_data("mnist/train-labels-idx1-ubyte.gz"), str(train_db), progress=False)
    assert n == 60000
    return test_db, train_db


def lay_out_mnist(folder, lmdbs) -> None:
    """examples/mnist/mnist_{test,train}_lmdb under ``folder``, as the reference runs had them."""
    test_db, train_db = lmdbs
    (folder / "examples" / "mnist").mkdir(parents=True, exist_ok=True)
    (folder / "examples" / "mnist" / "mnist_test_lmdb").symlink_to(test_db)
    (folder / "examples" / "mnist" / "mnist_train_lmdb").symlink_to(train_db)
