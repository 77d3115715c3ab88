"""The committed bindings in ristretto_cli/proto are what proto/caffe.proto generates
(`make proto`): an edit to the schema without regenerating fails here."""

from __future__ import annotations

import pytest
from conftest import REPO


def test_committed_bindings_match_the_schema(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (the test extra) generates them")
    status = protoc.main(["protoc", f"-I{REPO / 'proto'}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
                          str(REPO / "proto" / "caffe.proto")])
    assert status == 0
    for name in ("caffe_pb2.py", "caffe_pb2.pyi"):
        generated = (tmp_path / name).read_bytes()
        committed = (REPO / "ristretto_cli" / "proto" / name).read_bytes()
        assert committed == generated, f"ristretto_cli/proto/{name} is stale: run `make proto`"
