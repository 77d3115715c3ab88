"""Helpers shared by the test_io_* modules."""

from __future__ import annotations

import contextlib
import logging
import sys

import numpy as np

from ristretto_cli.log import logger


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    @property
    def messages(self) -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in self.records]


@contextlib.contextmanager
def capture_log():
    """Collect the records of the project logger (INFO and up) while the block runs."""
    handler = _ListHandler()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run ``ristretto ARGS`` in-process; (exit status, stderr lines)."""
    from ristretto_cli.cli import main
    # The glog handler keeps the stream it was created with; point it at this test's stderr.
    for handler in logger.handlers:
        if type(handler).__name__ == "_TqdmAwareHandler":
            handler.stream = sys.stderr
    capsys.readouterr()
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err.splitlines()


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
