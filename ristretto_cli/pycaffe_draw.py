"""pycaffe's ``caffe.draw``: a NetParameter as a Graphviz graph, through the optional ``pydot``.

    from ristretto_cli import pycaffe as caffe
    from ristretto_cli.io import read_net_param
    net = read_net_param("lenet_train_test.prototxt")  # a NetParameter
    caffe.draw.draw_net_to_file(net, "lenet.png", "LR", phase=caffe.TEST)

One box per layer (name, type, kernel/stride/pad of Convolution, Deconvolution and Pooling),
coloured by type; one node per blob; edges bottom -> layer -> top, the top edges labelled with
the batch size or the number of outputs. An in-place layer (one bottom, one top, the same
blob) is a green box between two edges to and from its blob.

Rendering (``draw_net``, and ``draw_net_to_file`` for image formats) runs Graphviz's ``dot``
program. Beyond pycaffe, ``draw_net_to_file`` writes a ``.dot`` or ``.gv`` file as the DOT text
itself, without Graphviz; ``draw_net_file`` draws a prototxt file as python/draw_net.py does.
"""

from __future__ import annotations

import errno
import os

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import atomic_write_bytes, read_net_param
from ristretto_cli.proto import caffe_pb2

__all__ = ["BLOB_STYLE", "LAYER_STYLE_DEFAULT", "NEURON_LAYER_STYLE", "choose_color_by_layertype",
           "draw_net", "draw_net_file", "draw_net_to_file", "get_edge_label", "get_layer_label",
           "get_layer_lr_mult", "get_pooling_types_dict", "get_pydot_graph"]

#: Node attributes of a layer box (``fillcolor`` is replaced by the type's colour).
LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
#: Node attributes of an in-place layer's box.
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
#: Node attributes of a blob read by a layer.
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}

_LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                 "InnerProduct": "#CC33FF"}
_LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")
_SPATIAL_LAYERS = ("Convolution", "Deconvolution", "Pooling")
_DOT_TEXT_EXTENSIONS = ("dot", "gv")
_PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST, "ALL": None}


class PydotMissingError(RistrettoError, ImportError):
    """pydot, the optional package that builds the graph, is not installed."""


class GraphvizMissingError(RistrettoError, OSError):
    """Graphviz's ``dot`` program, which renders the graph, is not on PATH."""


class GraphvizFailedError(RistrettoError, AssertionError):
    """``dot`` ran and failed (where pydot asserts), e.g. on a format it cannot write."""


def _pydot():
    try:
        import pydot
    except ImportError:
        raise PydotMissingError("caffe.draw needs the pydot package: pip install pydot "
                                "(or pip install 'ristretto-cli[draw]')") from None
    return pydot


def get_pooling_types_dict() -> dict[int, str]:
    """Pooling method number -> name (``{0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}``)."""
    descriptor = caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR
    return {value.number: name for name, value in descriptor.values_by_name.items()}


def get_edge_label(layer) -> str:
    """The label of the edges from ``layer`` to its tops: batch size or number of outputs."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return '""'


def get_layer_lr_mult(layer) -> tuple[float, float]:
    """The learning-rate multipliers of the weights and the bias of a Convolution,
    Deconvolution or InnerProduct layer (1.0 where no ``param`` gives one)."""
    if layer.type not in _LEARNING_LAYERS:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = layer.param
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    multipliers = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return multipliers[0], multipliers[1]


def get_layer_label(layer, rankdir: str, display_lrm: bool = False) -> str:
    """The text of a layer's box, in double quotes (so that DOT keeps the colons).

    Parts go on separate lines when the graph runs horizontally, else on one line.
    """
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    if layer.type == "Pooling":
        kind = f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})"
    else:
        kind = f"({layer.type})"
    parts = [layer.name, kind]
    if layer.type in _SPATIAL_LAYERS:
        if layer.type == "Pooling":
            pooling = layer.pooling_param
            kernel_size, stride, pad = pooling.kernel_size, pooling.stride, pooling.pad
        else:
            # pycaffe shows only the first value of each repeated field (kernel_h/w are not read)
            conv = layer.convolution_param
            kernel_size = conv.kernel_size[0] if len(conv.kernel_size) else 1
            stride = conv.stride[0] if len(conv.stride) else 1
            pad = conv.pad[0] if len(conv.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel_size:d}", f"stride: {stride:d}",
                                     f"pad: {pad:d}"]))
    if display_lrm and layer.type in _LEARNING_LAYERS:
        weights_lr_mult, bias_lr_mult = get_layer_lr_mult(layer)
        if weights_lr_mult or bias_lr_mult:
            parts.append(f"lr mult: {weights_lr_mult:.1f}, {bias_lr_mult:.1f}")
    return '"' + separator.join(parts) + '"'


def choose_color_by_layertype(layertype: str) -> str:
    """The fill colour of a layer box of type ``layertype``."""
    return _LAYER_COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def _in_phase(layer, phase) -> bool:
    """pycaffe's rule: no ``include`` means included; any ``include`` rule of ``phase`` adds
    the layer, any ``exclude`` rule of ``phase`` removes it. Only the rules' ``phase`` field
    counts (a rule without one reads as TRAIN, the field's default)."""
    if layer.include and layer.exclude:
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not layer.include or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(caffe_net, rankdir: str, label_edges: bool = True, phase=None,
                    display_lrm: bool = False):
    """The ``pydot.Dot`` graph of a NetParameter.

    ``phase`` (``caffe.TRAIN`` or ``caffe.TEST``) leaves out the layers whose include/exclude
    rules do not match it; None draws every layer. ``label_edges=False`` leaves the edges
    unlabelled; ``display_lrm`` adds the learning-rate multipliers to the learning layers.
    """
    pydot = _pydot()
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    # Insertion order is drawing order; a blob's node takes the style of its last mention
    # (a blob only ever written, such as the loss, stays unstyled), as in pycaffe.
    nodes = {}
    edges = []
    for layer in caffe_net.layer:
        if phase is not None and not _in_phase(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        layer_key = ("layer", layer.name, layer.type)
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        if in_place:
            nodes[layer_key] = pydot.Node(label, **NEURON_LAYER_STYLE)
        else:
            style = dict(LAYER_STYLE_DEFAULT, fillcolor=choose_color_by_layertype(layer.type))
            nodes[layer_key] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes["blob", bottom] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((("blob", bottom), layer_key, '""'))
        top_label = get_edge_label(layer) if label_edges else '""'
        for top in layer.top:
            nodes["blob", top] = pydot.Node(top)
            edges.append((layer_key, ("blob", top), top_label))
    for node in nodes.values():
        graph.add_node(node)
    for source, destination, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[destination], label=label))
    return graph


def _render(graph, ext: str) -> bytes:
    try:
        return graph.create(format=ext)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise GraphvizMissingError(
                f"drawing in {ext} format needs Graphviz's dot program on PATH "
                "(a .dot or .gv file needs no Graphviz)") from None
        raise
    except AssertionError:
        raise GraphvizFailedError(f"Graphviz's dot could not draw in {ext} format") from None


def draw_net(caffe_net, rankdir: str, ext: str = "png", phase=None, display_lrm: bool = False) -> bytes:
    """The net drawn by Graphviz in format ``ext`` ('png', 'svg', 'pdf', ...), as bytes."""
    return _render(get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm), ext)


def draw_net_to_file(caffe_net, filename, rankdir: str = "LR", phase=None,
                     display_lrm: bool = False) -> None:
    """Draw the net into ``filename``, in the format its extension names.

    ``.dot`` and ``.gv`` get the graph's DOT text, without running Graphviz; any other
    extension is a Graphviz output format. The file is written only once the drawing is done.
    """
    filename = os.fspath(filename)
    base = os.path.basename(filename)
    ext = base.rpartition(".")[2] if "." in base else ""
    if not ext:
        raise RistrettoError("the file name has no extension to give the format "
                             "(.png, .svg, .pdf, .dot, ...)", path=filename)
    if ext.lower() in _DOT_TEXT_EXTENSIONS:
        graph = get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm)
        data = graph.to_string().encode("utf-8")
    else:
        try:
            data = draw_net(caffe_net, rankdir, ext, phase, display_lrm)
        except (GraphvizMissingError, GraphvizFailedError) as exc:
            raise exc.located(path=filename) from None
    atomic_write_bytes(filename, data)


def draw_net_file(input_net_proto_file, output_image_file, rankdir: str = "LR", phase=None,
                  display_lrm: bool = False) -> None:
    """python/draw_net.py: draw a net definition file (legacy formats are upgraded).

    ``phase`` is 'TRAIN', 'TEST', 'ALL' or None (every layer), or ``caffe.TRAIN``/``TEST``.
    """
    if isinstance(phase, str):
        if phase not in _PHASES:
            raise RistrettoError(f"Unknown phase: {phase} (TRAIN, TEST or ALL)")
        phase = _PHASES[phase]
    net = read_net_param(input_net_proto_file)
    draw_net_to_file(net, output_image_file, rankdir, phase, display_lrm)
