"""``ristretto quantize`` on cases the LeNet reference run does not exercise, on a tiny
DummyData net whose ranges and integer lengths are computed by hand (ristretto.md §6,
Ristretto's src/caffe/ristretto/quantization.cpp)."""

from __future__ import annotations

import numpy as np
import pytest
from data_support import build_net, capture_log

from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.quantization.search import QuantizeOptions, quantize

Q = caffe_pb2.QuantizationParameter

# x = 1.5 everywhere, fc weights 0.25 and no bias: y = 3 * 1.5 * 0.25 = 1.125.
# TRAIN ranges of fc: max_in 1.5 -> il_in 1, max_out 1.125 -> il_out 1, max_params 0.25 -> il_params -1.
NET = """
name: "t"
layer { name: "d" type: "DummyData" top: "x" top: "label"
  dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 }
    data_filler { type: "constant" value: 1.5 } data_filler { type: "constant" value: 0 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 2 bias_term: false weight_filler { type: "constant" value: 0.25 } } }
EXTRA
layer { name: "acc" type: "Accuracy" bottom: "y" bottom: "label" top: "top1" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "y" bottom: "label" top: "loss" }
"""


def _quantize(tmp_path, mode, extra="", **kw):
    text = NET.replace("EXTRA", extra)
    net = build_net(text.replace("FcRistretto", "InnerProduct"), caffe_pb2.TRAIN)
    (tmp_path / "n.prototxt").write_text(text)
    (tmp_path / "w.caffemodel").write_bytes(net.to_proto().SerializeToString())
    out = tmp_path / "q.prototxt"
    opts = QuantizeOptions(model=str(tmp_path / "n.prototxt"), weights=str(tmp_path / "w.caffemodel"),
                           model_quantized=str(out), trimming_mode=mode, iterations=2, progress=False,
                           workers=1, **kw)
    with capture_log() as log:
        result = quantize(opts)
    written = caffe_pb2.NetParameter()
    from google.protobuf import text_format
    text_format.Parse(out.read_text(), written)
    return result, log.messages, written


def _layer(param, name):
    return next(lp for lp in param.layer if lp.name == name)


def test_dfp_hand_computed_lengths_no_bias_and_loss_as_first_output(tmp_path):
    """Outputs sorted by name: "loss" comes before "top1", so the loss is the score (Ristretto's
    score_number 0). y stays equal for both classes at every width: every width passes."""
    result, msgs, written = _quantize(tmp_path, "dynamic_fixed_point")
    assert result.score_output == "loss"
    assert result.baseline_score == pytest.approx(np.log(2), rel=1e-6)
    assert "Layer fc, integer length input=1, integer length output=1, integer length parameters=-1" in msgs
    assert result.chosen() == {"conv_weights": 1, "fc_weights": 1, "activations": 1}
    assert [p.bit_width for p in result.sweeps[1].points] == [16, 8, 4, 2, 1]
    q = _layer(written, "fc").quantization_param
    assert _layer(written, "fc").type == "FcRistretto" and not q.HasField("precision")
    assert (q.bw_layer_in, q.bw_layer_out, q.bw_params, q.fl_layer_in, q.fl_layer_out, q.fl_params) == \
        (1, 1, 1, 0, 0, 2)
    assert not written.HasField("state") and result.summary[-1] == "Please fine-tune."


def test_unquantized_layer_types_are_left_alone(tmp_path):
    extra = ('layer { name: "y4" type: "Reshape" bottom: "y" top: "y4" '
             'reshape_param { shape { dim: 2 dim: 2 dim: 1 dim: 1 } } }\n'
             'layer { name: "lrn" type: "LRN" bottom: "y4" top: "n" }\n'
             'layer { name: "dc" type: "Deconvolution" bottom: "n" top: "w" '
             'convolution_param { num_output: 1 kernel_size: 1 } }')
    for mode in ("minifloat", "integer_power_of_2_weights"):
        result, _, written = _quantize(tmp_path, mode, extra)
        assert [r.name for r in result.ranges] == ["fc"]
        assert [(lp.type, lp.HasField("quantization_param")) for lp in written.layer
                if lp.name in ("lrn", "dc")] == [("LRN", False), ("Deconvolution", False)]


def test_power_of_two_writes_exp_range_and_8bit_activations(tmp_path):
    result, _, written = _quantize(tmp_path, "integer_power_of_2_weights")
    q = _layer(written, "fc").quantization_param
    assert (q.precision, q.exp_min, q.exp_max, q.bw_layer_in, q.bw_layer_out, q.fl_layer_in,
            q.fl_layer_out) == (Q.INTEGER_POWER_OF_2_WEIGHTS, -8, -1, 8, 8, 7, 7)
    assert not q.HasField("bw_params") and not q.HasField("fl_params")
    assert result.summary[-3:-1] == ["Quantized net:", f"4bit: \t{result.summary[-2].split(chr(9))[1]}"]


def test_minifloat_widths_and_written_fields(tmp_path):
    """exp_bits stays 4 (every max <= 2 gives a non-finite exponent): 16 then 8 bits are tried."""
    result, _, written = _quantize(tmp_path, "minifloat")
    assert result.exp_bits == 4 and [p.bit_width for p in result.sweeps[0].points] == [16, 8]
    q = _layer(written, "fc").quantization_param
    assert (q.precision, q.mant_bits, q.exp_bits) == (Q.MINIFLOAT, 8 - 4 - 1, 4)
    assert result.summary[-4:] == ["Minifloat net:", f"16bit: \t{result.summary[-3].split(chr(9))[1]}",
                                   result.summary[-2], "Please fine-tune."]


_TEST_ONLY_FC = ('layer { name: "fc2" type: "InnerProduct" bottom: "y" top: "y2" include { phase: TEST } '
                 'inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.25 } } }')
_RISTRETTO_FC = ('layer { name: "fc2" type: "FcRistretto" bottom: "y" top: "y2" '
                 'inner_product_param { num_output: 2 weight_filler { type: "constant" value: 0.25 } } }')


@pytest.mark.parametrize("extra", [_TEST_ONLY_FC, _RISTRETTO_FC], ids=["test_only", "already_ristretto"])
def test_minifloat_needs_no_statistics_for_the_layers_it_converts(tmp_path, extra):
    """Minifloat mode never looks up integer lengths (Quantize2MiniFloat / EditNetDescriptionMiniFloat),
    so a converted layer without range statistics is fine there, as in Ristretto."""
    result, _, written = _quantize(tmp_path, "minifloat", extra)
    assert [r.name for r in result.ranges] == ["fc"]
    for name in ("fc", "fc2"):
        lp = _layer(written, name)
        assert lp.type == "FcRistretto"
        assert (lp.quantization_param.precision, lp.quantization_param.exp_bits) == (Q.MINIFLOAT, 4)


@pytest.mark.parametrize("mode", ["dynamic_fixed_point", "integer_power_of_2_weights"])
def test_layer_without_statistics_is_an_error_where_lengths_are_needed(tmp_path, mode):
    with pytest.raises(RistrettoError, match="no range statistics"):
        _quantize(tmp_path, mode, _TEST_ONLY_FC)
