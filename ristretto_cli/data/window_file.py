"""R-CNN window files, as Caffe's WindowData layer reads them.

The file is a stream of whitespace-separated tokens (line breaks carry no meaning); per
image: ``#``, the image index, the image path, channels, height, width, the number of
windows, then per window ``class_index overlap x1 y1 x2 y2`` (corners inclusive, in
pixels). A window names its image by that index, i.e. by position in the file (from 0).
Unlike Caffe, whose stream reader stops silently at the first token it cannot read, any
malformed or missing token is an error naming the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.log import logger

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INT32 = (-2**31, 2**31 - 1)


@dataclass
class WindowImage:
    """One image entry: ``path`` as written (before any root folder) and its header values."""
    path: str
    channels: int
    height: int
    width: int
    line: int   # the line of its ``#``


@dataclass
class WindowFile:
    """The images, and one row per window (arrays in file order)."""
    path: str
    images: list[WindowImage]
    image_index: np.ndarray   # int64 (N,), the image each window belongs to
    label: np.ndarray         # int64 (N,), class_index
    overlap: np.ndarray       # float32 (N,), as Caffe stores it
    boxes: np.ndarray         # int64 (N, 4): x1, y1, x2, y2
    line: np.ndarray          # int64 (N,), the line each window starts on


class _Tokens:
    """The file's tokens with their line numbers, read one at a time."""

    def __init__(self, path: str, text: str):
        self.path = path
        self.items = [(m.group(), lineno) for lineno, line in enumerate(text.split("\n"), 1)
                      for m in re.finditer(r"\S+", line)]
        self.pos = 0
        self.last_line = self.items[-1][1] if self.items else 1

    def at_end(self) -> bool:
        return self.pos >= len(self.items)

    @property
    def line(self) -> int:
        """The line of the next token (or the last line, at the end)."""
        return self.items[self.pos][1] if not self.at_end() else self.last_line

    def error(self, message: str, line: int | None = None) -> RistrettoError:
        return RistrettoError(message, path=self.path, line=self.line if line is None else line)

    def text(self, what: str) -> str:
        if self.at_end():
            raise self.error(f"the window file ends early: expected {what}")
        token = self.items[self.pos][0]
        self.pos += 1
        return token

    def integer(self, what: str) -> int:
        line = self.line
        token = self.text(what)
        if not _INT_RE.fullmatch(token):
            raise self.error(f"expected {what} (an integer), got '{token}'", line)
        value = int(token)
        if not _INT32[0] <= value <= _INT32[1]:
            raise self.error(f"{what} {token} is out of the int32 range", line)
        return value

    def number(self, what: str) -> np.float32:
        line = self.line
        token = self.text(what)
        if not _FLOAT_RE.fullmatch(token):
            raise self.error(f"expected {what} (a number), got '{token}'", line)
        return np.float32(float(token))


def read_window_file(path: str) -> WindowFile:
    """Parse a window file; errors name the file and line."""
    text = read_bytes(path, "failed to open the window file").decode("utf-8", "surrogateescape")
    tokens = _Tokens(path, text)
    if tokens.at_end():
        raise RistrettoError("the window file is empty", path=path)
    images: list[WindowImage] = []
    header_index: list[int] = []
    counts: list[int] = []
    rows: list[tuple[int, int, int, int, int, int, int]] = []
    overlaps: list[np.float32] = []
    while not tokens.at_end():
        line = tokens.line
        n = len(images)
        hashtag = tokens.text("'#'")
        if hashtag != "#":
            raise tokens.error(f"expected '#' to start image entry {n}, got '{hashtag}'", line)
        index = tokens.integer(f"the index of image entry {n}")
        image_path = tokens.text(f"the path of image {index}")
        channels = tokens.integer(f"the channels of image {index}")
        height = tokens.integer(f"the height of image {index}")
        width = tokens.integer(f"the width of image {index}")
        count_line = tokens.line
        count = tokens.integer(f"the number of windows of image {index}")
        if count < 0:
            raise tokens.error(f"image {index} has a negative number of windows ({count})", count_line)
        images.append(WindowImage(image_path, channels, height, width, line))
        header_index.append(index)
        for k in range(count):
            what = f"window {k} of image {index}"
            window_line = tokens.line
            label = tokens.integer(f"the class_index of {what}")
            overlaps.append(tokens.number(f"the overlap of {what}"))
            x1, y1, x2, y2 = (tokens.integer(f"{name} of {what}") for name in ("x1", "y1", "x2", "y2"))
            rows.append((index, label, x1, y1, x2, y2, window_line))
        counts.append(count)
    for index, image, count in zip(header_index, images, counts):
        if count and not 0 <= index < len(images):
            raise RistrettoError(f"image index {index} is out of range: windows name their image by "
                                 f"its position in the file, from 0 to {len(images) - 1}",
                                 path=path, line=image.line)
    moved = next(((p, i) for p, i in enumerate(header_index) if p != i and counts[p]), None)
    if moved is not None:
        logger.warning("%s:%d: image entry %d has index %d; its windows use the image listed at "
                       "position %d", path, images[moved[0]].line, moved[0], moved[1], moved[1])
    table = np.array(rows, np.int64).reshape(-1, 7)
    return WindowFile(path=path, images=images, image_index=table[:, 0], label=table[:, 1],
                      overlap=np.array(overlaps, np.float32), boxes=table[:, 2:6], line=table[:, 6])
