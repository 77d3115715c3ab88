"""Files extracted from a training log: Caffe's ``parse_log.py`` CSV tables and
``extract_seconds.py`` list of seconds, byte for byte."""

from __future__ import annotations

import csv
import io
import os

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.atomic import atomic_write_text, check_writable
from ristretto_cli.logparse import iteration_seconds, parse_log_rows


def csv_text(rows: list[dict], delimiter: str = ",") -> str:
    """Rows as Caffe's script writes them: Python's excel dialect (CRLF line ends, quotes only
    where needed), the first row's keys as the header, floats as ``repr``."""
    header = list(rows[0])
    for row in rows:
        extra = [key for key in row if key not in header]
        if extra:
            raise RistrettoError(f"the row of iteration {row['NumIters']:g} has columns the first "
                                 f"row lacks: {', '.join(extra)}")
    out = io.StringIO()
    try:
        writer = csv.DictWriter(out, fieldnames=header, dialect=csv.excel, delimiter=delimiter)
    except (TypeError, csv.Error) as exc:
        raise RistrettoError(f"--delimiter: {exc}") from None
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def parse_log(log_path: str, output_dir: str, delimiter: str = ",") -> list[str]:
    """Write ``OUTPUT_DIR/<log name>.train`` and ``.test``; a table without rows is not written.
    Returns what ``--verbose`` prints, one line per file."""
    if len(delimiter) != 1:
        raise RistrettoError(f"--delimiter must be a single character, not {delimiter!r}")
    train_rows, test_rows = parse_log_rows(log_path)
    base = os.path.join(output_dir, os.path.basename(log_path))
    tables = [(base + ".train", train_rows), (base + ".test", test_rows)]
    texts = []
    for path, rows in tables:
        if rows:
            check_writable(path)
            try:
                texts.append(csv_text(rows, delimiter))
            except RistrettoError as exc:
                raise exc.located(path=log_path) from None
        else:
            texts.append(None)
    messages = []
    for (path, _), text in zip(tables, texts):
        if text is None:
            messages.append(f"Not writing {path}; no lines to write")
        else:
            atomic_write_text(path, text)
            messages.append(f"Wrote {path}")
    return messages


def extract_seconds(log_path: str, output_path: str) -> int:
    """Write the seconds of every ``Iteration`` line, one ``%f`` per line; returns how many."""
    seconds = iteration_seconds(log_path)
    atomic_write_text(output_path, "".join(f"{s:f}\n" for s in seconds))
    return len(seconds)
