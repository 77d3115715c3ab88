"""The legacy upgrade chain (formats.md §3): V0 -> V1 -> V2, data transformation fields,
input fields -> Input layer, BatchNorm params, solver type and snapshot prefix."""

from __future__ import annotations

import os
import re

import pytest
from conftest import shared_data, test_data
from io_support import capture_log

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import (
    format_message,
    net_needs_upgrade,
    parse_text,
    read_net_param,
    read_solver_param,
    read_weights,
    upgrade_net,
    upgrade_net_as_needed,
    upgrade_solver,
)
from ristretto_cli.proto import caffe_pb2


def _net(text: str):
    return parse_text(text, caffe_pb2.NetParameter())


# --- V0 ----------------------------------------------------------------------------------

def test_v0_net_with_padding_layer_upgrades_to_the_expected_net():
    # The expected file was written by hand from the rules of formats.md §3.1-3.4.
    net = read_net_param(test_data("upgrade/v0_lenet.prototxt"))
    assert format_message(net) == test_data("upgrade/v0_lenet_upgraded.prototxt").read_text()


def test_v0_data_fields_move_to_their_new_messages_and_bad_fields_are_logged():
    net = read_net_param(test_data("upgrade/v0_data.prototxt"), upgrade=False)
    with capture_log() as log:
        ok = upgrade_net_as_needed(net, "v0_data.prototxt")
    assert ok is False  # relu1's num_output cannot be carried over
    assert ("ERROR", "Unknown parameter num_output for layer type relu") in log.entries
    assert ("ERROR", "Warning: had one or more problems upgrading V0NetParameter to NetParameter "
            "(see above); continuing anyway.") in log.entries
    assert net.force_backward is True and not net.HasField("state")
    by_name = {layer.name: layer for layer in net.layer}
    data = by_name["data"]
    assert data.type == "Data"
    assert (data.data_param.source, data.data_param.batch_size, data.data_param.rand_skip) == (
        "train_lmdb", 32, 10)
    t = data.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.00390625, "mean.binaryproto", 24, True)
    assert not data.data_param.HasField("scale") and not data.data_param.HasField("mean_file")
    images = by_name["images"].image_data_param
    assert (by_name["images"].type, images.source, images.batch_size, images.shuffle,
            images.new_height, images.new_width) == ("ImageData", "list.txt", 4, True, 256, 320)
    w = by_name["windows"].window_data_param
    assert by_name["windows"].type == "WindowData"
    assert (w.fg_threshold, w.bg_threshold, w.fg_fraction, w.context_pad, w.crop_mode) == (
        pytest.approx(0.6), pytest.approx(0.4), pytest.approx(0.3), 16, "square")
    assert [f.name for f, _ in by_name["relu1"].ListFields()] == ["name", "type", "bottom", "top"]
    assert (by_name["concat"].type, by_name["concat"].concat_param.concat_dim) == ("Concat", 1)
    assert by_name["out"].hdf5_output_param.file_name == "out.h5"


@pytest.mark.parametrize("name, message", [
    ("v0_padding_into_relu.prototxt",
     "Padding layer input to non-convolutional / non-pooling layer type relu"),
    ("v0_unknown_type.prototxt", "Unknown layer name: convolution"),
    ("v0_unknown_blob.prototxt", "Unknown blob input nowhere"),
])
def test_v0_fatal_cases_raise(name, message):
    with pytest.raises(RistrettoError, match=re.escape(message)):
        read_net_param(test_data(f"bad/{name}"))


def test_v0_padding_layer_with_two_tops_is_refused():
    net = _net('input: "d" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4 '
               'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" top: "q" } '
               'layers { layer { name: "c" type: "conv" num_output: 1 kernelsize: 1 } '
               'bottom: "p" top: "c" }')
    with pytest.raises(RistrettoError, match="Padding Layer produces a single blob as output"):
        upgrade_net(net)


# --- data transformation, V1 -> V2 -----------------------------------------------------------

def test_data_transformation_fields_move_to_transform_param():
    net = _net('layers { name: "d" type: DATA data_param { source: "s" batch_size: 2 scale: 0.5 '
               'mean_file: "m" crop_size: 3 mirror: true } } '
               'layers { name: "i" type: IMAGE_DATA image_data_param { source: "l" crop_size: 5 } } '
               'layers { name: "w" type: WINDOW_DATA window_data_param { source: "x" } } '
               'layers { name: "plain" type: DATA data_param { source: "t" } }')
    with capture_log() as log:
        upgrade_net(net, "n.prototxt")
    assert ("INFO", "Attempting to upgrade input file specified using deprecated transformation "
            "parameters: n.prototxt") in log.entries
    d, i, w, plain = net.layer
    assert (d.transform_param.scale, d.transform_param.mean_file, d.transform_param.crop_size,
            d.transform_param.mirror) == (0.5, "m", 3, True)
    assert [f.name for f, _ in d.data_param.ListFields()] == ["source", "batch_size"]
    assert i.transform_param.crop_size == 5 and not i.image_data_param.HasField("crop_size")
    # As in Caffe (mutable_*() on every data layer), the others get an empty transform_param.
    assert w.HasField("transform_param") and not w.transform_param.ListFields()
    assert plain.HasField("transform_param") and not plain.transform_param.ListFields()


def test_v1_layer_fields_become_param_specs_and_type_strings():
    net = _net('layers { name: "c" type: CONVOLUTION bottom: "a" top: "b" '
               'param: "w_shared" param: "" blob_share_mode: PERMISSIVE '
               'blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 loss_weight: 0.5 '
               'include { phase: TRAIN } exclude { stage: "deploy" } '
               'convolution_param { num_output: 4 kernel_size: 3 } '
               'blobs { num: 1 channels: 1 height: 1 width: 2 data: 1 data: 2 } } '
               'layers { name: "l" type: SOFTMAX_LOSS loss_param { ignore_label: 3 } } '
               'layers { name: "none" type: NONE } layers { name: "untyped" }')
    upgrade_net(net)
    c, loss, none, untyped = net.layer
    assert c.type == "Convolution" and loss.type == "SoftmaxWithLoss"
    assert none.HasField("type") and none.type == ""
    assert not untyped.HasField("type")
    assert [(p.name, p.share_mode, p.lr_mult, p.decay_mult) for p in c.param] == [
        ("w_shared", caffe_pb2.ParamSpec.PERMISSIVE, 1, 1), ("", caffe_pb2.ParamSpec.STRICT, 2, 0)]
    assert c.param[1].HasField("name") and not c.param[1].HasField("share_mode")
    assert list(c.loss_weight) == [0.5]
    assert c.include[0].phase == caffe_pb2.TRAIN and list(c.exclude[0].stage) == ["deploy"]
    assert c.convolution_param.num_output == 4
    assert (c.blobs[0].width, list(c.blobs[0].data)) == (2, [1, 2])
    assert loss.loss_param.ignore_label == 3
    assert len(net.layers) == 0


def test_every_v1_enum_has_a_type_string():
    from ristretto_cli.io.upgrade import V1_TYPES
    assert set(V1_TYPES) == set(caffe_pb2.V1LayerParameter.LayerType.keys())


def test_mixed_v1_and_v2_layers_are_refused():
    net = _net('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }')
    with pytest.raises(RistrettoError, match="includes both 'layer' and 'layers'"):
        upgrade_net(net, "mixed.prototxt")


def test_v1_log_lines_match_real_caffe(monkeypatch):
    """The wording of real Caffe's log when it upgraded these very files (reference log of
    ``caffe test`` on the V1 LeNet prototxt and caffemodel, run from the data folder)."""
    log_text = shared_data("reference/lenet_test.txt").read_text()
    caffe_lines = [line.split("] ", 1)[1] for line in log_text.splitlines()
                   if "upgrade_proto.cpp" in line]
    monkeypatch.chdir(test_data("models").parent)
    with capture_log() as log:
        read_net_param("models/lenet_v1/lenet_train_test.prototxt")
        read_weights("models/lenet_v1/lenet_iter_10000.caffemodel")
    assert [m for _, m in log.entries] == caffe_lines


# --- input fields, BatchNorm -----------------------------------------------------------------

def test_input_dim_becomes_an_input_layer_at_position_zero():
    net = _net('name: "n" input: "data" input: "label" input_dim: 10 input_dim: 3 input_dim: 24 '
               'input_dim: 24 input_dim: 10 input_dim: 1 input_dim: 1 input_dim: 1 '
               'layer { name: "a" type: "ReLU" bottom: "data" top: "a" } '
               'layer { name: "b" type: "ReLU" bottom: "a" top: "b" }')
    assert net_needs_upgrade(net)
    upgrade_net(net)
    assert [layer.name for layer in net.layer] == ["input", "a", "b"]
    first = net.layer[0]
    assert first.type == "Input" and list(first.top) == ["data", "label"]
    assert [list(s.dim) for s in first.input_param.shape] == [[10, 3, 24, 24], [10, 1, 1, 1]]
    assert not net.input and not net.input_dim and not net.input_shape
    assert not net_needs_upgrade(net)


def test_input_shape_is_used_when_given():
    net = _net('input: "x" input_shape { dim: 2 dim: 5 } layer { name: "r" type: "ReLU" }')
    upgrade_net(net)
    assert [layer.name for layer in net.layer] == ["input", "r"]
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 5]


def test_input_without_dims_is_just_dropped():
    net = _net('input: "data" layer { name: "r" type: "ReLU" }')
    upgrade_net(net)
    assert [layer.name for layer in net.layer] == ["r"] and not net.input


def test_too_few_input_dims_is_an_error():
    with pytest.raises(RistrettoError, match="need 4 input_dim values, found 3"):
        read_net_param(test_data("bad/input_dim_short.prototxt"))


def test_batchnorm_with_three_params_gets_zero_lr_and_decay():
    net = _net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 name: "m" } param { lr_mult: 2 } '
               'param { decay_mult: 5 } } '
               'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } } '
               'layer { name: "conv" type: "Convolution" param { lr_mult: 1 } param { lr_mult: 1 } '
               'param { lr_mult: 1 } }')
    upgrade_net(net)
    bn, bn2, conv = net.layer
    assert [(p.lr_mult, p.decay_mult) for p in bn.param] == [(0, 0)] * 3
    assert bn.param[0].name == "m"
    assert [p.lr_mult for p in bn2.param] == [1, 1]
    assert [p.lr_mult for p in conv.param] == [1, 1, 1]


def test_current_nets_need_no_upgrade():
    net = read_net_param(test_data("models/lenet/lenet_train_test.prototxt"), upgrade=False)
    assert not net_needs_upgrade(net)
    before = net.SerializeToString()
    with capture_log() as log:
        assert upgrade_net_as_needed(net) is True
    assert net.SerializeToString() == before and log.entries == []


# --- solver --------------------------------------------------------------------------------

@pytest.mark.parametrize("enum, name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                        ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_solver_type_enum_becomes_type_string(enum, name):
    solver = parse_text(f'solver_type: {enum} snapshot_prefix: "p"', caffe_pb2.SolverParameter())
    upgrade_solver(solver, "s.prototxt")
    assert solver.type == name and not solver.HasField("solver_type")


def test_solver_with_both_type_fields_is_refused():
    with pytest.raises(RistrettoError, match="cannot be both specified"):
        read_solver_param(test_data("bad/both_solver_types.prototxt"))


def test_snapshot_prefix_defaults_to_the_solver_path_without_extension(tmp_path):
    solver_file = tmp_path / "sub" / "my.solver.prototxt"
    solver_file.parent.mkdir()
    solver_file.write_text('base_lr: 0.1\n')
    solver = read_solver_param(solver_file)
    assert solver.snapshot_prefix == str(tmp_path / "sub" / "my.solver")
    assert upgrade_solver(caffe_pb2.SolverParameter(), "solver").snapshot_prefix == "solver"


def test_snapshot_prefix_naming_a_directory_gets_the_solver_stem(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like Caffe, the prefix is relative to the working directory
    (tmp_path / "snaps").mkdir()
    for prefix, expected in [("snaps", os.path.join("snaps", "lenet_solver")),
                             ("snaps/", "snaps/lenet_solver"),
                             ("snaps/lenet", "snaps/lenet"),  # not a directory: unchanged
                             ("missing_dir/x", "missing_dir/x")]:
        solver = caffe_pb2.SolverParameter(snapshot_prefix=prefix)
        upgrade_solver(solver, "conf/lenet_solver.prototxt")
        assert solver.snapshot_prefix == expected


def test_real_v1_solver_reads_unchanged_except_prefix_rules():
    solver = read_solver_param(test_data("models/cifar10_quick_v1/cifar10_quick_solver.prototxt"))
    assert (solver.type, solver.base_lr, solver.max_iter, solver.snapshot_prefix) == (
        "SGD", pytest.approx(0.001), 4000, "examples/cifar10/cifar10_quick")
