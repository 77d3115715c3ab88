"""NetState filtering and automatic Split insertion: pure NetParameter -> NetParameter steps."""

from __future__ import annotations

from collections import defaultdict

from ristretto_cli.errors import RistrettoError
from ristretto_cli.log import logger
from ristretto_cli.proto import caffe_pb2


def state_meets_rule(state: caffe_pb2.NetState, rule: caffe_pb2.NetStateRule, layer_name: str,
                     say=logger.debug) -> bool:
    """Caffe's StateMeetsRule: every condition the rule sets must hold. ``say`` gets Caffe's
    line for the first condition that fails (its wording, 'above the min_level' included)."""
    where = f"specified by a rule in layer {layer_name}"
    if rule.HasField("phase") and rule.phase != state.phase:
        say("The NetState phase (%d) differed from the phase (%d) %s", state.phase, rule.phase, where)
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        say("The NetState level (%d) is above the min_level (%d) %s", state.level, rule.min_level, where)
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        say("The NetState level (%d) is above the max_level (%d) %s", state.level, rule.max_level, where)
        return False
    stages = set(state.stage)
    for stage in rule.stage:
        if stage not in stages:
            say("The NetState did not contain stage '%s' %s", stage, where)
            return False
    for stage in rule.not_stage:
        if stage in stages:
            say("The NetState contained a not_stage '%s' %s", stage, where)
            return False
    return True


def filter_net(param: caffe_pb2.NetParameter, state: caffe_pb2.NetState,
               say=logger.debug) -> caffe_pb2.NetParameter:
    """The layers of ``param`` that the state includes (Caffe's FilterNet), with ``state`` as
    the result's state; ``say`` gets the lines of the rules that exclude a layer."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    out.state.CopyFrom(state)
    del out.layer[:]
    for layer in param.layer:
        if len(layer.include) and len(layer.exclude):
            raise RistrettoError("specify either include rules or exclude rules; not both",
                                 layer=layer.name)
        if len(layer.include):
            keep = any(state_meets_rule(state, r, layer.name, say) for r in layer.include)
        else:
            keep = not any(state_meets_rule(state, r, layer.name, say) for r in layer.exclude)
        if keep:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name: str, blob_name: str, top_index: int) -> str:
    return f"{blob_name}_{layer_name}_{top_index}_split"


def split_blob_name(layer_name: str, blob_name: str, top_index: int, split_index: int) -> str:
    return f"{blob_name}_{layer_name}_{top_index}_split_{split_index}"


def insert_splits(param: caffe_pb2.NetParameter) -> caffe_pb2.NetParameter:
    """Give every blob read by several layers (or read and used as a loss) a Split layer.

    Follows Caffe's InsertSplits: consumers are counted per producing (layer, top) — an
    in-place layer is a new producer of its blob — and a top with an explicit non-zero
    loss weight counts as one more consumer, its weight moving to the split's first top.
    """
    last_producer: dict[str, tuple[int, int]] = {}
    source_of_bottom: dict[tuple[int, int], tuple[int, int]] = {}
    consumer_count: dict[tuple[int, int], int] = defaultdict(int)
    loss_weight: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(param.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_producer:
                raise RistrettoError(f"unknown bottom blob '{name}' (bottom index {j})", layer=layer.name)
            source = last_producer[name]
            source_of_bottom[(i, j)] = source
            consumer_count[source] += 1
        for j, name in enumerate(layer.top):
            last_producer[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            loss_weight[(i, j)] = layer.loss_weight[j]
            if layer.loss_weight[j] != 0:
                consumer_count[(i, j)] += 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    next_split_index: dict[tuple[int, int], int] = defaultdict(int)
    for i, layer in enumerate(param.layer):
        new_layer = out.layer.add()
        new_layer.CopyFrom(layer)
        for j, name in enumerate(layer.bottom):
            source = source_of_bottom[(i, j)]
            if consumer_count[source] > 1:
                src_layer = param.layer[source[0]].name
                k = next_split_index[source]
                next_split_index[source] += 1
                new_layer.bottom[j] = split_blob_name(src_layer, name, source[1], k)
        for j, name in enumerate(layer.top):
            n = consumer_count[(i, j)]
            if n <= 1:
                continue
            split = out.layer.add()
            split.name = split_layer_name(layer.name, name, j)
            split.type = "Split"
            split.bottom.append(name)
            w = loss_weight.get((i, j), 0.0)
            for k in range(n):
                split.top.append(split_blob_name(layer.name, name, j, k))
                if w != 0:
                    split.loss_weight.append(w if k == 0 else 0.0)
            if w != 0:
                del new_layer.loss_weight[:]
                next_split_index[(i, j)] += 1
    return out
