"""The bad-input corpus (tests/data/bad, see its README): one ``ristretto: error:`` line
naming the file (and line:column for text), exit status 1, and no output left behind.

The corpus goes through the two commands that read nets (``upgrade_net_proto_text`` for
text, ``upgrade_net_proto_binary`` for binary/HDF5). Solver and solver-state files are read
by no command yet, so those two cases call the readers directly and check the same message.
"""

from __future__ import annotations

import os

import pytest
from conftest import test_data
from io_support import run_cli

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import read_solver_param, read_solverstate

TEXT = "upgrade_net_proto_text"
BINARY = "upgrade_net_proto_binary"

# file, command, (line, column) or None, expected message after the location
CASES = [
    ("syntax_error.prototxt", TEXT, (7, 3), 'cannot parse NetParameter: syntax error: Expected "}".'),
    ("unknown_field.prototxt", TEXT, (4, 3),
     'cannot parse NetParameter: unknown field "tpye" in LayerParameter'),
    ("unknown_enum.prototxt", TEXT, (6, 11),
     "cannot parse NetParameter: unknown value MAXIMUM for enum PoolingParameter.PoolMethod"),
    ("duplicate_field.prototxt", TEXT, (7, 17), 'cannot parse NetParameter: field "num_output" of '
     "ConvolutionParameter given more than once (it is not a repeated field)"),
    ("wrong_value_type.prototxt", TEXT, (4, 9),
     "cannot parse NetParameter: syntax error: Expected string but found: 'Convolution'"),
    ("out_of_range.prototxt", TEXT, (6, 17), "cannot parse NetParameter: Value out of range: -10"),
    ("missing_required.prototxt", TEXT, None,
     "cannot parse NetParameter: missing required field(s): layer[0].clip_param.max"),
    ("empty.prototxt", TEXT, None, "cannot parse NetParameter: the file is empty"),
    ("mixed_v1_v2.prototxt", TEXT, None, "Refusing to upgrade inconsistent NetParameter input; the "
     "definition includes both 'layer' and 'layers' fields. The current format defines 'layer' "
     "fields with string type like layer { type: 'Layer' ... } and not layers { type: LAYER ... }. "
     "Manually switch the definition to 'layer' format to continue."),
    ("v0_padding_into_relu.prototxt", TEXT, None,
     "layer 'relu1': Padding layer input to non-convolutional / non-pooling layer type relu"),
    ("v0_unknown_type.prototxt", TEXT, None,
     "layer 'mystery': Unknown layer name: convolution (not a V0 layer type)"),
    ("v0_unknown_blob.prototxt", TEXT, None, "layer 'relu1': Unknown blob input nowhere (bottom 0): "
     "no net input or earlier layer produces it"),
    ("input_dim_short.prototxt", TEXT, None, "1 net input(s) need 4 input_dim values, found 3"),
    ("truncated.caffemodel", BINARY, None,
     "not a valid binary NetParameter: truncated or corrupt protobuf data"),
    ("random_bytes.caffemodel", BINARY, None,
     "not a valid binary NetParameter: truncated or corrupt protobuf data"),
    ("non_utf8_name.caffemodel", BINARY, None, "not a valid binary NetParameter: corrupt protobuf "
     "data (layer[0].name is not UTF-8 text)"),
    ("text_as_binary.caffemodel", BINARY, None, "not a valid binary NetParameter: truncated or "
     "corrupt protobuf data (it looks like a text file)"),
    ("double_count_mismatch.caffemodel", BINARY, None, "layer 'ip1': not a valid binary NetParameter: "
     "param 0: blob data has 5 values in double_data, but its shape 2 x 3 needs 6"),
    ("legacy_count_mismatch.caffemodel", BINARY, None, "layer 'ip1': not a valid binary "
     "NetParameter: param 0: blob data has 10 values in data, but its shape 1 x 1 x 4 x 3 needs 12"),
    ("not_weights.h5", BINARY, None, "not a valid Caffe HDF5 weights file: it has no /data group"),
    ("empty.prototxt", BINARY, None, "not a valid binary NetParameter: the file is empty"),
]


def _check_one_error_line(lines: list[str], prefix: str, expected: str) -> None:
    errors = [line for line in lines if line.startswith("ristretto: error: ")]
    assert len(errors) == 1, lines
    assert lines[-1] == errors[0]
    assert errors[0] == prefix + expected


@pytest.mark.parametrize("name, command, location, expected", CASES,
                         ids=[f"{c[1].rsplit('_', 1)[1]}-{c[0]}" for c in CASES])
def test_bad_file_gives_one_error_line_and_no_output(name, command, location, expected, capsys,
                                                     tmp_path):
    source = test_data(f"bad/{name}")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    status, lines = run_cli(capsys, command, source, out_dir / "result")
    where = f"{source}:{location[0]}:{location[1]}" if location else str(source)
    _check_one_error_line(lines, f"ristretto: error: {where}: ", expected)
    assert status == 1
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("command", [TEXT, BINARY])
def test_missing_input_file(command, capsys, tmp_path):
    missing = tmp_path / "no_such.prototxt"
    status, lines = run_cli(capsys, command, missing, tmp_path / "out")
    _check_one_error_line(lines, f"ristretto: error: {missing}: ", "cannot read: No such file or directory")
    assert status == 1 and os.listdir(tmp_path) == []


def test_output_folder_missing(capsys, tmp_path):
    target = tmp_path / "missing" / "out.prototxt"
    status, lines = run_cli(capsys, TEXT, test_data("models/lenet_v1/lenet.prototxt"), target)
    _check_one_error_line(lines, f"ristretto: error: {target}: ", "cannot write: folder does not exist")
    assert status == 1 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("command, source", [(TEXT, "models/lenet_v1/lenet.prototxt"),
                                             (BINARY, "models/lenet_v1/lenet_iter_10000.caffemodel")])
def test_output_path_is_a_directory(command, source, capsys, tmp_path):
    status, lines = run_cli(capsys, command, test_data(source), tmp_path)
    _check_one_error_line(lines, f"ristretto: error: {tmp_path}: ", "cannot write: is a directory")
    assert status == 1 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("name, reader, expected", [
    ("both_solver_types.prototxt", read_solver_param, "Failed to upgrade solver: old solver_type "
     "field (enum) and new type field (string) cannot be both specified in solver proto text."),
    ("truncated.solverstate", read_solverstate,
     "not a valid solver state: truncated or corrupt protobuf data"),
])
def test_bad_solver_files_name_the_file(name, reader, expected):
    source = test_data(f"bad/{name}")
    with pytest.raises(RistrettoError) as info:
        reader(source)
    assert f"ristretto: error: {info.value}" == f"ristretto: error: {source}: {expected}"


def test_every_corpus_file_is_described_and_used():
    folder = test_data("bad")
    files = sorted(p.name for p in folder.iterdir() if p.name != "README.md")
    readme = (folder / "README.md").read_text()
    assert len(files) >= 15
    assert all(f"`{name}`" in readme for name in files)
    used = {c[0] for c in CASES} | {"both_solver_types.prototxt", "truncated.solverstate"}
    assert set(files) == used
