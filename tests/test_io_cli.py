"""``ristretto upgrade_net_proto_text`` / ``upgrade_net_proto_binary`` (Caffe's tools)."""

from __future__ import annotations

import h5py
import numpy as np
from conftest import test_data
from io_support import bits, flatten, run_cli

from ristretto_cli.io import blob_to_array, format_message, net_needs_upgrade, read_net_param
from ristretto_cli.proto import caffe_pb2


def test_text_tool_upgrades_a_v1_prototxt(capsys, tmp_path):
    out = tmp_path / "lenet.prototxt"
    source = test_data("models/lenet_v1/lenet_train_test.prototxt")
    status, lines = run_cli(capsys, "upgrade_net_proto_text", source, out)
    assert status == 0
    assert lines[-1].endswith(f"] Wrote upgraded NetParameter text proto to {out}")
    assert any("Attempting to upgrade input file specified using deprecated V1LayerParameter" in x
               for x in lines)
    text = out.read_text()
    raw = read_net_param(out, upgrade=False)
    assert not net_needs_upgrade(raw) and format_message(raw) == text
    # The new-format twin of this file has exactly the same content (see test_io_v1_twins).
    assert flatten(raw) == flatten(read_net_param(test_data("models/lenet/lenet_train_test.prototxt")))


def test_text_tool_on_a_current_file_says_so_and_writes_caffe_text(capsys, tmp_path):
    out = tmp_path / "same.prototxt"
    source = test_data("models/lenet/lenet_train_test.prototxt")
    status, lines = run_cli(capsys, "upgrade_net_proto_text", source, out)
    assert status == 0
    # Caffe's tool logs it with LOG(ERROR) and goes on: an E line, exit status 0
    assert any(x.startswith("E") and x.endswith(f"] File already in latest proto format: {source}")
               for x in lines)
    assert out.read_bytes() == source.read_bytes()  # this file is already in Caffe's own style


def test_text_tool_exit_status_1_when_v0_content_is_dropped(capsys, tmp_path):
    out = tmp_path / "v0.prototxt"
    status, lines = run_cli(capsys, "upgrade_net_proto_text", test_data("upgrade/v0_data.prototxt"), out)
    assert status == 1  # as Caffe's tool: the file is written, the status reports the problem
    assert out.exists()
    assert not any(x.startswith("ristretto: error:") for x in lines)
    assert any("Encountered error(s) while upgrading prototxt; see details above." in x for x in lines)


def test_binary_tool_upgrades_a_v1_caffemodel(capsys, tmp_path):
    source = test_data("models/lenet_v1/lenet_iter_10000.caffemodel")
    out = tmp_path / "lenet.caffemodel"
    status, lines = run_cli(capsys, "upgrade_net_proto_binary", source, out)
    assert status == 0
    assert lines[-1].endswith(f"] Wrote upgraded NetParameter binary proto to {out}")
    raw = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert not net_needs_upgrade(raw) and len(raw.layers) == 0
    old = caffe_pb2.NetParameter.FromString(source.read_bytes())
    assert [l.name for l in raw.layer] == [l.name for l in old.layers]
    for new_layer, old_layer in zip(raw.layer, old.layers):
        for a, b in zip(new_layer.blobs, old_layer.blobs):
            assert a == b  # blobs are carried over unchanged, legacy shape fields included


def test_binary_tool_turns_hdf5_weights_into_a_caffemodel(capsys, tmp_path):
    source = test_data("models/cifar10_quick/cifar10_quick_iter_5000.caffemodel.h5")
    out = tmp_path / "cifar.caffemodel"
    status, _ = run_cli(capsys, "upgrade_net_proto_binary", source, out)
    assert status == 0
    net = caffe_pb2.NetParameter.FromString(out.read_bytes())
    with h5py.File(source, "r") as f:
        stored = {(name, int(i)): f[f"data/{name}/{i}"][()] for name in f["data"] for i in f[f"data/{name}"]}
    got = {(l.name, i): blob_to_array(b) for l in net.layer for i, b in enumerate(l.blobs)}
    assert got.keys() == stored.keys() and len(got) == 10
    assert all(np.array_equal(bits(got[k]), bits(stored[k])) for k in got)
