"""Building the solver's train and test nets and loading fine-tuning weights (Caffe's
Solver::InitTrainNet / InitTestNets and LoadNetWeights)."""

from __future__ import annotations

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.net import TEST, TRAIN, Net
from ristretto_cli.proto import caffe_pb2

_TRAIN_FIELDS = ("net", "net_param", "train_net", "train_net_param")


def _read_net(path: str) -> caffe_pb2.NetParameter:
    from ristretto_cli.io import read_net_param
    return read_net_param(path)


def _embedded(net_param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """A copy of a net given inside the solver file, upgraded like a net file would be."""
    from ristretto_cli.io import upgrade_net
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net_param)
    upgrade_net(out)
    return out


def _set_state(net_param, phase: int, extra: caffe_pb2.NetState | None) -> None:
    """Solver default phase, then the net's own state, then the solver's state (MergeFrom:
    set scalars overwrite, stages append)."""
    state = caffe_pb2.NetState(phase=phase)
    state.MergeFrom(net_param.state)
    if extra is not None:
        state.MergeFrom(extra)
    net_param.state.CopyFrom(state)


def net_seed(seed: int, *tag: int) -> int:
    """A seed for one net's construction (fillers), derived from the solver's seed."""
    return int(np.random.SeedSequence([seed, *tag]).generate_state(2, np.uint64)[0] >> 1)


def build_train_net(param, *, semantics: str, seed: int) -> Net:
    given = [f for f in _TRAIN_FIELDS if param.HasField(f)]
    if not given:
        raise RistrettoError("SolverParameter must specify a train net using one of these "
                             "fields: " + ", ".join(_TRAIN_FIELDS))
    if len(given) > 1:
        raise RistrettoError("SolverParameter must not contain more than one of these fields "
                             "specifying a train_net: " + ", ".join(given))
    field = given[0]
    if field == "train_net_param":
        logger.info("Creating training net specified in train_net_param.")
        net_param = _embedded(param.train_net_param)
    elif field == "train_net":
        logger.info("Creating training net from train_net file: %s", param.train_net)
        net_param = _read_net(param.train_net)
    elif field == "net_param":
        logger.info("Creating training net specified in net_param.")
        net_param = _embedded(param.net_param)
    else:
        logger.info("Creating training net from net file: %s", param.net)
        net_param = _read_net(param.net)
    _set_state(net_param, TRAIN, param.train_state if param.HasField("train_state") else None)
    net = Net(net_param, semantics=semantics, seed=net_seed(seed, 0), verbose=True)
    for model_list in param.weights:
        load_weights(net, model_list)
    return net


def build_test_nets(param, *, semantics: str, seed: int) -> list[Net]:
    generic = param.HasField("net") + param.HasField("net_param")
    if generic > 1:
        raise RistrettoError("Both net_param and net file may not be specified.")
    explicit = len(param.test_net_param) + len(param.test_net)
    if (len(param.test_iter) < explicit) if generic else (len(param.test_iter) != explicit):
        raise RistrettoError(f"test_iter must be specified for each test network ({explicit} "
                             f"test net(s), {len(param.test_iter)} test_iter value(s))")
    instances = len(param.test_iter) if generic else explicit
    if len(param.test_state) and len(param.test_state) != instances:
        raise RistrettoError("test_state must be unspecified or specified once per test net "
                             f"({instances} test net(s), {len(param.test_state)} test_state(s))")
    if instances and param.test_interval <= 0:
        raise RistrettoError("test nets need test_interval > 0")
    sources: list[tuple[str, caffe_pb2.NetParameter]] = []
    for p in param.test_net_param:
        sources.append(("test_net_param", _embedded(p)))
    for path in param.test_net:
        sources.append((f"test_net file: {path}", _read_net(path)))
    remaining = instances - len(sources)
    if param.HasField("net_param"):
        sources += [("net_param", _embedded(param.net_param)) for _ in range(remaining)]
    elif param.HasField("net"):
        sources += [(f"net file: {param.net}", _read_net(param.net)) for _ in range(remaining)]
    nets = []
    for i, (source, net_param) in enumerate(sources):
        _set_state(net_param, TEST, param.test_state[i] if len(param.test_state) else None)
        logger.info("Creating test net (#%d) specified by %s", i, source)
        net = Net(net_param, semantics=semantics, seed=net_seed(seed, 1 + i), verbose=True)
        for model_list in param.weights:
            load_weights(net, model_list)
        nets.append(net)
    return nets


def load_weights(net: Net, model_list: str) -> None:
    """Copy the layers of each comma-separated weights file in turn (later files win)."""
    from ristretto_cli.io import read_weights
    for name in model_list.split(","):
        name = name.strip()
        if not name:
            raise RistrettoError(f"empty file name in the weights list '{model_list}'")
        logger.info("Finetuning from %s", name)
        net.copy_trained_layers_from(read_weights(name), path=name)
