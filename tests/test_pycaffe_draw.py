"""caffe.draw: the graph pycaffe's draw.py builds (nodes, labels, colours, edges), phase
filtering, DOT output without Graphviz, and the errors for a missing pydot or Graphviz.

Expected labels are written out from pycaffe's rules: ``name``, ``(type)`` (``(Pooling
MAX)``), then ``kernel size: k``, ``stride: s``, ``pad: p`` for Convolution, Deconvolution
and Pooling, and ``lr mult: w, b`` with ``display_lrm``; joined by a literal ``\\n`` when
the graph runs left-right, by spaces for TB/BT; in double quotes.
"""

from __future__ import annotations

import os
import sys
from collections import Counter

import pytest
from conftest import REPO, test_data
from google.protobuf import text_format
from log_support import run_cli

from ristretto_cli import pycaffe as caffe
from ristretto_cli.cli import main
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import read_net_param
from ristretto_cli.proto import caffe_pb2

LENET = test_data("models/lenet/lenet_train_test.prototxt")

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "pool" top: "up" convolution_param { num_output: 2 kernel_size: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" inner_product_param { num_output: 3 } }
"""

DATA_L = r'"data\n(Input)"'
CONV_L = r'"conv\n(Convolution)\nkernel size: 3\nstride: 2\npad: 1"'
RELU_L = r'"relu\n(ReLU)"'
POOL_L = r'"pool\n(Pooling AVE)\nkernel size: 2\nstride: 2\npad: 0"'
UP_L = r'"up\n(Deconvolution)\nkernel size: 2\nstride: 1\npad: 0"'
FC_L = r'"fc\n(InnerProduct)"'

BLOB = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}


def box(color):
    return {"shape": "record", "fillcolor": color, "style": "filled"}


def net_from(text):
    return text_format.Parse(text, caffe_pb2.NetParameter())


def layer_from(text):
    return text_format.Parse(text, caffe_pb2.LayerParameter())


def nodes_of(graph):
    return {node.get_name(): node.get_attributes() for node in graph.get_nodes()}


def edges_of(graph):
    return [(edge.get_source(), edge.get_destination(), edge.get("label")) for edge in graph.get_edges()]


def test_registered_as_pycaffe_submodule():
    import ristretto_cli.pycaffe.draw as draw_module
    from ristretto_cli.pycaffe.draw import draw_net_to_file

    assert draw_module is caffe.draw
    assert draw_net_to_file is caffe.draw.draw_net_to_file


def test_small_net_nodes_edges_and_styles():
    graph = caffe.draw.get_pydot_graph(net_from(TINY), "LR")
    assert graph.get_name() == "tiny"
    assert graph.get_graph_type() == "digraph"
    assert graph.get("rankdir") == "LR"
    # one node per layer and per blob, in order of first mention
    assert [node.get_name() for node in graph.get_nodes()] == [
        DATA_L, "data", CONV_L, "conv", RELU_L, POOL_L, "pool", UP_L, "up", FC_L, "fc"]
    assert nodes_of(graph) == {
        DATA_L: box("#6495ED"), CONV_L: box("#FF5050"), RELU_L: box("#90EE90"),
        POOL_L: box("#FF9900"), UP_L: box("#FF5050"), FC_L: box("#CC33FF"),
        "data": BLOB, "conv": BLOB, "pool": BLOB, "up": BLOB,
        "fc": {},  # only ever a top: pycaffe leaves it unstyled
    }
    assert edges_of(graph) == [
        (DATA_L, "data", '""'),
        ("data", CONV_L, '""'), (CONV_L, "conv", "4"),
        ("conv", RELU_L, '""'), (RELU_L, "conv", '""'),  # in place: to and from its blob
        ("conv", POOL_L, '""'), (POOL_L, "pool", '""'),
        ("pool", UP_L, '""'), (UP_L, "up", "2"),
        ("up", FC_L, '""'), (FC_L, "fc", "3"),
    ]


def test_unnamed_net_and_unlabelled_edges():
    net = net_from(TINY)
    net.ClearField("name")
    graph = caffe.draw.get_pydot_graph(net, "LR", label_edges=False)
    assert graph.get_name() == "Net"
    assert {label for _, _, label in edges_of(graph)} == {'""'}


def test_blob_last_written_in_place_stays_unstyled():
    net = net_from(TINY + 'layer { name: "act" type: "Sigmoid" bottom: "fc" top: "fc" }')
    nodes = nodes_of(caffe.draw.get_pydot_graph(net, "LR"))
    assert nodes["fc"] == {}
    assert nodes[r'"act\n(Sigmoid)"'] == box("#90EE90")


@pytest.mark.parametrize("rankdir, conv1", [
    ("LR", r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"'),
    ("RL", r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"'),
    ("TB", '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'),
    ("BT", '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0"'),
])
def test_rankdir_sets_layout_and_label_separator(rankdir, conv1):
    graph = caffe.draw.get_pydot_graph(read_net_param(LENET), rankdir)
    assert graph.get("rankdir") == rankdir
    assert conv1 in nodes_of(graph)


LENET_LAYERS = [
    r'"mnist\n(Data)"',
    r'"conv1\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"',
    r'"pool1\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0"',
    r'"conv2\n(Convolution)\nkernel size: 5\nstride: 1\npad: 0"',
    r'"pool2\n(Pooling MAX)\nkernel size: 2\nstride: 2\npad: 0"',
    r'"ip1\n(InnerProduct)"', r'"relu1\n(ReLU)"', r'"ip2\n(InnerProduct)"',
    r'"accuracy\n(Accuracy)"', r'"loss\n(SoftmaxWithLoss)"',
]
LENET_BLOBS = ["data", "label", "conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "accuracy", "loss"]


def lenet_edges(batch_sizes, accuracy=True):
    mnist, conv1, pool1, conv2, pool2, ip1, relu1, ip2, acc, loss = LENET_LAYERS
    edges = [(mnist, top, f"Batch {size}") for size in batch_sizes for top in ("data", "label")]
    edges += [("data", conv1, '""'), (conv1, "conv1", "20"), ("conv1", pool1, '""'), (pool1, "pool1", '""'),
              ("pool1", conv2, '""'), (conv2, "conv2", "50"), ("conv2", pool2, '""'), (pool2, "pool2", '""'),
              ("pool2", ip1, '""'), (ip1, "ip1", "500"), ("ip1", relu1, '""'), (relu1, "ip1", '""'),
              ("ip1", ip2, '""'), (ip2, "ip2", "10"),
              ("ip2", loss, '""'), ("label", loss, '""'), (loss, "loss", '""')]
    if accuracy:
        edges += [("ip2", acc, '""'), ("label", acc, '""'), (acc, "accuracy", '""')]
    return Counter(edges)


@pytest.mark.parametrize("phase, batch_sizes, accuracy", [
    (None, (64, 100), True),  # both Data layers share one node ("mnist_Data"), with both edges
    (caffe.TRAIN, (64,), False),
    (caffe.TEST, (100,), True),
])
def test_lenet_graph_by_phase(phase, batch_sizes, accuracy):
    graph = caffe.draw.get_pydot_graph(read_net_param(LENET), "LR", phase=phase)
    layers = [name for name in LENET_LAYERS if accuracy or "accuracy" not in name]
    blobs = [name for name in LENET_BLOBS if accuracy or name != "accuracy"]
    assert sorted(nodes_of(graph)) == sorted(layers + blobs)
    assert len(graph.get_nodes()) == len(layers) + len(blobs)
    assert Counter(edges_of(graph)) == lenet_edges(batch_sizes, accuracy)
    nodes = nodes_of(graph)
    assert nodes["ip1"] == nodes["label"] == BLOB
    assert nodes["loss"] == {}


RULES = """
layer { name: "a" type: "Split" }
layer { name: "b" type: "Split" include { phase: TRAIN } }
layer { name: "c" type: "Split" include { phase: TEST } }
layer { name: "d" type: "Split" exclude { phase: TRAIN } }
layer { name: "e" type: "Split" exclude { phase: TEST } }
layer { name: "f" type: "Split" include { stage: "deploy" } }
layer { name: "g" type: "Split" include { phase: TRAIN } include { phase: TEST } }
"""


@pytest.mark.parametrize("phase, drawn", [
    (None, "abcdefg"),
    (caffe.TRAIN, "abefg"),  # a rule without a phase reads as TRAIN (the field's default)
    (caffe.TEST, "acdg"),
])
def test_phase_rules(phase, drawn):
    graph = caffe.draw.get_pydot_graph(net_from(RULES), "TB", phase=phase)
    assert sorted(nodes_of(graph)) == sorted(f'"{name} (Split)"' for name in drawn)


def test_include_and_exclude_together_fail_only_with_a_phase():
    net = net_from('layer { name: "x" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }')
    assert len(caffe.draw.get_pydot_graph(net, "LR").get_nodes()) == 1
    with pytest.raises(ValueError, match="layer x has both include and exclude specified."):
        caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TEST)


@pytest.mark.parametrize("text, rankdir, label", [
    ('name: "c" type: "Convolution" param { lr_mult: 0 } param { lr_mult: 0 }', "LR",
     r'"c\n(Convolution)\nkernel size: 1\nstride: 1\npad: 0"'),  # both zero: no line
    ('name: "d" type: "Deconvolution" param { lr_mult: 0 } param { lr_mult: 1 }', "LR",
     r'"d\n(Deconvolution)\nkernel size: 1\nstride: 1\npad: 0\nlr mult: 0.0, 1.0"'),
    ('name: "ip" type: "InnerProduct" param { lr_mult: 0.5 }', "LR", r'"ip\n(InnerProduct)\nlr mult: 0.5, 1.0"'),
    ('name: "ip" type: "InnerProduct" param { decay_mult: 2 }', "TB", '"ip (InnerProduct) lr mult: 1.0, 1.0"'),
    ('name: "ip" type: "InnerProduct"', "BT", '"ip (InnerProduct) lr mult: 1.0, 1.0"'),
    ('name: "r" type: "PReLU" param { lr_mult: 3 }', "LR", r'"r\n(PReLU)"'),
])
def test_display_lrm_labels(text, rankdir, label):
    assert caffe.draw.get_layer_label(layer_from(text), rankdir, display_lrm=True) == label


def test_lenet_display_lrm():
    graph = caffe.draw.get_pydot_graph(read_net_param(LENET), "TB", display_lrm=True)
    names = nodes_of(graph)
    assert '"conv1 (Convolution) kernel size: 5 stride: 1 pad: 0 lr mult: 1.0, 2.0"' in names
    assert '"ip2 (InnerProduct) lr mult: 1.0, 2.0"' in names
    assert '"relu1 (ReLU)"' in names


def test_lr_mult_errors():
    with pytest.raises(ValueError, match="ReLU layers do not have a learning rate multiplier"):
        caffe.draw.get_layer_lr_mult(layer_from('name: "r" type: "ReLU"'))
    three = layer_from('name: "c" type: "Convolution" param {} param {} param {}')
    with pytest.raises(ValueError, match="Could not parse the learning rate multiplier"):
        caffe.draw.get_layer_label(three, "LR", display_lrm=True)


def test_small_helpers():
    assert caffe.draw.get_pooling_types_dict() == {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}
    colors = {kind: caffe.draw.choose_color_by_layertype(kind)
              for kind in ("Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU")}
    assert colors == {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                      "InnerProduct": "#CC33FF", "ReLU": "#6495ED"}
    assert caffe.draw.get_edge_label(layer_from('type: "Data" data_param { batch_size: 64 }')) == "Batch 64"
    assert caffe.draw.get_edge_label(layer_from('type: "ReLU"')) == '""'
    pooling = layer_from('name: "p" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 pad: 1 }')
    assert caffe.draw.get_layer_label(pooling, "TB") == '"p (Pooling STOCHASTIC) kernel size: 3 stride: 1 pad: 1"'


@pytest.mark.parametrize("suffix", [".dot", ".gv", ".DOT"])
def test_dot_text_needs_no_graphviz(tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("PATH", str(tmp_path))
    net = read_net_param(LENET)
    path = tmp_path / f"lenet{suffix}"
    caffe.draw.draw_net_to_file(net, str(path), "TB", caffe.TEST, True)
    expected = caffe.draw.get_pydot_graph(net, "TB", phase=caffe.TEST, display_lrm=True).to_string()
    text = path.read_text(encoding="utf-8")
    assert text == expected
    assert text.startswith("digraph LeNet {\nrankdir=TB;\n")


def fake_dot(tmp_path, monkeypatch, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dot = bin_dir / "dot"
    dot.write_text("#!/bin/sh\n" + script)
    dot.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.defpath}")


@pytest.mark.skipif(os.name != "posix", reason="a shell-script stand-in for Graphviz")
def test_image_formats_go_through_dot(tmp_path, monkeypatch):
    fake_dot(tmp_path, monkeypatch, 'echo "rendered $1"\n')
    net = read_net_param(LENET)
    assert caffe.draw.draw_net(net, "LR") == b"rendered -Tpng\n"
    caffe.draw.draw_net_to_file(net, tmp_path / "lenet.svg")
    assert (tmp_path / "lenet.svg").read_bytes() == b"rendered -Tsvg\n"


@pytest.mark.skipif(os.name != "posix", reason="a shell-script stand-in for Graphviz")
def test_dot_failure_is_reported(tmp_path, monkeypatch):
    fake_dot(tmp_path, monkeypatch, "exit 1\n")
    out = tmp_path / "lenet.nope"
    with pytest.raises(caffe.draw.GraphvizFailedError, match="could not draw in nope format"):
        caffe.draw.draw_net_to_file(read_net_param(LENET), out)
    assert not out.exists()


def test_missing_graphviz_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    out = tmp_path / "lenet.png"
    with pytest.raises(caffe.draw.GraphvizMissingError) as info:
        caffe.draw.draw_net_to_file(read_net_param(LENET), out)
    assert isinstance(info.value, OSError)
    message = str(info.value)
    assert "\n" not in message and "Graphviz" in message and message.startswith(str(out))
    assert not out.exists()
    with pytest.raises(OSError, match="Graphviz"):
        caffe.draw.draw_net(read_net_param(LENET), "LR", "pdf")


@pytest.mark.parametrize("name", ["lenet", "lenet."])
def test_file_name_without_extension(tmp_path, name):
    with pytest.raises(RistrettoError, match="no extension"):
        caffe.draw.draw_net_to_file(read_net_param(LENET), tmp_path / name)


def test_missing_pydot(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pydot", None)  # makes ``import pydot`` fail
    out = tmp_path / "lenet.dot"
    with pytest.raises(ImportError, match=r"pip install pydot") as info:
        caffe.draw.draw_net_to_file(read_net_param(LENET), out)
    assert isinstance(info.value, RistrettoError)
    assert not out.exists()


def test_draw_net_file_reads_and_upgrades(tmp_path):
    v1 = test_data("models/lenet_v1/lenet_train_test.prototxt")
    caffe.draw.draw_net_file(v1, tmp_path / "v1.gv", rankdir="TB", phase="TEST", display_lrm=True)
    caffe.draw.draw_net_file(LENET, tmp_path / "v2.gv", "TB", caffe.TEST, True)
    text = (tmp_path / "v1.gv").read_text()
    assert text == (tmp_path / "v2.gv").read_text()
    assert '"ip1 (InnerProduct) lr mult: 1.0, 2.0"' in text and "Batch 64" not in text
    caffe.draw.draw_net_file(LENET, tmp_path / "all.dot", phase="ALL")
    all_text = (tmp_path / "all.dot").read_text()
    assert "rankdir=LR" in all_text and "Batch 64" in all_text and "Batch 100" in all_text
    with pytest.raises(RistrettoError, match="Unknown phase: BOTH"):
        caffe.draw.draw_net_file(LENET, tmp_path / "x.dot", phase="BOTH")


# pycaffe's test_draw.py draws every net prototxt of the source tree (here as DOT text).
NET_FILES = sorted(path for root in ("models", "examples", "tests/data/models")
                   for path in (REPO / root).rglob("*.prototxt") if "solver" not in path.name)


@pytest.mark.parametrize("path", NET_FILES, ids=lambda path: str(path.relative_to(REPO)))
def test_draw_included_nets(path, tmp_path):
    out = tmp_path / "net.dot"
    caffe.draw.draw_net_to_file(read_net_param(path), out, "LR")
    assert out.read_text().startswith("digraph ")


def test_the_draw_net_command_writes_what_the_function_writes(tmp_path, capsys):
    """``ristretto draw_net`` takes python/draw_net.py's arguments and says where it draws."""
    out = tmp_path / "cli.dot"
    code = main(["draw_net", str(LENET), str(out), "--rankdir", "TB", "--phase", "TEST", "--display_lrm"])
    assert code == 0 and f"Drawing net to {out}" in capsys.readouterr().out
    caffe.draw.draw_net_file(LENET, tmp_path / "api.dot", "TB", "TEST", True)
    assert out.read_text() == (tmp_path / "api.dot").read_text()
    code, lines = run_cli(capsys, "draw_net", str(LENET), str(tmp_path / "net.png"))
    if code:    # no Graphviz here: one line, nothing written
        assert code == 1 and len(lines) == 1 and "Graphviz" in lines[0]
        assert not (tmp_path / "net.png").exists()
