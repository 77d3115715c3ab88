"""`ristretto resize_and_crop_images`: Caffe's tools/extra/resize_and_crop_images.py.

The geometry is checked against sizes and offsets worked out by hand from the original
script's arithmetic (Python 2 integer division, PIL's rounded-down thumbnail sizes); the
command runs on tiny synthetic images, and its pixels are compared with OpenCV and Pillow
calls made here with those hand-computed numbers.
"""

from __future__ import annotations

import io
import os
import sys

import cv2
import numpy as np
import pytest
from log_support import message, run_cli

from ristretto_cli.cli import main
from ristretto_cli.data.resize_crop import (
    list_entries,
    opencv_geometry,
    pil_crop_box,
    pil_output_size,
    pil_preshrink_factor,
    pil_thumbnail_size,
    under,
)


# ---------------------------------------------------------------------- geometry by hand
@pytest.mark.parametrize("width, height, side, expected", [
    (500, 375, 256, (341, 256, 42, 0)),     # landscape: 256 * 500 // 375 = 341 (341.3)
    (375, 500, 256, (256, 341, 0, 42)),     # portrait, the same turned
    (100, 100, 256, (256, 256, 0, 0)),      # square, enlarged
    (40, 30, 16, (21, 16, 2, 0)),           # 640 // 30 = 21 (21.3)
    (30, 50, 16, (16, 26, 0, 5)),           # 800 // 30 = 26 (26.7: rounded down, not to 27)
    (41, 31, 16, (21, 16, 2, 0)),           # odd sizes: 656 // 31 = 21 (21.2)
    (31, 41, 15, (15, 19, 0, 2)),           # 615 // 31 = 19 (19.8); (19 - 15) // 2 = 2
    (17, 16, 16, (17, 16, 0, 0)),           # one column over: offset (17 - 16) // 2 = 0
])
def test_opencv_geometry(width, height, side, expected):
    assert opencv_geometry(width, height, side) == expected


@pytest.mark.parametrize("width, height, side, factor", [
    (500, 375, 256, 1),         # 500 > 512 fails at once
    (2048, 1536, 256, 4),       # 1024 > 512 and 1536 > 512, then 512 > 512 fails
    (2100, 1575, 256, 8),       # 525 > 512 and 787 > 512: the short side ends at 196 < 256
    (4000, 1100, 256, 8),       # the height counts twice: 550 > 512 at factor 4
    (1100, 4000, 256, 4),       # ... so the same image turned shrinks half as much
    (40, 30, 12, 2),
    (40, 30, 8, 4),
    (20, 10, 16, 1),
])
def test_pil_preshrink_factor(width, height, side, factor):
    assert pil_preshrink_factor(width, height, side) == factor


@pytest.mark.parametrize("size, box, expected", [
    ((2100, 1575), (262, 196), (262, 196)),   # 1575 * 262 // 2100 = 196 (196.5)
    ((40, 30), (10, 7), (10, 7)),             # 300 // 40 = 7 (today's Pillow gives 9 x 7)
    ((15, 15), (12, 12), (12, 12)),
    ((30, 50), (15, 25), (15, 25)),
    ((257, 256), (256, 256), (256, 255)),     # 256 * 256 // 257 = 255 (255.004)
    ((40, 41), (16, 16), (16, 16)),           # width: 41 * 16 // 40 = 16; height then fits
    ((16, 100), (16, 16), (2, 16)),           # height: 16 * 16 // 100 = 2 (2.56)
    ((300, 2), (16, 16), (16, 1)),            # 2 * 16 // 300 = 0, at least 1
    ((10, 10), (16, 16), (10, 10)),           # never enlarged
])
def test_pil_thumbnail_size(size, box, expected):
    assert pil_thumbnail_size(*size, *box) == expected


@pytest.mark.parametrize("width, height, side, box", [
    (500, 375, 256, (62, 0, 437, 375)),     # 250 -/+ 256 * (375 / 256) / 2 = 62.5, 437.5
    (375, 500, 256, (0, 62, 375, 437)),
    (40, 40, 16, (0, 0, 40, 40)),           # even square: whole
    (41, 41, 16, (0, 0, 40, 41)),           # odd square: int(20 - 20.5) = 0, int(20 + 20.5) = 40
    (10, 7, 8, (1, 0, 8, 7)),               # int(5 - 3.5) = 1, int(5 + 3.5) = 8: 7 wide
    (31, 41, 16, (0, 4, 31, 35)),           # 41 // 2 = 20 (integer), 20 -/+ 15.5
    (20, 15, 12, (2, 0, 17, 15)),
    (15, 25, 12, (0, 4, 15, 19)),
])
def test_pil_crop_box(width, height, side, box):
    assert pil_crop_box(width, height, side) == box


@pytest.mark.parametrize("width, height, side, size", [
    (40, 30, 12, (12, 12)),     # factor 2: 20 x 15, crop 15 x 15, then 12 x 12
    (30, 50, 12, (12, 12)),     # factor 2: 15 x 25, crop 15 x 15, then 12 x 12
    (40, 30, 8, (7, 7)),        # factor 4: 10 x 7, crop 7 x 7: under the side, as the original
    (20, 10, 16, (10, 10)),     # smaller than the side: cropped, never enlarged
    (500, 375, 256, (256, 256)),
    (41, 41, 16, (16, 16)),     # crop 40 x 41, then 41 * 16 // 40 = 16
])
def test_pil_output_size(width, height, side, size):
    assert pil_output_size(width, height, side) == size


# ---------------------------------------------------------------------- the list
def test_list_entries_first_token_after_the_folder_is_removed(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"/data/imgs/n01/a.JPEG 0\r\n\n   \n  n02/b.JPEG   7 extra\n"
                        b"/data/imgs/n03/c.JPEG\n/other/d.JPEG 1")
    assert list_entries(listing, "/data/imgs/") == [
        (1, "n01/a.JPEG"), (4, "n02/b.JPEG"), (5, "n03/c.JPEG"), (6, "/other/d.JPEG")]
    # every occurrence goes, as the original's str.replace
    assert list_entries(listing, "JPEG")[0] == (1, "/data/imgs/n01/a.")
    # without its trailing slash the folder leaves an absolute path, which stays inside the folders
    assert list_entries(listing, "/data/imgs")[0] == (1, "/n01/a.JPEG")
    assert under("/data/imgs", "/n01/a.JPEG") == os.path.join("/data/imgs", "n01/a.JPEG")
    assert under("out", "n01/a.JPEG") == os.path.join("out", "n01/a.JPEG")
    assert under("", "/n01/a.JPEG") == "/n01/a.JPEG"


# ---------------------------------------------------------------------- the command
def gradient(width: int, height: int) -> np.ndarray:
    """A BGR image whose three channels vary differently along x and y."""
    y, x = np.mgrid[0:height, 0:width]
    return np.dstack([x * 255 // (width - 1), y * 255 // (height - 1),
                      (x * 7 + y * 13) % 256]).astype(np.uint8)


@pytest.fixture
def images(tmp_path):
    """in/a.png (40 x 30), in/sub/deeper/b.png (30 x 50), and a list naming the second by its
    full path."""
    folder = tmp_path / "in"
    (folder / "sub" / "deeper").mkdir(parents=True)
    a, b = gradient(40, 30), gradient(30, 50)
    assert cv2.imwrite(str(folder / "a.png"), a) and cv2.imwrite(str(folder / "sub" / "deeper" / "b.png"), b)
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.png 0\n{folder}/sub/deeper/b.png 1\n")
    return folder, listing, a, b


def files_under(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_opencv_output_is_resize_then_centre_crop(tmp_path, capsys, images):
    folder, listing, a, b = images
    out = tmp_path / "out"
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={listing}", f"--input_folder={folder}",
                            f"--output_folder={out}", "--output_side_length=16")
    assert status == 0, lines
    assert [message(x) for x in lines] == ["A total of 2 images.", f"Wrote 2 images to {out}, skipped 0."]
    assert files_under(out) == ["a.png", os.path.join("sub", "deeper", "b.png")]   # no temporary files
    # 40 x 30: resized to 21 x 16, columns 2..17; 30 x 50: resized to 16 x 26, rows 5..20
    expect_a = cv2.resize(a, (21, 16))[0:16, 2:18]
    expect_b = cv2.resize(b, (16, 26))[5:21, 0:16]
    np.testing.assert_array_equal(cv2.imread(str(out / "a.png")), expect_a)
    np.testing.assert_array_equal(cv2.imread(str(out / "sub" / "deeper" / "b.png")), expect_b)


def test_opencv_writes_the_format_of_the_extension_and_replaces_in_place(tmp_path, capsys, images, monkeypatch):
    folder, _, a, _ = images
    cv2.imwrite(str(folder / "c.jpg"), a)
    listing = tmp_path / "jpg.txt"
    listing.write_text("c.jpg\n")
    decoded = cv2.imread(str(folder / "c.jpg"))
    # the defaults: both folders empty, paths relative to the working folder, images replaced
    monkeypatch.chdir(folder)
    status, lines = run_cli(capsys, "resize_and_crop_images", "-input", listing, "-output_side_length=8")
    assert status == 0, lines
    expected = cv2.imdecode(cv2.imencode(".jpg", cv2.resize(decoded, (10, 8))[:, 1:9])[1], cv2.IMREAD_COLOR)
    data = (folder / "c.jpg").read_bytes()
    assert data[:2] == b"\xff\xd8"
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), expected)


def test_pil_output_is_a_jpeg_of_the_side(tmp_path, capsys, images):
    from PIL import Image
    folder, listing, a, b = images
    cv2.imwrite(str(folder / "c.jpg"), gradient(64, 48))
    with open(listing, "a") as f:
        f.write("c.jpg\n")
    out = tmp_path / "out"
    status, lines = run_cli(capsys, "resize_and_crop_images", "--input", listing, "--input_folder", f"{folder}/",
                            "--output_folder", out, "--output_side_length", "12", "--image_lib=PIL")
    assert status == 0, lines
    assert message(lines[-1]) == f"Wrote 3 images to {out}, skipped 0."
    for name in ("a.png", "sub/deeper/b.png", "c.jpg"):
        data = (out / name).read_bytes()
        assert data[:2] == b"\xff\xd8", name         # JPEG whatever the extension
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and img.size == (12, 12), name

    def expected(bgr, shrunk, crop) -> bytes:
        img = Image.fromarray(bgr[:, :, ::-1].copy())
        img = img.resize(shrunk, Image.NEAREST).crop(crop).resize((12, 12), Image.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=75)
        return buf.getvalue()

    # 40 x 30: factor 2 -> 20 x 15, crop (2, 0, 17, 15); 30 x 50: 15 x 25, crop (0, 4, 15, 19)
    assert (out / "a.png").read_bytes() == expected(a, (20, 15), (2, 0, 17, 15))
    assert (out / "sub" / "deeper" / "b.png").read_bytes() == expected(b, (15, 25), (0, 4, 15, 19))


def test_a_bad_image_is_skipped_with_a_warning(tmp_path, capsys, images):
    folder, listing, _, _ = images
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    listing.write_text("broken.png\na.png\n\nmissing.jpg 3\n")
    out = tmp_path / "out"
    for lib in ("opencv", "pil"):
        status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={listing}", f"--input_folder={folder}",
                                f"--output_folder={out / lib}", "--output_side_length=8", f"--image_lib={lib}")
        assert status == 0, lines
        assert len(lines) == 4 and lines[1][0] == lines[2][0] == "W", lines
        assert message(lines[1]).startswith(f"{listing}:1: skipped: {folder / 'broken.png'}: ")
        assert message(lines[2]) == (f"{listing}:4: skipped: {folder / 'missing.jpg'}: could not load image: "
                                     "No such file or directory")
        assert message(lines[3]) == f"Wrote 1 images to {out / lib}, skipped 2."
        assert files_under(out / lib) == ["a.png"]


def test_an_unknown_image_lib_means_opencv(tmp_path, capsys, images):
    _, listing, a, _ = images
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={listing}",
                            f"--input_folder={listing.parent / 'in'}", f"--output_folder={tmp_path / 'out'}",
                            "--output_side_length=16", "--image_lib=skimage")
    assert status == 0 and message(lines[0]) == "unknown --image_lib 'skimage': using OpenCV"
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out" / "a.png")), cv2.resize(a, (21, 16))[:, 2:18])


def test_list_and_flag_errors_are_one_line(tmp_path, capsys, images):
    _, listing, _, _ = images
    missing = tmp_path / "nowhere.txt"
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={missing}")
    assert status == 1 and lines == [f"ristretto: error: {missing}: cannot read the image list: "
                                     "No such file or directory"]
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={tmp_path}")
    assert status == 1 and len(lines) == 1 and lines[0].startswith(f"ristretto: error: {tmp_path}: cannot read")
    (tmp_path / "blank.txt").write_text("\n  \n")
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={tmp_path / 'blank.txt'}")
    assert status == 1 and lines == [f"ristretto: error: {tmp_path / 'blank.txt'}: the image list is empty"]
    status, lines = run_cli(capsys, "resize_and_crop_images", "--output_folder=x")
    assert status == 1 and lines == ["ristretto: error: Need a list of images to resize and crop (--input)."]
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={listing}", "--output_side_length=0")
    assert status == 1 and lines == ["ristretto: error: --output_side_length must be positive, got 0"]
    assert not (tmp_path / "x").exists()
    # --debug: the traceback instead
    capsys.readouterr()
    assert main(["resize_and_crop_images", f"--input={missing}", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_pil_without_pillow_names_the_extra(tmp_path, capsys, images, monkeypatch):
    _, listing, _, _ = images
    monkeypatch.setitem(sys.modules, "PIL", None)       # import PIL fails
    status, lines = run_cli(capsys, "resize_and_crop_images", f"--input={listing}", "--image_lib=pil",
                            f"--output_folder={tmp_path / 'out'}")
    assert status == 1 and lines == ["ristretto: error: --image_lib=pil needs Pillow, an optional dependency: "
                                     "pip install 'ristretto-cli[plot]' (or pip install Pillow)"]
    assert not (tmp_path / "out").exists()
