"""convert_imageset edge cases checked against Caffe 1.0's tools/convert_imageset.cpp and
src/caffe/util/io.cpp (ReadImageToDatum, matchExt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from conftest import shared_data, test_data
from data_support import message, run_cli

from ristretto_cli.data.db import iterate_db
from ristretto_cli.data.tools import convert_imageset
from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

CIFAR = sorted(test_data("images/foolbox_cifar10").glob("*.png"))


def records(path, backend="lmdb"):
    return [(k, caffe_pb2.Datum.FromString(v)) for k, v in iterate_db(path, backend)]


def test_blank_lines_keep_caffes_line_ids(tmp_path, capsys):
    # Caffe numbers keys by getline line (a blank line is an entry it skips), and its
    # "A total of" counts every line.
    lst = tmp_path / "l.txt"
    lst.write_text(f"{CIFAR[0]} 1\n\n{CIFAR[1]} 2\n   \n{CIFAR[2]} 3\n")
    status, lines = run_cli(capsys, "convert_imageset", "", lst, tmp_path / "db")
    assert status == 0, lines[-2:]
    keys = [k for k, _ in records(tmp_path / "db")]
    assert keys == [f"00000000_{CIFAR[0]}".encode(), f"00000002_{CIFAR[1]}".encode(),
                    f"00000004_{CIFAR[2]}".encode()]
    msgs = [message(x) for x in lines]
    assert "A total of 5 images." in msgs and msgs[-1] == "Processed 3 files."


def test_unknown_encode_type_is_one_line_error(tmp_path, capsys):
    lst = tmp_path / "l.txt"
    lst.write_text(f"{CIFAR[0]} 1\n")
    with pytest.raises(RistrettoError) as e:
        convert_imageset("", str(lst), tmp_path / "a", encode_type="xyz", progress=False)
    assert str(CIFAR[0]) in str(e.value) and "xyz" in str(e.value)
    status, lines = run_cli(capsys, "convert_imageset", "", lst, tmp_path / "b", "--encode_type=xyz")
    assert status == 1 and "Traceback" not in "".join(lines)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_encoded_with_one_resize_size_reencodes(tmp_path):
    # io.cpp: no resize unless both sizes are > 0, but the file's own bytes are kept only
    # when both are 0, so a lone --resize_height re-encodes the (unresized) image.
    cat = str(shared_data("images/caffe/cat.jpg"))
    lst = tmp_path / "l.txt"
    lst.write_text(f"{cat} 5\n")
    convert_imageset("", str(lst), tmp_path / "db", encoded=True, resize_height=10, progress=False)
    (_, d), = records(tmp_path / "db")
    want = cv2.imencode(".jpg", cv2.imread(cat))[1].tobytes()
    assert d.encoded and d.label == 5 and d.data == want


def test_match_ext_looks_at_the_whole_path(tmp_path):
    # matchExt is given ROOTFOLDER + path: a file named "png" under a folder without a dot
    # has the extension "<whole path>", so it is re-encoded, not copied.
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(CIFAR[0], root / "png")
    lst = tmp_path / "l.txt"
    lst.write_text("png 0\n")
    convert_imageset(f"{root}/", str(lst), tmp_path / "db", encode_type="png", progress=False)
    (_, d), = records(tmp_path / "db")
    want = cv2.imencode(".png", cv2.imread(str(CIFAR[0])))[1].tobytes()
    assert want != CIFAR[0].read_bytes() and d.data == want


def test_non_utf8_file_names(tmp_path):
    # Caffe's keys hold the list's bytes; OpenCV's imread crashes on such a str in Python,
    # so run it in a child process.
    root = os.fsencode(tmp_path) + b"/"
    shutil.copy(os.fsencode(CIFAR[0]), root + b"caf\xe9.png")
    (tmp_path / "l.txt").write_bytes(b"caf\xe9.png 4\n")
    code = ("import sys; from ristretto_cli.data.tools import convert_imageset; "
            "convert_imageset(sys.argv[1], sys.argv[2], sys.argv[3], progress=False)")
    done = subprocess.run([sys.executable, "-c", code, root, os.fsencode(tmp_path / "l.txt"),
                           os.fsencode(tmp_path / "db")], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    (key, d), = records(tmp_path / "db")
    assert key == b"00000000_caf\xe9.png" and d.label == 4
    np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 32, 32),
                                  cv2.imread(str(CIFAR[0])).transpose(2, 0, 1))
