"""Caffe's tools/extra/resize_and_crop_images.py: every image of a list scaled and cropped to
a centred square of side L, written under the output folder at the same relative path.

The list has one image per line; the first whitespace-separated token is the path relative
to the input folder, after every occurrence of the input-folder string has been removed from
the line (so a list of full paths works when the folder is given as their prefix).

Two ways to do it, as the original:

* OpenCV (default): ``imread`` in colour, scale so that the short side is L (the long side
  ``L * long // short``, rounded down), bilinear ``resize``, then the centre L x L square
  (offsets ``(new - L) // 2``), written in the format of the output file's extension.
* PIL (``image_lib='pil'``, needs Pillow): first halve the factor while ``width // f > 2L``
  and ``2 * height // f > 2L`` and shrink (nearest neighbour) by it; then crop the centre of
  the image to the box's aspect with the script's own float/integer arithmetic, and shrink
  to fit L x L with Lanczos (PIL's ANTIALIAS); always saved as JPEG, quality 75. This never
  enlarges, and that pre-shrink can take the short side under L: such outputs are smaller
  than L x L, as the original's.

An image that cannot be read, scaled or written is skipped with one warning and the run goes
on, as the original catches every per-image exception; a missing or empty list is an error.

Differences: the sizes of both PIL shrinks are computed as PIL (and Pillow before 7.0)
computed them, rounded down, with the JPEG draft mode for the first; not by today's
``thumbnail``, which rounds to the nearest size of the same aspect. Pixel values may still
differ slightly from old PIL's, whose resampling code Pillow has since rewritten. A path
that is still absolute after the folder is removed is placed under the folders (the
original's ``os.path.join`` dropped the folder: it read ``/n01/a.JPEG`` for
``--input_folder=/data`` given without its trailing slash, and an absolute list was written
over its own images whatever the output folder). Blank lines are ignored. Every file is
written to a temporary name and renamed into place.
"""

from __future__ import annotations

import io
import os

from ristretto_cli import log as logmod
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io.files import read_bytes
from ristretto_cli.log import logger

OPENCV = "opencv"
PIL = "pil"
DEFAULT_SIDE = 256
PIL_JPEG_QUALITY = 75


# ---------------------------------------------------------------------- geometry (pure)
def opencv_geometry(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """(new width, new height, x offset, y offset) of the OpenCV path: the short side
    scaled to ``side``, the long one to ``side * long // short`` (rounded down), and the top
    left corner of the centred ``side`` x ``side`` square in the scaled image."""
    if height > width:
        new_width, new_height = side, side * height // width
    else:
        new_width, new_height = side * width // height, side
    return new_width, new_height, (new_width - side) // 2, (new_height - side) // 2


def pil_preshrink_factor(width: int, height: int, side: int) -> int:
    """The power of two the PIL path first shrinks by. The test is the original's, height
    doubled included: ``width // f > 2 * side and height * 2 // f > 2 * side``."""
    factor = 1
    while width // factor > 2 * side and height * 2 // factor > 2 * side:
        factor *= 2
    return factor


def pil_thumbnail_size(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """The size PIL's ``thumbnail(box)`` gave (PIL, and Pillow before 7.0): the width fitted
    first, then the height, each other side scaled and rounded down (at least 1). Never
    larger than the image."""
    if width > box_width:
        height = max(height * box_width // width, 1)
        width = box_width
    if height > box_height:
        width = max(width * box_height // height, 1)
        height = box_height
    return width, height


def pil_crop_box(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """The (x1, y1, x2, y2) crop of the PIL path: the centre of the image at the square's
    aspect, in the original's arithmetic (``width // 2`` an integer, the rest float, the
    sum truncated by ``int``; an odd square loses its last column)."""
    x1 = y1 = 0
    x2, y2 = width, height
    w_ratio = x2 / side
    h_ratio = y2 / side
    if h_ratio > w_ratio:
        y1 = int(y2 // 2 - side * w_ratio / 2)
        y2 = int(y2 // 2 + side * w_ratio / 2)
    else:
        x1 = int(x2 // 2 - side * h_ratio / 2)
        x2 = int(x2 // 2 + side * h_ratio / 2)
    return x1, y1, x2, y2


def pil_output_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The size of the PIL path's output for a ``width`` x ``height`` image (JPEG draft
    decoding aside, which changes no size)."""
    factor = pil_preshrink_factor(width, height, side)
    if factor > 1:
        width, height = pil_thumbnail_size(width, height, width // factor, height // factor)
    x1, y1, x2, y2 = pil_crop_box(width, height, side)
    return pil_thumbnail_size(x2 - x1, y2 - y1, side, side)


# ---------------------------------------------------------------------- the list
def list_entries(list_file: str, input_folder: str = "") -> list[tuple[int, str]]:
    """(line number, relative path) of each non-blank line of the list: the first token
    after every occurrence of ``input_folder`` is removed from the line."""
    raw = read_bytes(list_file, "cannot read the image list")
    entries = []
    for lineno, line in enumerate(raw.decode("utf-8", "surrogateescape").splitlines(), 1):
        if input_folder:
            line = line.replace(input_folder, "")
        tokens = line.split()
        if tokens:
            entries.append((lineno, tokens[0]))
    if not entries:
        raise RistrettoError("the image list is empty", path=list_file)
    return entries


def under(folder: str, relative: str) -> str:
    """``relative`` inside ``folder`` (a leading separator does not escape it); the path
    itself when ``folder`` is empty."""
    return os.path.join(folder, relative.lstrip(os.sep)) if folder else relative


# ---------------------------------------------------------------------- one image
def _write(path: str, data: bytes) -> None:
    from ristretto_cli.io import atomic_write_bytes
    folder = os.path.dirname(path)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise RistrettoError(f"cannot create the folder {folder}: {exc.strerror or exc}",
                                 path=path) from None
    atomic_write_bytes(path, data)


def resize_crop_opencv(input_path: str, output_path: str, side: int) -> None:
    """The OpenCV path for one image."""
    import cv2

    from ristretto_cli.data.datum import read_image
    img = read_image(input_path, is_color=True)
    height, width = img.shape[:2]
    new_width, new_height, x_offset, y_offset = opencv_geometry(width, height, side)
    resized = cv2.resize(img, (new_width, new_height))      # INTER_LINEAR, OpenCV's default
    square = resized[y_offset:y_offset + side, x_offset:x_offset + side]
    ext = os.path.splitext(output_path)[1]
    try:
        ok, buf = cv2.imencode(ext, square)
    except cv2.error:
        ok = False
    if not ok:
        raise RistrettoError(f"OpenCV cannot write an image with the extension '{ext}'", path=output_path)
    _write(output_path, buf.tobytes())


def _pil_thumbnail(img, box: tuple[int, int], resample):
    """PIL's old ``thumbnail``: the rounded-down size, the JPEG draft mode, then a resize."""
    size = pil_thumbnail_size(img.size[0], img.size[1], *box)
    if size == img.size:
        return img
    img.draft(None, size)       # JPEG files decode at a reduced scale no smaller than size
    return img.resize(size, resample)


def resize_crop_pil(input_path: str, output_path: str, side: int) -> None:
    """The PIL path for one image (Pillow must be installed)."""
    from PIL import Image
    try:
        with Image.open(input_path) as img:
            width, height = img.size
            factor = pil_preshrink_factor(width, height, side)
            if factor > 1:
                img = _pil_thumbnail(img, (width // factor, height // factor), Image.NEAREST)
            img = img.crop(pil_crop_box(img.size[0], img.size[1], side))
            img = _pil_thumbnail(img, (side, side), Image.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=PIL_JPEG_QUALITY)
    except FileNotFoundError:
        raise RistrettoError("could not load image: No such file or directory", path=input_path) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise RistrettoError(f"PIL: {exc}", path=input_path) from None
    _write(output_path, buf.getvalue())


def require_pillow() -> None:
    """A clear error (before any work) when the optional dependency is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise RistrettoError("--image_lib=pil needs Pillow, an optional dependency: "
                             "pip install 'ristretto-cli[plot]' (or pip install Pillow)") from None


# ---------------------------------------------------------------------- the tool
def resize_and_crop_images(list_file, input_folder: str = "", output_folder: str = "",
                           output_side_length: int = DEFAULT_SIDE, image_lib: str = OPENCV, *,
                           progress: bool = True) -> tuple[int, int]:
    """Resize and crop every image of ``list_file``; returns (written, skipped)."""
    if not list_file:
        raise RistrettoError("Need a list of images to resize and crop (--input).")
    if output_side_length <= 0:
        raise RistrettoError(f"--output_side_length must be positive, got {output_side_length}")
    input_folder, output_folder = os.fspath(input_folder), os.fspath(output_folder)
    lib = image_lib.lower()
    if lib == PIL:
        require_pillow()
        process = resize_crop_pil
    else:
        if lib != OPENCV:
            logger.warning("unknown --image_lib '%s': using OpenCV", image_lib)
        process = resize_crop_opencv
    list_file = os.fspath(list_file)
    entries = list_entries(list_file, input_folder)
    logger.info("A total of %d images.", len(entries))
    written = skipped = 0
    steps = logmod.progress(entries, total=len(entries), desc="resize", unit="img") if progress else entries
    for lineno, relative in steps:
        input_path = under(input_folder, relative)
        try:
            process(input_path, under(output_folder, relative), output_side_length)
        except Exception as exc:    # as the original: one bad image never stops the run
            if not isinstance(exc, RistrettoError):
                exc = RistrettoError(f"{type(exc).__name__}: {exc}", path=input_path)
            logger.warning("%s:%d: skipped: %s", list_file, lineno, exc)
            skipped += 1
        else:
            written += 1
    logger.info("Wrote %d images to %s, skipped %d.", written, output_folder or ".", skipped)
    return written, skipped
