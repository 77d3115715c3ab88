"""Helpers shared by the test_data_* and test_cli_test modules."""

from __future__ import annotations

import re

import numpy as np
from google.protobuf import text_format
from log_support import capture_log, message, run_cli  # noqa: F401  (re-exported)

from ristretto_cli.proto import caffe_pb2


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
