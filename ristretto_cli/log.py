"""Caffe-style logging: glog line prefixes on stderr, C ``%g`` numbers, tqdm-safe output.

Caffe's tools log every line as ``I1125 17:24:53.222100 23223 solver.cpp:239] message``;
existing log parsers (e.g. Caffe's ``parse_log.py``) read that prefix, so we keep it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

import numpy as np

LOGGER_NAME = "ristretto"
logger = logging.getLogger(LOGGER_NAME)

_LEVEL_LETTER = {logging.DEBUG: "I", logging.INFO: "I", logging.WARNING: "W",
                 logging.ERROR: "E", logging.CRITICAL: "F"}


def fmt_g(value) -> str:
    """Format a number as C++ ostream does by default (``%g``, 6 significant digits).

    float32 values are widened to double first, exactly as ``operator<<(float)`` does.
    """
    if isinstance(value, (np.floating, float)):
        return format(float(value), "g")
    return str(value)


class GlogFormatter(logging.Formatter):
    """``<L><MMDD> <HH:MM:SS.uuuuuu> <pid:5> <file>:<line>] <message>``."""

    def format(self, record: logging.LogRecord) -> str:
        t = time.localtime(record.created)
        micros = int((record.created - int(record.created)) * 1e6)
        letter = _LEVEL_LETTER.get(record.levelno, "I")
        prefix = (f"{letter}{t.tm_mon:02d}{t.tm_mday:02d} "
                  f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}.{micros:06d} "
                  f"{record.process:5d} {os.path.basename(record.pathname)}:{record.lineno}] ")
        return prefix + record.getMessage()


class _TqdmAwareHandler(logging.StreamHandler):
    """Writes through tqdm when a progress bar is on screen, so a bar never splits a line.
    Always to the current ``sys.stderr``, so a stream replaced after set-up (a test's capture,
    a notebook) gets the lines."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            from tqdm import tqdm
            if getattr(tqdm, "_instances", None):
                tqdm.write(msg, file=self.stream)
            else:
                self.stream.write(msg + "\n")
                self.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


_configured = False
_file_handler: logging.Handler | None = None


def configure(verbose: bool = True, log_file: str | None = None) -> None:
    """Install the stderr handler (and optionally a plain log file) once per process."""
    global _configured, _file_handler
    if not _configured:
        handler = _TqdmAwareHandler()
        handler.setFormatter(GlogFormatter())
        logger.addHandler(handler)
        logger.propagate = False
        _configured = True
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    if log_file is not None:
        if _file_handler is not None:
            logger.removeHandler(_file_handler)
            _file_handler.close()
        _file_handler = logging.FileHandler(log_file, mode="w")
        _file_handler.setFormatter(GlogFormatter())
        logger.addHandler(_file_handler)


def progress_enabled() -> bool:
    """Progress bars only on an interactive stderr."""
    return sys.stderr.isatty()


def progress(iterable=None, *, total=None, desc=None, unit="it"):
    """A tqdm bar on stderr when it is a terminal; otherwise the plain iterable."""
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False,
                disable=not progress_enabled(), file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def quiet():
    """Temporarily silence INFO lines (used for inner runs whose log nobody reads)."""
    old = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


class HeldRecords:
    """Log records held back while a block runs; ``release()`` emits them later.

    Used to read every input file before printing anything: a bad file then prints only
    its one error line, while a good run keeps Caffe's line order (e.g. "Use CPU." first,
    then the legacy-upgrade messages of the files).
    """

    def __init__(self):
        self.records: list[logging.LogRecord] = []

    def release(self) -> None:
        records, self.records = self.records, []
        for record in records:
            logger.handle(record)


@contextlib.contextmanager
def hold_records():
    held = HeldRecords()

    class _Capture(logging.Handler):
        def emit(self, record):
            held.records.append(record)

    capture = _Capture()
    saved = logger.handlers[:]
    for h in saved:
        logger.removeHandler(h)
    logger.addHandler(capture)
    try:
        yield held
    finally:
        logger.removeHandler(capture)
        for h in saved:
            logger.addHandler(h)
