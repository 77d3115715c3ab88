"""Layer implementations, one family per module; importing this package registers them all."""

from __future__ import annotations

import importlib
import pkgutil

from ristretto_cli.layers.base import TEST, TRAIN, Layer
from ristretto_cli.layers.registry import LAYER_TYPES, create_layer, layer_class, register

# Every module of the package defines and registers one family of layers.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LAYER_TYPES", "Layer", "TEST", "TRAIN", "create_layer", "layer_class", "register"]
