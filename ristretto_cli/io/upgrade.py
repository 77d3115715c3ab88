"""Caffe's legacy upgrade chain for nets and solvers (``upgrade_proto.cpp`` behaviour).

Every NetParameter read from a file goes through, in order: V0 -> V1 (incl. padding
layers), data-transformation fields -> ``transform_param``, V1 ``layers`` -> ``layer``,
``input``/``input_dim``/``input_shape`` -> an ``Input`` layer at position 0, and the
BatchNorm ``param`` fix. Solvers get ``solver_type`` -> ``type`` and the snapshot-prefix
rules. Log lines use Caffe's wording; what Caffe treats as fatal raises RistrettoError,
what it only logs as an error is logged and the upgrade goes on.
"""

from __future__ import annotations

import os

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# V0 layer type string -> V1 enum name.
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V1 enum name -> V2 type string.
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# V0 field -> {V0 layer type: (V1 sub-message, field)}; any other type logs an error.
# Repeated targets are appended to, message targets copied. Order = Caffe's order.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "scale": None, "meanfile": None,  # any type: transform_param (below)
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "cropsize": None, "mirror": None,
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("", "hdf5_output_param")},
}
_V0_TRANSFORM = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}
# Caffe's error log names this one field differently from the proto.
_V0_LOG_NAMES = {"shuffle_images": "shuffle"}

# Data layer kinds whose *_param carried the transformation fields before transform_param.
_DATA_UPGRADE = (("DATA", "data_param"), ("IMAGE_DATA", "image_data_param"),
                 ("WINDOW_DATA", "window_data_param"))
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

# Type-specific messages that V1 -> V2 copies verbatim (same name in LayerParameter).
_V1_PARAM_MESSAGES = tuple(
    f.name for f in V1.DESCRIPTOR.fields
    if f.message_type is not None and not f.is_repeated and f.name != "layer")
assert all(n in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name for n in _V1_PARAM_MESSAGES)

_SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                 "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def _v1_type(name: str) -> int:
    return V1.LayerType.Value(name)


# --- what needs upgrading ------------------------------------------------------------------

def net_needs_v0_to_v1_upgrade(net) -> bool:
    return any(l.HasField("layer") for l in net.layers)


def net_needs_data_upgrade(net) -> bool:
    for l in net.layers:
        for type_name, param in _DATA_UPGRADE:
            if l.type == _v1_type(type_name) and l.HasField(param):
                sub = getattr(l, param)
                if any(sub.HasField(f) for f in _TRANSFORM_FIELDS):
                    return True
    return False


def net_needs_v1_to_v2_upgrade(net) -> bool:
    return len(net.layers) > 0


def net_needs_input_upgrade(net) -> bool:
    return len(net.input) > 0


def net_needs_batchnorm_upgrade(net) -> bool:
    return any(l.type == "BatchNorm" and len(l.param) == 3 for l in net.layer)


def net_needs_upgrade(net) -> bool:
    """Whether any step of the upgrade chain would change ``net``."""
    return (net_needs_v0_to_v1_upgrade(net) or net_needs_v1_to_v2_upgrade(net)
            or net_needs_data_upgrade(net) or net_needs_input_upgrade(net)
            or net_needs_batchnorm_upgrade(net))


# --- V0 -> V1 ------------------------------------------------------------------------------

def _drop_padding_layers(net, path) -> list:
    """V0 ``padding`` layers folded into the conv/pool layer that consumes them."""
    last_top = {name: -1 for name in net.input}
    kept: list = []
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            copy = V1()
            copy.CopyFrom(conn)
            kept.append(copy)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise RistrettoError(f"Unknown blob input {blob} (bottom {j}): no net input or "
                                     "earlier layer produces it",
                                     path=path, layer=v0.name or None)
            source_index = last_top[blob]
            if source_index == -1:
                continue
            source = net.layers[source_index]
            if source.layer.type != "padding":
                continue
            if v0.type not in ("conv", "pool"):
                raise RistrettoError(
                    f"Padding layer input to non-convolutional / non-pooling layer type {v0.type}",
                    path=path, layer=v0.name or None)
            if len(conn.bottom) != 1:
                raise RistrettoError("Conv Layer takes a single blob as input.", path=path,
                                     layer=v0.name or None)
            if len(source.bottom) != 1:
                raise RistrettoError("Padding Layer takes a single blob as input.", path=path,
                                     layer=source.layer.name or None)
            if len(source.top) != 1:
                raise RistrettoError("Padding Layer produces a single blob as output.", path=path,
                                     layer=source.layer.name or None)
            kept[-1].layer.pad = source.layer.pad
            kept[-1].bottom[j] = source.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return kept


def _assign(target_msg, field_name: str, value) -> None:
    """Set, append to or copy into ``target_msg.field_name`` as its kind requires."""
    fd = target_msg.DESCRIPTOR.fields_by_name[field_name]
    if fd.message_type is not None:
        getattr(target_msg, field_name).CopyFrom(value)
    elif fd.is_repeated:
        getattr(target_msg, field_name).append(value)
    else:
        setattr(target_msg, field_name, value)


def _upgrade_v0_layer(conn, path):
    """One V0 layer -> V1; returns (V1LayerParameter, fully_compatible)."""
    out = V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    ok = True
    if not conn.HasField("layer"):
        return out, ok
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise RistrettoError(f"Unknown layer name: {kind} (not a V0 layer type)", path=path,
                                 layer=v0.name or None)
        out.type = _v1_type(V0_TYPES[kind])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for field, targets in _V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        value = getattr(v0, field)
        if targets is None:
            setattr(out.transform_param, _V0_TRANSFORM[field], value)
            continue
        if kind not in targets:
            logger.error("Unknown parameter %s for layer type %s",
                         _V0_LOG_NAMES.get(field, field), kind)
            ok = False
            continue
        sub_name, target_field = targets[kind]
        target = getattr(out, sub_name) if sub_name else out
        if field == "pool":
            value = caffe_pb2.PoolingParameter.PoolMethod.Value(
                caffe_pb2.V0LayerParameter.PoolMethod.Name(value))
        _assign(target, target_field, value)
    return out, ok


def _upgrade_v0_net(net, path) -> bool:
    layers = _drop_padding_layers(net, path)
    ok = True
    upgraded = []
    for conn in layers:
        layer, layer_ok = _upgrade_v0_layer(conn, path)
        upgraded.append(layer)
        ok &= layer_ok
    # Only name, input, input_dim and force_backward survive from a V0 net.
    kept = caffe_pb2.NetParameter()
    if net.HasField("name"):
        kept.name = net.name
    kept.layers.extend(upgraded)
    kept.input.extend(net.input)
    kept.input_dim.extend(net.input_dim)
    if net.HasField("force_backward"):
        kept.force_backward = net.force_backward
    net.CopyFrom(kept)
    return ok


# --- data transformation fields ------------------------------------------------------------

def _upgrade_data_transformation(net) -> None:
    for l in net.layers:
        for type_name, param in _DATA_UPGRADE:
            if l.type != _v1_type(type_name):
                continue
            # Caffe reaches both messages through mutable_*(), so both become present.
            source = getattr(l, param)
            source.SetInParent()
            transform = l.transform_param
            transform.SetInParent()
            for f in _TRANSFORM_FIELDS:
                if source.HasField(f):
                    setattr(transform, f, getattr(source, f))
                    source.ClearField(f)


# --- V1 -> V2 ------------------------------------------------------------------------------

def _upgrade_v1_layer(v1):
    """One V1 ``layers`` entry -> ``LayerParameter``; returns (layer, fully_compatible)."""
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPES[V1.LayerType.Name(v1.type)]
    layer.blobs.extend(v1.blobs)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAM_MESSAGES:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    ok = True
    if v1.HasField("layer"):
        logger.error("Input NetParameter has V0 layer -- ignoring.")
        ok = False
    return layer, ok


def _upgrade_v1_net(net, path) -> bool:
    if len(net.layer) > 0:
        raise RistrettoError(
            "Refusing to upgrade inconsistent NetParameter input; the definition includes both "
            "'layer' and 'layers' fields. The current format defines 'layer' fields with string "
            "type like layer { type: 'Layer' ... } and not layers { type: LAYER ... }. Manually "
            "switch the definition to 'layer' format to continue.", path=path)
    ok = True
    upgraded = []
    for i, v1 in enumerate(net.layers):
        layer, layer_ok = _upgrade_v1_layer(v1)
        if not layer_ok:
            logger.error("Upgrade of input layer %d failed.", i)
            ok = False
        upgraded.append(layer)
    net.ClearField("layers")
    net.layer.extend(upgraded)
    return ok


# --- input fields, BatchNorm ----------------------------------------------------------------

def _upgrade_input(net, path) -> None:
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        n = len(net.input)
        if has_shape and len(net.input_shape) < n:
            raise RistrettoError(f"{n} net input(s) but only {len(net.input_shape)} "
                                 "input_shape entries", path=path)
        if not has_shape and len(net.input_dim) < 4 * n:
            raise RistrettoError(f"{n} net input(s) need {4 * n} input_dim values, found "
                                 f"{len(net.input_dim)}", path=path)
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, top in enumerate(net.input):
            layer.top.append(top)
            shape = layer.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        # The Input layer goes first; the others keep their order.
        net.layer.insert(0, layer)
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


def _upgrade_batchnorm(net) -> None:
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0


# --- public entry points --------------------------------------------------------------------

def upgrade_net_as_needed(net, path=None) -> bool:
    """Run the whole chain on ``net`` in place; False when some V0/V1 content could not be
    carried over (logged as errors, as Caffe does). Conflicts raise RistrettoError."""
    where = "" if path is None else str(path)
    ok = True
    if net_needs_v0_to_v1_upgrade(net):
        logger.info("Attempting to upgrade input file specified using deprecated "
                    "V0LayerParameter: %s", where)
        if not _upgrade_v0_net(net, path):
            ok = False
            logger.error("Warning: had one or more problems upgrading V0NetParameter to "
                         "NetParameter (see above); continuing anyway.")
        else:
            logger.info("Successfully upgraded file specified using deprecated V0LayerParameter")
        logger.warning("Note that future Caffe releases will not support V0NetParameter; use "
                       "ristretto upgrade_net_proto_text for prototxt and ristretto "
                       "upgrade_net_proto_binary for model weights upgrade this and any other "
                       "net protos to the new format.")
    if net_needs_data_upgrade(net):
        logger.info("Attempting to upgrade input file specified using deprecated "
                    "transformation parameters: %s", where)
        _upgrade_data_transformation(net)
        logger.info("Successfully upgraded file specified using deprecated data "
                    "transformation parameters.")
        logger.warning("Note that future Caffe releases will only support transform_param "
                       "messages for transformation fields.")
    if net_needs_v1_to_v2_upgrade(net):
        logger.info("Attempting to upgrade input file specified using deprecated "
                    "V1LayerParameter: %s", where)
        if not _upgrade_v1_net(net, path):
            ok = False
            logger.error("Warning: had one or more problems upgrading V1LayerParameter (see "
                         "above); continuing anyway.")
        else:
            logger.info("Successfully upgraded file specified using deprecated V1LayerParameter")
    if net_needs_input_upgrade(net):
        logger.info("Attempting to upgrade input file specified using deprecated input "
                    "fields: %s", where)
        _upgrade_input(net, path)
        logger.info("Successfully upgraded file specified using deprecated input fields.")
        logger.warning("Note that future Caffe releases will only support input layers and "
                       "not input fields.")
    if net_needs_batchnorm_upgrade(net):
        logger.info("Attempting to upgrade batch norm layers using deprecated params: %s", where)
        _upgrade_batchnorm(net)
        logger.info("Successfully upgraded batch norm layers using deprecated params.")
    return ok


def upgrade_net(net, path=None):
    """Upgrade ``net`` in place to the current format and return it (see module doc)."""
    upgrade_net_as_needed(net, path)
    return net


# --- solver ----------------------------------------------------------------------------------

def _boost_split_extension(filename: str) -> tuple[str, str]:
    """(stem, extension) with boost::filesystem v3 rules (``.bashrc`` is all extension)."""
    if filename in (".", "..") or "." not in filename:
        return filename, ""
    cut = filename.rindex(".")
    return filename[:cut], filename[cut:]


def upgrade_solver_type(solver, path) -> bool:
    """``solver_type`` (enum) -> ``type`` (string) in place; True when there was one to
    upgrade. ``path`` (the solver file) only names it in the log."""
    where = "" if path is None else str(path)
    if solver.HasField("solver_type"):
        logger.info("Attempting to upgrade input file specified using deprecated "
                    "'solver_type' field (enum)': %s", where)
        if solver.HasField("type"):
            raise RistrettoError(
                "Failed to upgrade solver: old solver_type field (enum) and new type field "
                "(string) cannot be both specified in solver proto text.", path=path)
        name = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
        solver.type = _SOLVER_TYPES[name]
        solver.ClearField("solver_type")
        logger.info("Successfully upgraded file specified using deprecated 'solver_type' field "
                    "(enum) to 'type' field (string).")
        logger.warning("Note that future Caffe releases will only support 'type' field "
                       "(string) for a solver's type.")
        return True
    return False


def upgrade_solver(solver, path):
    """``solver_type`` -> ``type`` and the snapshot-prefix rules; modifies and returns
    ``solver``. ``path`` is the solver file (its name decides the default prefix)."""
    upgrade_solver_type(solver, path)
    if path is not None:
        path = os.fspath(path)
        stem, extension = _boost_split_extension(os.path.basename(path))
        if not solver.HasField("snapshot_prefix"):
            solver.snapshot_prefix = path[:len(path) - len(extension)]
            logger.info("snapshot_prefix was not specified and is set to %s", solver.snapshot_prefix)
        elif os.path.isdir(solver.snapshot_prefix):
            # boost's `dir / ""` appends nothing (os.path.join would add a separator).
            if stem:
                solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)
            logger.info("snapshot_prefix was a directory and is replaced to %s",
                        solver.snapshot_prefix)
    return solver
