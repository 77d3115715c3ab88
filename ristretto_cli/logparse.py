"""Read a training log (Caffe's or ours: the same lines) into train and test rows.

Understands glog prefixes with and without the year (``I1125 17:24:53.2`` and
``I20261125 17:24:53.2``), as Caffe's own ``parse_log.py`` does for the former.
``parse_log_rows`` and ``iteration_seconds`` follow Caffe's ``parse_log.py`` and
``extract_seconds.py`` exactly; ``parse_training_log`` is the looser reader the charts use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes

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


def _read_text(path: str) -> str:
    """The log as Python's text mode reads it (Caffe's scripts do): UTF-8 with bad bytes
    replaced, and every \\r\\n or \\r turned into \\n (universal newlines)."""
    text = read_bytes(path).decode("utf-8", errors="replace")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def parse_training_log(path: str) -> TrainingLog:
    """Parse the log at ``path``; a file with no iteration lines is an error."""
    lines = _read_text(path).splitlines()
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


# --------------------------------------------------------------------------------------------
# Caffe's tools/extra/parse_log.py and extract_seconds.py, rule for rule: times count from the
# "Solving" line, a year-less log takes the file's creation year (one more each time the month
# goes back), and a row is complete once it has as many columns as the first row.

_CAFFE_LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
# Caffe's value pattern, plus nan/inf, which Caffe's leaves out (or cannot convert)
_CAFFE_VALUE = r"([-+]?(?:nan|inf)|[.\deE+-]+)"
_CAFFE_TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + _CAFFE_VALUE)
_CAFFE_TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + _CAFFE_VALUE)


def _read_lines(path: str) -> list[str]:
    """The lines as Caffe's scripts iterate them (split at newlines only)."""
    return _read_text(path).split("\n")


def log_created_year(path: str) -> int:
    """The local-time year of the file's status change time, the year Caffe gives year-less logs."""
    return datetime.fromtimestamp(os.path.getctime(path)).year


class LogClock:
    """Times of glog lines read as Caffe's scripts do: year-less lines take ``year``, which
    grows by one whenever a line's month is before the previous line's."""

    def __init__(self, year: int):
        self.year = year
        self.last: datetime | None = None

    def read(self, line: str) -> datetime | None:
        """The time of ``line``, or None when it has no valid glog prefix."""
        line = line.strip()
        when = _timestamp(line, self.year)
        if when is None:
            return None
        if self.last is not None and when.month < self.last.month:
            self.year += 1
            when = _timestamp(line, self.year)
            if when is None:
                return None
        self.last = when
        return when


def _solving_start(lines: list[str], clock: LogClock, path: str) -> tuple[int, datetime]:
    """Index and time of the first line that mentions ``Solving``."""
    for index, line in enumerate(lines):
        if "Solving" in line:
            when = clock.read(line)
            if when is None:
                raise RistrettoError("the 'Solving' line has no glog time stamp", path=path,
                                     line=index + 1)
            return index, when
    raise RistrettoError("no 'Solving' line: cannot find the start of training", path=path)


def _value(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class _RowCollector:
    """Rows of one kind of net output (train or test), grouped by iteration as Caffe's script
    groups them: a row whose iteration ends before it is full is kept only if it is the first."""

    def __init__(self, pattern: re.Pattern):
        self.pattern = pattern
        self.rows: list[dict] = []
        self.row: dict | None = None

    def feed(self, line: str, iteration: float, seconds: float, learning_rate: float) -> None:
        m = self.pattern.search(line)
        value = _value(m.group(3)) if m else None
        if value is not None:
            if self.row is None or self.row["NumIters"] != iteration:
                if self.row is not None:
                    self.rows.append(self.row)
                self.row = {"NumIters": iteration, "Seconds": seconds, "LearningRate": learning_rate}
            self.row[m.group(2)] = value
        if self.row is not None and self.rows and len(self.row) == len(self.rows[0]):
            self.rows.append(self.row)
            self.row = None

    def finished(self) -> list[dict]:
        """The complete rows; the first takes the second's learning rate (the rate is only
        logged after the first display)."""
        if len(self.rows) > 1:
            self.rows[0]["LearningRate"] = self.rows[1]["LearningRate"]
        return self.rows


def parse_log_rows(path: str) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) as Caffe's ``parse_log.py`` builds them: ``NumIters`` (a float),
    ``Seconds`` since the ``Solving`` line, ``LearningRate`` last logged, then each output."""
    lines = _read_lines(path)
    clock = LogClock(log_created_year(path))
    start_index, start = _solving_start(lines, clock, path)
    iteration = -1.0
    learning_rate = float("nan")
    train = _RowCollector(_CAFFE_TRAIN_OUTPUT)
    test = _RowCollector(_CAFFE_TEST_OUTPUT)
    for line in lines[start_index + 1:]:
        m = _ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        when = clock.read(line)
        if when is None:
            continue
        seconds = (when - start).total_seconds()
        m = _CAFFE_LEARNING_RATE.search(line)
        rate = _value(m.group(1)) if m else None
        if rate is not None:
            learning_rate = rate
        train.feed(line, iteration, seconds, learning_rate)
        test.feed(line, iteration, seconds, learning_rate)
    return train.finished(), test.finished()


def iteration_seconds(path: str) -> list[float]:
    """Caffe's ``extract_seconds.py``: for every line that mentions ``Iteration`` (anywhere in
    the log), the seconds since the ``Solving`` line."""
    lines = _read_lines(path)
    clock = LogClock(log_created_year(path))
    _, start = _solving_start(lines, clock, path)
    seconds = []
    for number, line in enumerate(lines, 1):
        if "Iteration" in line:
            when = clock.read(line)
            if when is None:
                raise RistrettoError("this 'Iteration' line has no glog time stamp", path=path,
                                     line=number)
            seconds.append((when - start).total_seconds())
    return seconds
