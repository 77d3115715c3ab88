"""Capturing the tool's log in tests, and running the CLI in-process."""

from __future__ import annotations

import contextlib
import logging

from ristretto_cli.log import logger


class LogCapture(list):
    """The project logger's messages (a list of strings, filled while the block runs), with the
    records behind them."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    @property
    def messages(self) -> list[str]:
        return list(self)

    @property
    def entries(self) -> list[tuple[str, str]]:
        """(level name, message) pairs."""
        return [(r.levelname, r.getMessage()) for r in self.records]

    def levels(self, level: int) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


class _Handler(logging.Handler):
    def __init__(self, capture: LogCapture):
        super().__init__(logging.DEBUG)
        self.capture = capture

    def emit(self, record):
        self.capture.records.append(record)
        self.capture.append(record.getMessage())


@contextlib.contextmanager
def capture_log():
    """Collect the project logger's INFO-and-up messages while the block runs."""
    capture = LogCapture()
    handler = _Handler(capture)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def run_cli(capsys, *args) -> tuple[int, list[str]]:
    """``ristretto ARGS`` in-process: (exit status, stderr lines)."""
    from ristretto_cli import log
    from ristretto_cli.cli import main
    capsys.readouterr()
    log.configure()         # the glog handler writes to the current sys.stderr: the capture
    status = main([str(a) for a in args])
    return status, capsys.readouterr().err.splitlines()


def message(line: str) -> str:
    """The message part of a glog line (after ``] ``)."""
    return line.split("] ", 1)[1] if "] " in line else line
