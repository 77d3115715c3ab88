"""Atomic writes: never a half-written file, no temporary left behind, clear errors."""

from __future__ import annotations

import os

import pytest

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import atomic_output, atomic_write_bytes, atomic_write_text, check_writable


def test_write_creates_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"\x00\x01abc")
    assert target.read_bytes() == b"\x00\x01abc"
    atomic_write_text(target, "replaced\n")
    assert target.read_text() == "replaced\n"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_new_file_gets_the_usual_permissions_and_a_replaced_file_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        new = tmp_path / "new.txt"
        atomic_write_text(new, "x")
        assert new.stat().st_mode & 0o777 == 0o644
        old = tmp_path / "old.txt"
        old.write_text("y")
        old.chmod(0o600)
        atomic_write_text(old, "z")
        assert old.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(umask)


def test_failure_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "model.caffemodel"
    target.write_bytes(b"old content")
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"half of the new")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["model.caffemodel"]


def test_failing_rename_is_reported_and_cleaned_up(tmp_path, monkeypatch):
    target = tmp_path / "x.prototxt"

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(RistrettoError) as info:
        atomic_write_text(target, "name: 'n'\n")
    assert str(info.value) == f"{target}: cannot write: permission denied"
    assert os.listdir(tmp_path) == []


def test_missing_folder(tmp_path):
    target = tmp_path / "no" / "such" / "out.prototxt"
    with pytest.raises(RistrettoError) as info:
        atomic_write_text(target, "x")
    assert str(info.value) == f"{target}: cannot write: folder does not exist"
    with pytest.raises(RistrettoError, match="folder does not exist"):
        check_writable(target)


def test_output_path_is_a_directory(tmp_path):
    with pytest.raises(RistrettoError) as info:
        atomic_write_bytes(tmp_path, b"x")
    assert str(info.value) == f"{tmp_path}: cannot write: is a directory"
    assert os.listdir(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(RistrettoError, match="cannot write: folder is not a directory"):
        check_writable(tmp_path / "f" / "out")


def test_read_only_folder(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    # os.access answers as the kernel would for a folder without write permission (a chmod
    # would not do here: the tests may run as root, who may write anywhere).
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(folder))
    with pytest.raises(RistrettoError) as info:
        check_writable(folder / "out")
    assert str(info.value) == f"{folder / 'out'}: cannot write: permission denied (folder not writable)"


def test_check_writable_neither_creates_nor_deletes(tmp_path):
    target = tmp_path / "out.caffemodel"
    check_writable(target)
    assert not target.exists()
    target.write_bytes(b"keep")
    check_writable(target)
    assert target.read_bytes() == b"keep"
    assert os.listdir(tmp_path) == ["out.caffemodel"]
