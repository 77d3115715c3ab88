"""Edge cases of the legacy upgrade chain, checked against Caffe 1.0's upgrade_proto.cpp
(and, for the snapshot prefix, the later BVLC master that formats.md §3.6 follows)."""

from __future__ import annotations

import pytest
from io_support import capture_log, run_cli

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import format_message, parse_text, upgrade_net, upgrade_net_as_needed, upgrade_solver
from ristretto_cli.proto import caffe_pb2

DATA = "layers { layer { name: 'data' type: 'data' source: 's' batchsize: 2 } top: 'data' top: 'label' } "
PAD = "layers { layer { name: 'pad1' type: 'padding' pad: 2 } bottom: 'data' top: 'pad1' } "


def _net(text: str):
    return parse_text(text, caffe_pb2.NetParameter())


# --- V0 ------------------------------------------------------------------------------------

def test_v0_shuffle_images_on_another_type_is_logged_as_shuffle():
    # upgrade_proto.cpp (1.0) line 456 names the field "shuffle", not "shuffle_images".
    net = _net(DATA + "layers { layer { name: 'r' type: 'relu' shuffle_images: true } "
               "bottom: 'data' top: 'data' }")
    with capture_log() as log:
        assert upgrade_net_as_needed(net, "n.prototxt") is False
    assert ("ERROR", "Unknown parameter shuffle for layer type relu") in log.entries
    assert not any("shuffle_images" in m for _, m in log.entries)


def test_v0_other_misplaced_fields_are_logged_with_their_v0_names():
    net = _net(DATA + "layers { layer { name: 'r' type: 'relu' kernelsize: 3 rand_skip: 1 "
               "det_crop_mode: 'warp' new_height: 4 } bottom: 'data' top: 'data' }")
    with capture_log() as log:
        upgrade_net_as_needed(net, "n.prototxt")
    errors = [m for level, m in log.entries if level == "ERROR"]
    assert errors[:4] == [f"Unknown parameter {f} for layer type relu"
                          for f in ("kernelsize", "rand_skip", "new_height", "det_crop_mode")]


def test_v0_padding_layer_feeding_two_convs_pads_both_and_overrides_their_own_pad():
    net = _net(DATA + PAD +
               "layers { layer { name: 'c1' type: 'conv' kernelsize: 3 } bottom: 'pad1' top: 'c1' } "
               "layers { layer { name: 'c2' type: 'pool' pad: 7 } bottom: 'pad1' top: 'c2' }")
    upgrade_net(net)
    data, c1, c2 = net.layer
    assert (list(c1.bottom), list(c1.convolution_param.pad)) == (["data"], [2])
    assert (list(c2.bottom), c2.pooling_param.pad) == (["data"], 2)  # scalar for pooling


def test_v0_padding_without_pad_still_sets_pad_zero():
    # set_pad(source.pad()) makes the field present even when the padding layer has none.
    net = _net(DATA + "layers { layer { name: 'p' type: 'padding' } bottom: 'data' top: 'p' } "
               "layers { layer { name: 'c' type: 'conv' } bottom: 'p' top: 'c' }")
    upgrade_net(net)
    assert list(net.layer[1].convolution_param.pad) == [0]


@pytest.mark.parametrize("extra, message", [
    ("layers { layer { name: 'c' type: 'conv' } bottom: 'pad1' bottom: 'label' top: 'c' }",
     "layer 'c': Conv Layer takes a single blob as input."),
    ("layers { layer { name: 'p2' type: 'padding' pad: 1 } bottom: 'pad1' top: 'p2' }",
     "layer 'p2': Padding layer input to non-convolutional / non-pooling layer type padding"),
])
def test_v0_padding_checks_are_one_line_errors_naming_the_file(extra, message):
    with pytest.raises(RistrettoError) as info:
        upgrade_net(_net(DATA + PAD + extra), "v0.prototxt")
    assert str(info.value) == f"v0.prototxt: {message}"


def test_v0_net_drops_v2_layers_and_input_shape_instead_of_refusing():
    # UpgradeV0Net clears the whole net first, so a stray 'layer' never reaches the V1 check.
    net = _net(DATA + "layer { name: 'v2' type: 'ReLU' } input: 'x' input_shape { dim: 1 } "
               "state { phase: TEST }")
    upgrade_net(net)
    assert [layer.name for layer in net.layer] == ["data"]
    assert not net.HasField("state") and not net.input and not net.input_shape


def test_v1_entry_inside_a_v0_net_keeps_only_bottom_and_top():
    net = _net(DATA + "layers { name: 'v1' type: RELU bottom: 'data' top: 'r' }")
    upgrade_net(net)
    assert format_message(net.layer[1]) == 'bottom: "data"\ntop: "r"\n'


# --- the tools: a CHECK / LOG(FATAL) is one line naming the file ------------------------------

@pytest.mark.parametrize("text, message", [
    (PAD, "Unknown blob input data"),
    ("layers { name: 'a' type: RELU } layer { name: 'b' type: 'ReLU' }",
     "includes both 'layer' and 'layers'"),
    (DATA + "layers { layer { name: 'c' type: 'convolution' } bottom: 'data' top: 'c' }",
     "Unknown layer name: convolution"),
])
def test_upgrade_tool_fatal_cases_are_one_line(tmp_path, capsys, text, message):
    source, out = tmp_path / "bad.prototxt", tmp_path / "out.prototxt"
    source.write_text(text)
    status, lines = run_cli(capsys, "upgrade_net_proto_text", source, out)
    assert status == 1
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and str(source) in errors[0] and message in errors[0]
    assert not any("Traceback" in line for line in lines)


# --- solver snapshot prefix ------------------------------------------------------------------

def test_snapshot_prefix_directory_log_uses_caffes_wording(tmp_path, monkeypatch):
    # BVLC master upgrade_proto.cpp UpgradeSnapshotPrefixProperty: "was a directory and is
    # replaced to".
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    solver = caffe_pb2.SolverParameter(snapshot_prefix="snaps")
    with capture_log() as log:
        upgrade_solver(solver, "conf/lenet_solver.prototxt")
    assert log.entries == [("INFO", "snapshot_prefix was a directory and is replaced to "
                            "snaps/lenet_solver")]


def test_snapshot_prefix_directory_with_an_empty_stem_is_kept(tmp_path, monkeypatch):
    # boost::filesystem v3: stem(".prototxt") is "" and path / "" appends nothing.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "snaps").mkdir()
    solver = caffe_pb2.SolverParameter(snapshot_prefix="snaps")
    upgrade_solver(solver, "conf/.prototxt")
    assert solver.snapshot_prefix == "snaps"
