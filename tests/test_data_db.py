"""LMDB/LevelDB readers and writers, and convert_mnist_data against Caffe's own LMDB."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_data

from ristretto_cli.data import db as dbmod
from ristretto_cli.data.db import DBCursor, DBWriter, iterate_db
from ristretto_cli.data.tools import convert_mnist_data, load_mnist
from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2

BACKENDS = ["lmdb", "leveldb"]


def _lmdb_records(path) -> list[tuple[bytes, bytes]]:
    """All records, read by the lmdb package directly in a separate process: independent of
    our reader, and unaffected by environments this process keeps open (LMDB forbids opening
    one environment twice in a process)."""
    code = ("import lmdb, pickle, sys\n"
            "env = lmdb.open(sys.argv[1], readonly=True, lock=False)\n"
            "with env.begin() as txn:\n"
            "    sys.stdout.buffer.write(pickle.dumps(list(txn.cursor())))\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, check=True).stdout
    return pickle.loads(out)


@pytest.mark.slow
def test_convert_mnist_data_equals_caffes_lmdb_record_for_record(tmp_path):
    ours = tmp_path / "mnist_test_lmdb"
    n = convert_mnist_data(shared_data("mnist/t10k-images-idx3-ubyte.gz"),
                           shared_data("mnist/t10k-labels-idx1-ubyte.gz"), ours, "lmdb", progress=False)
    assert n == 10000
    theirs = _lmdb_records(shared_data("reference/mnist_test_lmdb"))
    mine = _lmdb_records(ours)
    assert len(mine) == len(theirs) == 10000
    assert [k for k, _ in mine] == [b"%08d" % i for i in range(10000)]
    assert mine == theirs  # keys and serialized Datum bytes, all 10000
    # And as messages: the images and labels of the IDX files.
    pixels, labels = load_mnist(shared_data("mnist/t10k-images-idx3-ubyte.gz"),
                                shared_data("mnist/t10k-labels-idx1-ubyte.gz"))
    for i in (0, 1, 4999, 9999):
        d = caffe_pb2.Datum.FromString(theirs[i][1])
        assert (d.channels, d.height, d.width, d.label) == (1, 28, 28, labels[i])
        assert d.data == pixels[i].tobytes() and not d.HasField("encoded")
    assert oct(os.stat(ours).st_mode & 0o777) != oct(0o700)  # a normal folder, not mkdtemp's


def test_convert_mnist_data_reads_raw_idx_too_and_checks_magic(tmp_path):
    pixels = (np.arange(3 * 4 * 5) % 256).astype(np.uint8).reshape(3, 4, 5)
    img = tmp_path / "img.idx"
    lab = tmp_path / "lab.idx.gz"
    img.write_bytes(np.array([2051, 3, 4, 5], ">u4").tobytes() + pixels.tobytes())
    lab.write_bytes(gzip.compress(np.array([2049, 3], ">u4").tobytes() + bytes([1, 2, 200])))
    convert_mnist_data(img, lab, tmp_path / "db", "lmdb", progress=False)
    recs = _lmdb_records(tmp_path / "db")
    assert [k for k, _ in recs] == [b"00000000", b"00000001", b"00000002"]
    d = caffe_pb2.Datum.FromString(recs[2][1])
    assert d.data == pixels[2].tobytes() and (d.height, d.width) == (4, 5)
    assert d.label == -56  # the C++ tool passes the label through a signed char
    with pytest.raises(RistrettoError, match="Incorrect label file magic"):
        convert_mnist_data(img, img, tmp_path / "db2", "lmdb", progress=False)
    with pytest.raises(RistrettoError, match="Incorrect image file magic"):
        convert_mnist_data(lab, lab, tmp_path / "db2", "lmdb", progress=False)
    with pytest.raises(RistrettoError, match="already exists"):
        convert_mnist_data(img, lab, tmp_path / "db", "lmdb", progress=False)
    img.write_bytes(img.read_bytes()[:-1])
    with pytest.raises(RistrettoError, match="truncated"):
        convert_mnist_data(img, lab, tmp_path / "db3", "lmdb", progress=False)
    assert not (tmp_path / "db3").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "img.idx", "lab.idx.gz"]  # no temp folders


@pytest.mark.parametrize("backend", BACKENDS)
def test_reader_key_order_wraparound_and_state(tmp_path, backend):
    path = tmp_path / "db"
    keys = [b"b", b"a", b"ab", b"\xff", b"B", b"0"]
    with DBWriter(path, backend) as w:
        for k in keys:
            w.put(k, b"v" + k)
    restarts = []
    cur = DBCursor(path, backend, on_restart=lambda: restarts.append(1))
    order = sorted(keys)  # byte-wise: b"0" < b"B" < b"a" < b"ab" < b"b" < b"\xff"
    assert [k for k, _ in cur.read(6)] == order and len(restarts) == 1
    batch = cur.read(8)  # larger than the DB: wraps again inside the batch
    assert [k for k, _ in batch] == order + order[:2] and len(restarts) == 2
    assert [v for _, v in batch] == [b"v" + k for k in order + order[:2]]
    state = cur.get_state()
    nxt = cur.read(3)
    cur.set_state(state)
    assert cur.read(3) == nxt
    assert cur.records_read == 6 + 8 + 3 + 3
    assert list(iterate_db(path, backend)) == [(k, b"v" + k) for k in order]
    cur.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_writer_commits_every_1000_puts(tmp_path, backend, monkeypatch):
    commits = []
    real = DBWriter.commit

    def counting(self):
        commits.append(len(self._pending))
        real(self)

    monkeypatch.setattr(DBWriter, "commit", counting)
    with DBWriter(tmp_path / "db", backend) as w:
        for i in range(2500):
            w.put(f"{i:08d}", b"x")
    assert [c for c in commits if c] == [1000, 1000, 500]
    assert sum(1 for _ in iterate_db(tmp_path / "db", backend)) == 2500


def test_writer_failure_leaves_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with DBWriter(tmp_path / "db", "lmdb") as w:
            w.put("a", b"1")
            raise ZeroDivisionError
    assert list(tmp_path.iterdir()) == []


def test_lmdb_map_grows_when_full(tmp_path, monkeypatch):
    monkeypatch.setattr(dbmod, "_LMDB_INITIAL_MAP", 64 * 1024)
    with DBWriter(tmp_path / "db", "lmdb", commit_every=50) as w:
        for i in range(200):
            w.put(f"{i:04d}", bytes(2000))
    assert sum(1 for _ in iterate_db(tmp_path / "db", "lmdb")) == 200


def test_reader_errors_name_the_path(tmp_path):
    with pytest.raises(RistrettoError, match="No such file or directory") as e:
        DBCursor(tmp_path / "nope", "lmdb")
    assert str(tmp_path / "nope") in str(e.value)
    with DBWriter(tmp_path / "empty", "lmdb"):
        pass
    with pytest.raises(RistrettoError, match="empty") as e:
        DBCursor(tmp_path / "empty", "lmdb")
    assert str(tmp_path / "empty") in str(e.value)
    with pytest.raises(RistrettoError, match="backend: LMDB"):
        DBCursor(tmp_path / "empty", "leveldb")  # Caffe's default backend on an LMDB
    with DBWriter(tmp_path / "ldb", "leveldb") as w:
        w.put("k", b"v")
    with pytest.raises(RistrettoError, match="is a LevelDB"):
        DBCursor(tmp_path / "ldb", "lmdb")
    (tmp_path / "plain").mkdir()
    with pytest.raises(RistrettoError, match="no data.mdb"):
        DBCursor(tmp_path / "plain", "lmdb")
    with pytest.raises(RistrettoError, match="unknown DB backend"):
        DBCursor(tmp_path / "plain", "rocksdb")


def test_leveldb_without_plyvel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "plyvel", None)
    with pytest.raises(RistrettoError, match=r"pip install 'ristretto-cli\[leveldb\]'"):
        DBWriter(tmp_path / "db", "leveldb")
    assert list(tmp_path.iterdir()) == []


def test_two_readers_of_one_leveldb_share_the_handle(tmp_path):
    with DBWriter(tmp_path / "db", "leveldb") as w:
        for i in range(5):
            w.put(f"{i}", b"%d" % i)
    a = DBCursor(tmp_path / "db", "leveldb")
    b = DBCursor(tmp_path / "db", "leveldb")  # LevelDB's lock would refuse a second open
    assert a.read(2) == b.read(2)
