"""Text format: byte identity with files written by C++ TextFormat::Print, the C number and
string rules, and parse errors with line:column."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_data, test_data

from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import format_message, parse_text, read_net_param, write_net_text
from ristretto_cli.io.textformat import c_escape, format_doubles, format_floats
from ristretto_cli.proto import caffe_pb2

# Files written by Caffe/Ristretto's WriteProtoToTextFile (TextFormat::Print).
BUNDLED_CAFFE_WRITTEN = [
    "reference/quantize_lenet_dfp/quantized.prototxt",  # real Ristretto quantize run
    "models/lenet/lenet_quantized.prototxt",
]
SHARED_CAFFE_WRITTEN = [
    "prototxt/ristretto_demo/quantized.prototxt",
    "prototxt/ristretto_lenet/quantized.prototxt",
    "prototxt/ristretto_lenet/lenet_quantized_minifloat.prototxt",
]


def _reformat(path) -> tuple[bytes, bytes]:
    original = path.read_bytes()
    net = parse_text(original.decode("utf-8"), caffe_pb2.NetParameter(), path)
    return original, format_message(net).encode("utf-8")


@pytest.mark.parametrize("rel", BUNDLED_CAFFE_WRITTEN)
def test_caffe_written_prototxt_is_reproduced_byte_for_byte(rel):
    original, ours = _reformat(test_data(rel))
    assert ours == original


@pytest.mark.parametrize("rel", SHARED_CAFFE_WRITTEN)
def test_more_caffe_written_prototxts_are_reproduced_byte_for_byte(rel):
    original, ours = _reformat(shared_data(rel))
    assert ours == original


def test_write_net_text_writes_the_same_bytes_as_caffe(tmp_path):
    source = test_data("reference/quantize_lenet_dfp/quantized.prototxt")
    out = tmp_path / "quantized.prototxt"
    write_net_text(out, read_net_param(source))
    assert out.read_bytes() == source.read_bytes()


@pytest.mark.parametrize("value, text", [
    (104, "104"), (0.01, "0.01"), (1e-6, "1e-06"), (0.9, "0.9"), (0.1, "0.1"),
    (0.00390625, "0.00390625"), (1.0, "1"), (-2.5, "-2.5"), (1e10, "1e+10"),
    (-0.0, "-0"), (0.0, "0"),
    # float32(1/3) needs 9 digits: "0.333333" reads back as a different float32.
    (1 / 3, "0.333333343"),
    (16777217, "16777216"),  # rounds to float32 2^24; "1.67772e+07" would not round-trip
    (3.4028234663852886e38, "3.40282347e+38"),  # FLT_MAX
    (1.401298464324817e-45, "1.4013e-45"),  # smallest denormal
    (np.inf, "inf"), (-np.inf, "-inf"), (np.nan, "nan"),
])
def test_float_formatting_follows_the_c_rule(value, text):
    assert format_floats([value]) == [text]


def test_every_float_text_reads_back_to_the_same_float32():
    rng = np.random.default_rng(7)
    scaled = rng.standard_normal(2000) * 10.0 ** rng.integers(-40, 38, 2000)
    random_bits = rng.integers(0, 2**32, 2000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    values = np.concatenate([scaled.astype(np.float32), random_bits])
    values = values[np.isfinite(values)]
    texts = format_floats(values)
    back = np.array([np.float32(t) for t in texts], dtype=np.float32)
    assert np.array_equal(back.view(np.uint32), values.view(np.uint32))
    significant = [t.lstrip("-").split("e")[0].replace(".", "").lstrip("0") for t in texts]
    assert max(len(d) for d in significant) <= 9


@pytest.mark.parametrize("value, text", [
    (0.1, "0.1"), (1 / 3, "0.33333333333333331"), (1e-8, "1e-08"), (2.0**60, "1.152921504606847e+18"),
    (np.inf, "inf"), (np.nan, "nan"),
])
def test_double_formatting_follows_the_c_rule(value, text):
    assert format_doubles([value]) == [text]


def test_strings_use_c_escapes_with_octal_for_other_bytes():
    assert c_escape(b"a\"b\\c\n\t\r'") == "a\\\"b\\\\c\\n\\t\\r\\'"
    assert c_escape(b"\x00\x01\x1f\x7f\x80\xff") == "\\000\\001\\037\\177\\200\\377"
    net = caffe_pb2.NetParameter(name="caf\u00e9 \"x\"")
    assert format_message(net) == 'name: "caf\\303\\251 \\"x\\""\n'


def test_fields_come_in_field_number_order_with_two_space_indent():
    layer = caffe_pb2.LayerParameter()
    layer.quantization_param.bw_params = 4          # field 149
    layer.include.add(phase=caffe_pb2.TEST)        # field 8
    layer.convolution_param.num_output = 8         # field 106
    layer.top.append("t")                          # field 4
    layer.name = "c"                               # field 1
    layer.param.add(lr_mult=2)                     # field 6
    layer.propagate_down.append(False)             # field 11
    layer.phase = caffe_pb2.TRAIN                  # field 10
    assert format_message(layer) == (
        'name: "c"\ntop: "t"\nparam {\n  lr_mult: 2\n}\ninclude {\n  phase: TEST\n}\n'
        "phase: TRAIN\npropagate_down: false\nconvolution_param {\n  num_output: 8\n}\n"
        "quantization_param {\n  bw_params: 4\n}\n")


def test_only_set_fields_are_printed_and_defaults_when_set_explicitly():
    pool = caffe_pb2.PoolingParameter()
    assert format_message(pool) == ""
    pool.pool = caffe_pb2.PoolingParameter.MAX  # the default value, but set
    pool.global_pooling = False
    assert format_message(pool) == "pool: MAX\nglobal_pooling: false\n"


def test_unknown_fields_print_by_number_like_cpp():
    known = caffe_pb2.NetState(phase=caffe_pb2.TEST).SerializeToString()
    unknown = (b"\x90\x03\xac\x02"                      # 50: varint 300
               b"\x9d\x03\x04\x03\x02\x01"              # 51: fixed32 0x01020304
               b"\xa1\x03\x05\x00\x00\x00\x00\x00\x00\x00"  # 52: fixed64 5
               b"\xaa\x03\x03ab\x00"                    # 53: bytes that are no message
               b"\xb2\x03\x02\x08\x07")                 # 54: a nested message {1: 7}
    state = caffe_pb2.NetState()
    state.ParseFromString(known + unknown)
    assert format_message(state) == ('phase: TEST\n50: 300\n51: 0x01020304\n52: 0x0000000000000005\n'
                                     '53: "ab\\000"\n54 {\n  1: 7\n}\n')


def test_parse_error_reports_line_and_column():
    text = 'name: "x"\nlayer {\n  name: "a"\n  typo: 1\n}\n'
    with pytest.raises(RistrettoError) as info:
        parse_text(text, caffe_pb2.NetParameter(), "net.prototxt")
    err = info.value
    assert (err.path, err.line, err.column) == ("net.prototxt", 4, 3)
    assert str(err) == 'net.prototxt:4:3: cannot parse NetParameter: unknown field "typo" in LayerParameter'


def test_parse_accepts_the_legacy_syntax_variants():
    text = "layers: { name: 'a' include: < phase: TEST > }  # comment\ninput_dim: 1 input_dim: 2"
    net = parse_text(text, caffe_pb2.NetParameter())
    assert net.layers[0].include[0].phase == caffe_pb2.TEST
    assert list(net.input_dim) == [1, 2]
