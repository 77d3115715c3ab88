"""Layer registry keyed by the prototxt ``type`` string, as Caffe's LayerRegistry."""

from __future__ import annotations

from ristretto_cli.errors import RistrettoError

LAYER_TYPES: dict[str, type] = {}


def register(*type_names: str):
    """Class decorator: ``@register("ReLU")`` makes the class the implementation of that type."""

    def deco(cls):
        for name in type_names:
            if name in LAYER_TYPES:
                raise RuntimeError(f"layer type {name!r} registered twice")
            LAYER_TYPES[name] = cls
        if not cls.__dict__.get("type"):
            cls.type = type_names[0]
        return cls

    return deco


def layer_class(type_name: str, layer_name: str = "") -> type:
    cls = LAYER_TYPES.get(type_name)
    if cls is None:
        known = ", ".join(sorted(LAYER_TYPES))
        raise RistrettoError(f"unknown layer type '{type_name}' (known types: {known})",
                             layer=layer_name or None)
    return cls


def create_layer(param, **kwargs):
    """Instantiate the layer for ``param.type``; unknown types list the known ones."""
    return layer_class(param.type, param.name)(param, **kwargs)
