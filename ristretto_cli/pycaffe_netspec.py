"""pycaffe's net specification (``caffe.NetSpec``, ``caffe.layers``, ``caffe.params``,
``caffe.to_proto``): nets written as Python calls, turned into a NetParameter.

    from ristretto_cli.pycaffe import layers as L, params as P, NetSpec
    n = NetSpec()
    n.data, n.label = L.Data(batch_size=64, backend=P.Data.LMDB, source='train_lmdb',
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type='xavier'))
    n.relu1 = L.ReLU(n.conv1, in_place=True)
    open('net.prototxt', 'w').write(str(n.to_proto()))

A layer call takes its bottoms as positional arguments and its fields as keywords:
``ntop`` (number of tops, default 1), ``in_place`` (the top is the bottom), fields of
LayerParameter (``name``, ``param``, ``loss_weight``, ``include``, any ``*_param``), and
fields of the layer type's own parameter message (``kernel_size`` -> ``convolution_param``).
Dicts fill messages, lists fill repeated fields. Layers and tops are named after the
NetSpec attributes they are assigned to, else after their type and a count (``Convolution1``).
"""

from __future__ import annotations

from collections import Counter, OrderedDict

from ristretto_cli.proto import caffe_pb2

__all__ = ["NetSpec", "Top", "layers", "params", "to_proto"]


def _param_fields() -> dict[str, str]:
    """Layer type -> the LayerParameter field of its parameters (``Convolution`` ->
    ``convolution_param``), from the fields' message types (``ConvolutionParameter``)."""
    fields = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        message = field.message_type
        if field.name.endswith("_param") and message is not None and message.name.endswith("Parameter"):
            fields[message.name[:-len("Parameter")]] = field.name
    return fields


_PARAM_FIELDS = _param_fields()


def _assign(message, name: str, value) -> None:
    """``message.name = value``: a dict fills a sub-message, a list (or one value, for a
    repeated field) extends a repeated field, a list of dicts adds sub-messages."""
    target = getattr(message, name)
    repeated = hasattr(target, "extend")
    if repeated and not isinstance(value, (list, tuple)):
        value = [value]
    if isinstance(value, (list, tuple)):
        if value and isinstance(value[0], dict):
            for item in value:
                entry = target.add()
                for key, v in item.items():
                    _assign(entry, key, v)
        else:
            target.extend(value)
    elif isinstance(value, dict):
        for key, v in value.items():
            _assign(target, key, v)
    else:
        setattr(message, name, value)


class Top:
    """One output of a layer call: what later calls take as a bottom."""

    def __init__(self, fn: _Function, index: int):
        self.fn = fn
        self.index = index

    @property
    def n(self) -> int:
        """pycaffe's name for ``index``."""
        return self.index

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The net of every layer this top depends on."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames) -> None:
        self.fn._to_proto(layers, names, autonames)


class _Function:
    """One layer call: its type, bottoms (tops of earlier calls) and fields."""

    def __init__(self, type_name: str, inputs, fields: dict):
        self.type_name = type_name
        self.inputs = tuple(inputs)
        fields = dict(fields)
        self.ntop = fields.pop("ntop", 1)
        self.in_place = fields.pop("in_place", False)
        self.fields = fields
        for i, bottom in enumerate(self.inputs):
            if not isinstance(bottom, Top):
                # pycaffe's exact text: its own tests match it
                raise TypeError(f"{type_name} input {i} is not a Top (type is {type(bottom)})")
        self.tops = tuple(Top(self, i) for i in range(self.ntop))

    @property
    def params(self) -> dict:
        """pycaffe's name for ``fields`` (the same dict: editing it edits the layer)."""
        return self.fields

    @staticmethod
    def _auto_name(key, type_name: str, names: dict, autonames: Counter) -> str:
        if key not in names:
            autonames[type_name] += 1
            names[key] = f"{type_name}{autonames[type_name]}"
        return names[key]

    def _name(self, names: dict, autonames: Counter) -> str:
        """The layer's name: its first top's, or (no tops) its type and a count."""
        if self.ntop > 0:
            return self._top_name(self.tops[0], names, autonames)
        return self._auto_name(self, self.type_name, names, autonames)

    def _top_name(self, top: Top, names: dict, autonames: Counter) -> str:
        return self._auto_name(top, self.type_name, names, autonames)

    def _to_proto(self, layers: OrderedDict, names: dict, autonames: Counter) -> None:
        if self in layers:
            return
        bottoms = []
        for bottom in self.inputs:
            bottom._to_proto(layers, names, autonames)
            bottoms.append(layers[bottom.fn].top[bottom.index])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._top_name(top, names, autonames) for top in self.tops)
        layer.name = self._name(names, autonames)
        own = _PARAM_FIELDS.get(self.type_name)
        for key, value in self.fields.items():
            if key.endswith("param") or own is None or not hasattr(getattr(layer, own), key):
                _assign(layer, key, value)      # a LayerParameter field (or a whole *_param)
            else:
                _assign(getattr(layer, own), key, value)
        layers[self] = layer


class NetSpec:
    """Tops assigned as attributes (or items), in order; ``to_proto`` builds the net, naming
    each layer and top after the attribute it was assigned to."""

    def __init__(self):
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name: str, value) -> None:
        self.tops[name] = value

    def __getattr__(self, name: str):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setitem__(self, key: str, value) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, key: str):
        return self.__getattr__(key)

    def __delitem__(self, key: str) -> None:
        del self.tops[key]

    def keys(self) -> list[str]:
        return list(self.tops)

    def vals(self) -> list:
        return list(self.tops.values())

    def to_proto(self) -> caffe_pb2.NetParameter:
        names = {top: name for name, top in self.tops.items()}
        autonames: Counter = Counter()
        layers: OrderedDict = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """The net of every layer the given tops depend on, named by type and count."""
    layers: OrderedDict = OrderedDict()
    autonames: Counter = Counter()
    for top in tops:
        top._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class _Layers:
    """``layers.Convolution(bottom, ...)``: a layer call of that type; its top, its tops
    (``ntop`` > 1), or the call itself (``ntop=0``)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer(*bottoms, **fields):
            fn = _Function(type_name, bottoms, fields)
            if fn.ntop == 0:
                return fn
            return fn.tops[0] if fn.ntop == 1 else fn.tops
        layer.__name__ = type_name
        return layer


class _Params:
    """``params.Pooling.MAX``: the enum values of ``PoolingParameter`` (and so on)."""

    def __getattr__(self, type_name: str):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        message = getattr(caffe_pb2, f"{type_name}Parameter", None)
        if message is None:
            raise AttributeError(f"caffe.proto has no {type_name}Parameter")
        return message


#: pycaffe's names of the classes.
Function, Layers, Parameters = _Function, _Layers, _Params

layers = _Layers()
params = _Params()
