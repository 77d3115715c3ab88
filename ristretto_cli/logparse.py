"""Read a training log (Caffe's or ours: the same lines) into train and test rows.

Understands glog prefixes with and without the year (``I1125 17:24:53.2`` and
``I20261125 17:24:53.2``), as Caffe's own ``parse_log.py`` does for the former.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

from ristretto_cli.errors import RistrettoError

_PREFIX = re.compile(r"^[IWEF](\d{4}|\d{8}) (\d{2}):(\d{2}):(\d{2})\.(\d+)")
_ITERATION = re.compile(r"Iteration (\d+)")
_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([-+.\deEinfa]+)")
_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([-+.\deEinfa]+)")
_LEARNING_RATE = re.compile(r"Iteration \d+, lr = ([-+.\deE]+)")
_TESTING = re.compile(r"Iteration (\d+), Testing net")


@dataclass
class TrainingLog:
    """Rows keyed by column name: ``NumIters``, ``Seconds``, ``LearningRate`` and every output."""
    path: str
    train: list[dict] = field(default_factory=list)
    test: list[dict] = field(default_factory=list)
    #: one row per ``Iteration N, lr = x`` line
    learning_rates: list[dict] = field(default_factory=list)


def _timestamp(line: str, year: int) -> datetime | None:
    m = _PREFIX.match(line)
    if not m:
        return None
    date = m.group(1)
    if len(date) == 8:
        year, month, day = int(date[:4]), int(date[4:6]), int(date[6:])
    else:
        month, day = int(date[:2]), int(date[2:])
    frac = m.group(5)[:6].ljust(6, "0")
    try:
        return datetime(year, month, day, int(m.group(2)), int(m.group(3)), int(m.group(4)), int(frac))
    except ValueError:
        return None


def parse_training_log(path: str) -> TrainingLog:
    """Parse the log at ``path``; a file with no iteration lines is an error."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise RistrettoError(f"cannot read: {exc.strerror}", path=path) from None
    log = TrainingLog(path)
    start = None
    year = 2000  # logs without a year: any leap year keeps Feb 29 valid
    iteration = -1
    learning_rate = float("nan")
    train_row: dict | None = None
    test_row: dict | None = None
    for line in lines:
        when = _timestamp(line, year)
        if when is not None:
            if start is None:
                start = when
            if when < start:  # a log without years running over New Year
                when = when.replace(year=when.year + 1)
            seconds = (when - start).total_seconds()
        else:
            seconds = float("nan")
        m = _LEARNING_RATE.search(line)
        if m:
            learning_rate = float(m.group(1))
            lr_iteration = int(_ITERATION.search(line).group(1))
            log.learning_rates.append({"NumIters": lr_iteration, "Seconds": seconds,
                                       "LearningRate": learning_rate})
            if train_row is not None and train_row["NumIters"] == lr_iteration:
                train_row["LearningRate"] = learning_rate
            continue
        m = _TESTING.search(line)
        if m:
            iteration = int(m.group(1))
            test_row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": learning_rate}
            log.test.append(test_row)
            continue
        m = _ITERATION.search(line)
        if m and "loss = " in line and "Testing" not in line:
            iteration = int(m.group(1))
            train_row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": learning_rate}
            log.train.append(train_row)
            continue
        m = _TRAIN_OUTPUT.search(line)
        if m and train_row is not None:
            train_row[m.group(2)] = float(m.group(3))
            continue
        m = _TEST_OUTPUT.search(line)
        if m and test_row is not None:
            test_row[m.group(2)] = float(m.group(3))
    if not log.train and not log.test and not log.learning_rates:
        raise RistrettoError("no training iterations found in this log", path=path)
    return log


#: Caffe's plot_training_log.py chart types: (y field, x field, title)
CHART_TYPES = {
    0: ("test", "accuracy", "NumIters", "Test accuracy vs. Iters"),
    1: ("test", "accuracy", "Seconds", "Test accuracy vs. Seconds"),
    2: ("test", "loss", "NumIters", "Test loss vs. Iters"),
    3: ("test", "loss", "Seconds", "Test loss vs. Seconds"),
    4: ("learning_rates", "LearningRate", "NumIters", "Train learning rate vs. Iters"),
    5: ("learning_rates", "LearningRate", "Seconds", "Train learning rate vs. Seconds"),
    6: ("train", "loss", "NumIters", "Train loss vs. Iters"),
    7: ("train", "loss", "Seconds", "Train loss vs. Seconds"),
}


def chart_series(log: TrainingLog, chart_type: int) -> tuple[list[float], list[float]]:
    """The (x, y) points of one chart for one log."""
    which, y_field, x_field, _ = CHART_TYPES[chart_type]
    rows = getattr(log, which)
    xs, ys = [], []
    for row in rows:
        if y_field in row and row.get(x_field) == row.get(x_field):  # skip NaN x
            xs.append(row[x_field])
            ys.append(row[y_field])
    return xs, ys
