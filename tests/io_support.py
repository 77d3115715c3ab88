"""Helpers shared by the test_io_* modules."""

from __future__ import annotations

import numpy as np
from log_support import capture_log, run_cli  # noqa: E402,F401  (re-exported)


def flatten(msg, prefix: str = "") -> dict[str, object]:
    """Every set field of a message as {path: value}, repeated entries by index (e.g.
    ``layer[2].convolution_param.num_output``); a present but empty message is ``"{}"``."""
    out: dict[str, object] = {}
    for field, value in msg.ListFields():
        if field.message_type is not None:
            items = list(value) if field.is_repeated else [value]
            for i, sub in enumerate(items):
                if field.is_repeated:
                    key = f"{prefix}{field.name}[{i}]"
                else:
                    key = f"{prefix}{field.name}"
                if not sub.ListFields():
                    out[key] = "{}"
                out.update(flatten(sub, key + "."))
        elif field.is_repeated:
            for i, v in enumerate(value):
                out[f"{prefix}{field.name}[{i}]"] = v
        else:
            out[prefix + field.name] = value
    return out


def bits(array) -> np.ndarray:
    """float32 values as their uint32 bit patterns (exact comparison incl. NaN, -0)."""
    return np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
