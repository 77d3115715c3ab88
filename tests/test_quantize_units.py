"""``ristretto quantize`` parts on small inputs: range statistics, integer lengths, net edits,
the choice rule, boundary snapshots, and the engine against plain sequential scoring.

Self-contained: the nets read a 20-image MNIST LMDB made here from the bundled PNGs.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import test_data
from data_support import build_net, capture_log, net_param  # noqa: F401

from ristretto_cli.errors import RistrettoError
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.quantization import edit as E
from ristretto_cli.quantization.engine import live_blobs, restore, source_count, take_snapshot
from ristretto_cli.quantization.ranges import (
    IntegerLengths,
    LayerRange,
    RangeRecorder,
    abs_max,
    integer_lengths,
    minifloat_exp_bits,
    minifloat_exponent,
)
from ristretto_cli.quantization.search import Point, QuantizeOptions, _halvings, choose, quantize

F = np.float32


# ---------------------------------------------------------------------- ranges
def test_abs_max_follows_find_max():
    assert abs_max(np.array([-3.5, 2.0], F)) == F(3.5)
    assert abs_max(np.array([np.nan, -1.0, np.nan], F)) == F(1.0)  # NaN skipped
    assert abs_max(np.array([np.nan], F)) == F(-10)                # nothing but NaN: the start value
    assert abs_max(np.zeros(0, F)) == F(-10)                       # empty blob
    assert abs_max(np.array([-np.inf, 1], F)) == F(np.inf)


_STATS_NET = """
name: "s"
layer { name: "d" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 2 dim: 4 } data_filler { type: "constant" value: -1.5 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y"
  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0.25 }
                        bias_filler { type: "constant" value: 7 } } }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "drop" type: "Dropout" bottom: "y" top: "y" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc2" type: "InnerProduct" bottom: "y" top: "z"
  inner_product_param { num_output: 1 weight_filler { type: "constant" value: -0.5 } } }
layer { name: "dc" type: "Deconvolution" bottom: "x4" top: "w" convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "x4r" type: "Reshape" bottom: "x" top: "x4" reshape_param { shape { dim: 2 dim: 4 dim: 1 dim: 1 } } }
"""


def test_ranges_are_measured_after_the_whole_pass():
    """fc's top is measured after the in-place ReLU and Dropout's x2 (TRAIN), and fc2's input is
    the same scaled blob; Deconvolution is not measured; weights only (bias 7 ignored)."""
    text = _STATS_NET.replace('layer { name: "dc"', '#').replace('layer { name: "x4r"', '#')
    net = build_net(text, caffe_pb2.TRAIN)
    rec = RangeRecorder()
    net.forward()
    rec.update(net)
    y = net.blobs["y"].data
    kept = y[y != 0]
    assert kept.size and np.allclose(kept, 2 * 5.5)  # relu(0.25 * -1.5 * 4 + 7) = 5.5, doubled
    fc, fc2 = rec.layers
    assert (fc.name, fc.type, fc2.name) == ("fc", "InnerProduct", "fc2")
    assert fc.max_in == F(1.5) and fc.max_out == F(11) and fc.max_params == F(0.25)
    assert fc2.max_in == F(11) and fc2.max_params == F(0.5)
    assert rec.find("fc") is fc and rec.find("nope") is None


def test_only_exact_convolution_and_inner_product_types_are_measured():
    net = build_net("""
name: "t"
layer { name: "d" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 1 dim: 1 dim: 3 dim: 3 } data_filler { type: "constant" value: 2 } } }
layer { name: "dc" type: "Deconvolution" bottom: "x" top: "a" convolution_param { num_output: 1 kernel_size: 1
  weight_filler { type: "constant" value: 1 } } }
layer { name: "cr" type: "ConvolutionRistretto" bottom: "a" top: "b" convolution_param { num_output: 1 kernel_size: 1
  weight_filler { type: "constant" value: 1 } } }
layer { name: "c" type: "Convolution" bottom: "b" top: "c" convolution_param { num_output: 1 kernel_size: 1
  weight_filler { type: "constant" value: -3 } } }
""", caffe_pb2.TRAIN)
    rec = RangeRecorder()
    for _ in range(2):
        net.forward()
        rec.update(net)
    assert [r.name for r in rec.layers] == ["c"]
    assert (rec.layers[0].max_in, rec.layers[0].max_out, rec.layers[0].max_params) == (F(2), F(6), F(3))
    assert rec.passes == 2


@pytest.mark.parametrize("maximum, il", [(151.3, 8), (300, 9), (0.99609375, 0), (3.4413142, 2), (1.0, 0),
                                         (1.0000001, 1), (0.5, -1), (128, 7), (128.00002, 7), (128.0001, 8)])
def test_activation_integer_length(maximum, il):
    """float32 log2, then ceil: just above 128 the float32 log2 is still exactly 7.0."""
    rec = LayerRange("l", "Convolution", F(maximum), F(maximum), F(maximum))
    assert integer_lengths(rec, params=False).il_in == il


@pytest.mark.parametrize("maximum, il", [(0.93, 1), (0.5327165, 1), (0.2193882, -1), (0.10287415, -2),
                                         (0.2655157, 0), (1.0, 1), (0.25, -1)])
def test_parameter_integer_length_counts_the_sign(maximum, il):
    """``ceil(log2(max) + 1)``: the LeNet values of the reference log (conv1 1, conv2 -1, ip1 -2, ip2 0)."""
    assert integer_lengths(LayerRange("l", "Convolution", F(1), F(1), F(maximum))).il_params == il


def test_zero_maximum_is_an_error_naming_the_layer():
    with pytest.raises(RistrettoError, match=r"layer 'conv9'.*max \|output\| = 0.*no integer length"):
        integer_lengths(LayerRange("conv9", "Convolution", F(1), F(0), F(1)))
    with pytest.raises(RistrettoError, match=r"max \|weights\| = 0"):
        integer_lengths(LayerRange("c", "Convolution", F(1), F(1), F(0)))
    # minifloat ignores what has no exponent (max <= 2), as Ristretto's max() over INT_MIN does
    assert integer_lengths(LayerRange("c", "Convolution", F(1), F(1), F(0)), params=False).il_out == 0


def test_minifloat_exponent_bits():
    assert minifloat_exponent(2.0) is None and minifloat_exponent(1.0) is None and minifloat_exponent(0) is None
    assert minifloat_exponent(3.0) == 1
    assert minifloat_exponent(30.0) == 3          # log2(log2(30) - 1) + 1 = 2.9
    assert minifloat_exponent(2.0 ** 17) == 5     # log2(16) + 1
    assert minifloat_exponent(2.0 ** 17 * 1.01) == 6
    assert minifloat_exponent(np.inf) is None
    ranges = [LayerRange("a", "Convolution", F(1), F(30)), LayerRange("b", "Convolution", F(2.0 ** 20), F(0))]
    assert minifloat_exp_bits(ranges[:1]) == 4    # never below Ristretto's 4
    assert minifloat_exp_bits(ranges) == 6


# ---------------------------------------------------------------------- edits
_EDIT_NET = """
name: "e"
layer { name: "c1" type: "Convolution" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "c2" type: "ConvolutionRistretto" bottom: "a" top: "b" quantization_param { precision: MINIFLOAT } }
layer { name: "dc" type: "Deconvolution" bottom: "b" top: "c" }
layer { name: "f1" type: "InnerProduct" bottom: "c" top: "d" }
layer { name: "f2" type: "FcRistretto" bottom: "d" top: "e" }
layer { name: "r" type: "ReLU" bottom: "e" top: "e" }
"""
_IL = {n: IntegerLengths(n, i, i + 1, -i) for i, n in enumerate(["c1", "c2", "f1", "f2"])}


def test_dfp_edit_fields_and_type_matching():
    p = net_param(_EDIT_NET)
    E.edit_dynamic_fixed_point(p, _IL.get, conv=True, fc=False, parameters=True, activations=False, bw_conv=8)
    types = [lp.type for lp in p.layer]
    assert types == ["ConvolutionRistretto", "ConvolutionRistretto", "Deconvolution", "InnerProduct",
                     "FcRistretto", "ReLU"]
    q = p.layer[0].quantization_param
    assert (q.bw_params, q.fl_params) == (8, 8)
    assert not q.HasField("bw_layer_in") and not q.HasField("precision")  # defaults 32/16 stay implicit
    assert (p.layer[1].quantization_param.fl_params, p.layer[1].quantization_param.precision) == (9, 1)
    assert not p.layer[2].HasField("quantization_param") and not p.layer[3].HasField("quantization_param")
    E.edit_dynamic_fixed_point(p, _IL.get, conv=True, fc=True, parameters=False, activations=True,
                               bw_in=8, bw_out=4)
    q = p.layer[3].quantization_param
    assert p.layer[3].type == "FcRistretto"
    assert (q.bw_layer_in, q.fl_layer_in, q.bw_layer_out, q.fl_layer_out) == (8, 6, 4, 1)
    assert not q.HasField("bw_params")
    # fields print in number order: bw_layer_in, bw_layer_out, bw_params, fl_layer_in, fl_layer_out, fl_params
    from ristretto_cli.io import format_message
    text = format_message(p.layer[0])
    assert text.index("bw_layer_in") < text.index("bw_layer_out") < text.index("bw_params") < \
        text.index("fl_layer_in") < text.index("fl_layer_out") < text.index("fl_params")


def test_minifloat_and_power_of_two_edits_match_types_exactly():
    p = net_param(_EDIT_NET.replace('"Deconvolution"', '"ConvolutionX"'))
    E.edit_minifloat(p, 8, 4)
    assert [lp.type for lp in p.layer][:4] == ["ConvolutionRistretto", "ConvolutionRistretto", "ConvolutionX",
                                               "FcRistretto"]
    q = p.layer[0].quantization_param
    assert (q.precision, q.mant_bits, q.exp_bits) == (caffe_pb2.QuantizationParameter.MINIFLOAT, 3, 4)
    assert not p.layer[2].HasField("quantization_param")
    p = net_param(_EDIT_NET)
    E.edit_power_of_two(p)
    q = p.layer[4].quantization_param
    assert (q.precision, q.exp_min, q.exp_max) == (caffe_pb2.QuantizationParameter.INTEGER_POWER_OF_2_WEIGHTS, -8, -1)
    assert E.edited_layers(net_param(_EDIT_NET), "dfp") == ["c1", "c2", "f1", "f2"]
    assert E.edited_layers(net_param(_EDIT_NET.replace('"Deconvolution"', '"ConvolutionX"')), "dfp",
                           ("conv",)) == ["c1", "c2", "dc"]


def test_a_layer_without_statistics_is_an_error():
    lengths = E.lengths_lookup({"c1": _IL["c1"]})
    with pytest.raises(RistrettoError, match="layer 'c2': this layer would be quantized but has no range"):
        E.edit_dynamic_fixed_point(net_param(_EDIT_NET), lengths, conv=True, fc=False, parameters=True,
                                   activations=False, bw_conv=8)


# ---------------------------------------------------------------------- decisions
def _points(scores):
    return [Point("s", bw, s, True, None) for bw, s in zip([16, 8, 4, 2, 1], scores)]


def test_choice_walks_the_list_until_the_first_failure():
    assert choose(_points([0.99, 0.99, 0.97]), 0.99, 1.0) == 8
    assert choose(_points([0.97, 0.99]), 0.99, 1.0) == 32        # 16 fails: stays 32
    assert choose(_points([0.99, 0.97, 0.99]), 0.99, 1.0) == 16   # never looks past a failure
    assert choose([], 0.99, 1.0) == 32


def test_criterion_is_float_score_plus_double_margin():
    """``score + margin / 100 >= baseline`` with a float32 score widened to double: 0.98f + 0.01
    passes against 0.99f, although 0.98 + 0.01 < 0.99 in float32 arithmetic could differ."""
    base, score = float(F(0.99)), float(F(0.98))
    assert score + 1.0 / 100 >= base
    assert choose(_points([score]), base, 1.0) == 16
    assert choose(_points([float(F(0.9799))]), base, 1.0) == 32


def test_width_sequences():
    assert _halvings(16, lambda bw: bw > 0) == [16, 8, 4, 2, 1]
    assert _halvings(16, lambda bw: bw - 1 - 4 > 0) == [16, 8]
    assert _halvings(16, lambda bw: bw - 1 - 7 > 0) == [16]
    assert _halvings(16, lambda bw: bw - 1 - 15 > 0) == []


# ---------------------------------------------------------------------- boundary snapshots
_SPLIT_NET = """
name: "a"
layer { name: "d" type: "DummyData" top: "x"
  dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "constant" value: 0.3 } } }
layer { name: "p" type: "Power" bottom: "x" top: "y" power_param { scale: 2 } }
layer { name: "f" type: "Flatten" bottom: "y" top: "yf" }
layer { name: "q1" type: "Power" bottom: "yf" top: "o1" }
layer { name: "q2" type: "Power" bottom: "yf" top: "o2" }
"""


def test_snapshots_keep_shared_memory_shared():
    a, b = build_net(_SPLIT_NET), build_net(_SPLIT_NET)
    assert source_count(a) == 1
    k = a.layer_names.index("q1")  # after the Split of yf
    names = live_blobs(a, k)
    assert names == ["yf_f_0_split_0", "yf_f_0_split_1"]
    for i in range(k):
        a.forward(i, i)
    snap = take_snapshot(a, names, 0)
    assert len(snap.arrays) == 1  # two split tops, one buffer
    buffers = []
    restore(b, snap, buffers)
    s0, s1 = (b.blobs[n].data for n in names)
    assert np.shares_memory(s0, s1) and not np.shares_memory(s0, a.blobs[names[0]].data)
    s0 *= 10  # an in-place trim by one consumer reaches the other, as in Caffe
    assert np.allclose(s1, 6) and np.allclose(snap.arrays[0], 0.6)  # the record itself is untouched
    b.forward(k, len(b.layers) - 1)
    assert np.allclose(b.blobs["o1"].data, 6) and np.allclose(b.blobs["o2"].data, 6)


# ---------------------------------------------------------------------- engine vs plain
@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory):
    """A folder with examples/mnist/mnist_{test,train}_lmdb = the 20 bundled MNIST images, and
    LeNet's prototxt with batches of 4 (5 distinct test batches)."""
    from ristretto_cli.data.tools import convert_imageset
    folder = tmp_path_factory.mktemp("tiny_mnist")
    images = test_data("images/foolbox_mnist")
    names = sorted(p.name for p in images.iterdir() if p.suffix == ".png")
    (folder / "list.txt").write_text("".join(f"{n} {n.rsplit('_', 1)[1][:-4]}\n" for n in names))
    (folder / "examples" / "mnist").mkdir(parents=True)
    for db in ("mnist_test_lmdb", "mnist_train_lmdb"):
        convert_imageset(str(images) + "/", str(folder / "list.txt"), str(folder / "examples" / "mnist" / db),
                         gray=True, backend="lmdb")
    text = test_data("models/lenet/lenet_train_test.prototxt").read_text()
    (folder / "lenet.prototxt").write_text(text.replace("batch_size: 64", "batch_size: 4")
                                           .replace("batch_size: 100", "batch_size: 4"))
    return folder


def _scoring_lines(messages):
    keep = ("Running for", "Batch ", "Loss: ", "accuracy = ", "loss = ", "Layer ")
    return [m for m in messages if m.startswith(keep)]


def _run(folder, monkeypatch, tmp_path, name, **kw):
    monkeypatch.chdir(folder)
    out = tmp_path / f"{name}.prototxt"
    opts = QuantizeOptions(model="lenet.prototxt", weights=str(test_data("models/lenet/lenet_iter_10000.caffemodel")),
                           model_quantized=str(out), iterations=kw.pop("iterations", 5), error_margin=0.5,
                           progress=False, **kw)
    with capture_log() as log:
        result = quantize(opts)
    return result, log.messages, out.read_bytes()


@pytest.mark.parametrize("mode", ["dynamic_fixed_point", "minifloat", "integer_power_of_2_weights"])
def test_engine_gives_exactly_the_plain_sequential_results(tiny_mnist, monkeypatch, tmp_path, mode):
    """Worker threads, recorded batches and prefixes, replayed identical nets and the streamed
    fallback (no memory for records) all log exactly what plain nets, one after another, log."""
    plain, plain_log, plain_file = _run(tiny_mnist, monkeypatch, tmp_path, "plain", trimming_mode=mode,
                                        plain=True, workers=1, semantics="caffe-cpu")
    assert plain.engine["plain"] and plain.engine["workers"] == 1
    for name, kw in (("fast", dict(workers=2)), ("stream", dict(workers=3, memory_mb=0))):
        got, got_log, got_file = _run(tiny_mnist, monkeypatch, tmp_path, name, trimming_mode=mode,
                                      semantics="caffe-cpu", **kw)
        assert _scoring_lines(got_log) == _scoring_lines(plain_log), name
        assert got.summary == plain.summary and got_file == plain_file
        assert got.engine["workers"] == kw["workers"]
    assert plain.summary[-1] == "Please fine-tune."


def test_fc_sweep_starts_after_the_float_layers(tiny_mnist, monkeypatch, tmp_path):
    result, _, _ = _run(tiny_mnist, monkeypatch, tmp_path, "fc", trimming_mode="dynamic_fixed_point", workers=2)
    conv, fc, act = result.sweeps
    assert result.baseline.how == "full net, data read once"
    assert all(p.run.how == "full net" for p in conv.points + act.points)
    assert all(p.run.how == "from layer 'ip1' on" for p in fc.points)


def test_report_and_plot_describe_the_same_points(tiny_mnist, monkeypatch, tmp_path):
    import json

    from ristretto_cli.quantization.plot import png_size, read_png_summary
    result, _, _ = _run(tiny_mnist, monkeypatch, tmp_path, "rp", trimming_mode="minifloat",
                        report=str(tmp_path / "r.json"), plot=str(tmp_path / "p.png"))
    report = json.loads((tmp_path / "r.json").read_text())
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and png_size(data) == (900, 720)
    summary = read_png_summary(data)
    assert summary == result.plot_summary == report["plot"]
    assert [s["points"] for s in summary["series"]] == [len(s["points"]) for s in report["sweeps"]]
    assert [s["bit_widths"] for s in summary["series"]] == [[p["bit_width"] for p in s["points"]]
                                                            for s in report["sweeps"]]
    assert report["exp_bits"] == result.exp_bits >= 4 and report["final"]["label"].startswith(
        f"{report['chosen']['minifloat']}bit minifloat")
    assert report["points"] and all({"accuracy", "loss"} == set(p["outputs"]) for p in report["points"])
