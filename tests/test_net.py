"""Net construction as Caffe does it: filtering, splits, outputs, sharing, backward analysis."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf import text_format

from ristretto_cli import parallel
from ristretto_cli.errors import RistrettoError
from ristretto_cli.net import TEST, TRAIN, Net
from ristretto_cli.proto import caffe_pb2


def net_param(text: str) -> caffe_pb2.NetParameter:
    return text_format.Parse(text, caffe_pb2.NetParameter())


def build(text: str, phase=TEST, **kw) -> Net:
    return Net(net_param(text), phase, **kw)


INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'


def test_include_exclude_rules_follow_the_state():
    text = INPUT + """
    layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
    layer { name: "b" type: "ReLU" bottom: "x" top: "b" exclude { phase: TRAIN } }
    layer { name: "c" type: "ReLU" bottom: "x" top: "c" include { min_level: 2 } }
    layer { name: "d" type: "ReLU" bottom: "x" top: "d" include { stage: "s1" stage: "s2" } }
    layer { name: "e" type: "ReLU" bottom: "x" top: "e" include { not_stage: "s1" } }
    layer { name: "f" type: "ReLU" bottom: "x" top: "f" include { stage: "" } }
    """
    names = lambda n: [name for name in n.layer_names if "split" not in name]  # noqa: E731
    assert names(build(text, TRAIN)) == ["in", "a", "e"]
    assert names(build(text, TEST)) == ["in", "b", "e"]
    assert names(build(text, TEST, level=2)) == ["in", "b", "c", "e"]
    assert names(build(text, TEST, stages=["s1", "s2"])) == ["in", "b", "d"]
    # Caffe's tools add the empty stage when --stage is not given
    assert names(build(text, TEST, stages=[""])) == ["in", "b", "e", "f"]


def test_include_and_exclude_together_is_an_error():
    text = INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } exclude { phase: TEST } }'
    with pytest.raises(RistrettoError, match="either include rules or exclude rules") as err:
        build(text)
    assert err.value.layer == "a"


def test_split_layers_are_named_and_wired_as_caffe_does():
    text = INPUT + """
    layer { name: "r" type: "ReLU" bottom: "x" top: "x" }
    layer { name: "a" type: "Sigmoid" bottom: "x" top: "a" }
    layer { name: "b" type: "TanH" bottom: "x" top: "b" }
    """
    net = build(text)
    assert net.layer_names == ["in", "r", "x_r_0_split", "a", "b"]
    split = net.layers[2]
    assert list(split.param.top) == ["x_r_0_split_0", "x_r_0_split_1"]
    assert list(net.layers[3].param.bottom) == ["x_r_0_split_0"]
    assert list(net.layers[4].param.bottom) == ["x_r_0_split_1"]
    net.blobs["x"].data[...] = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    net.forward()
    # split tops alias the producer's values (no copy), as in Caffe
    assert net.blobs["x_r_0_split_0"].data is net.blobs["x"].data
    np.testing.assert_allclose(net.blobs["b"].data, np.tanh(np.maximum(net.blobs["x"].data, 0)))


def test_outputs_are_sorted_by_name_not_by_layer_order():
    text = INPUT + """
    layer { name: "z" type: "ReLU" bottom: "x" top: "zz" }
    layer { name: "a" type: "Sigmoid" bottom: "x" top: "aa" }
    layer { name: "m" type: "TanH" bottom: "x" top: "mm" }
    """
    assert build(text).output_names == ["aa", "mm", "zz"]


def test_loss_weight_on_a_consumed_top_moves_to_the_split():
    text = INPUT + """
    layer { name: "lbl" type: "Input" top: "y" input_param { shape { dim: 2 dim: 3 } } }
    layer { name: "s" type: "Sigmoid" bottom: "x" top: "s" loss_weight: 2 }
    layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "y" top: "loss" }
    """
    net = build(text)
    split = net.layer_by_name("s_s_0_split")
    assert list(split.param.top) == ["s_s_0_split_0", "s_s_0_split_1"]
    assert list(split.param.loss_weight) == [2, 0]
    assert list(net.layer_by_name("loss").param.bottom) == ["s_s_0_split_1", "y"]
    assert list(net.layer_by_name("s").param.loss_weight) == []
    assert net.output_names == ["loss", "s_s_0_split_0"]
    net.blobs["x"].data[...] = 1.0
    loss = net.forward()
    s = 1 / (1 + np.exp(-1.0))
    assert loss == pytest.approx(2 * 6 * s + 6 * s**2 / (2 * 2), rel=1e-6)  # Euclidean: sum/(2N), N=2


def test_unknown_bottom_and_duplicate_top_are_errors_naming_the_layer():
    with pytest.raises(RistrettoError, match="unknown bottom blob 'nope'") as err:
        build(INPUT + 'layer { name: "a" type: "ReLU" bottom: "nope" top: "a" }')
    assert err.value.layer == "a"
    with pytest.raises(RistrettoError, match="produced by multiple sources") as err:
        build(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "x2" }'
              'layer { name: "b" type: "Sigmoid" bottom: "x2" top: "x" }')
    assert err.value.layer == "b"


def test_unknown_layer_type_lists_the_known_types():
    with pytest.raises(RistrettoError) as err:
        build(INPUT + 'layer { name: "a" type: "Frobnicate" bottom: "x" top: "a" }')
    msg = str(err.value)
    assert "unknown layer type 'Frobnicate'" in msg and "Convolution" in msg and "ReLU" in msg
    assert err.value.layer == "a"


IP_NET = """
name: "ip"
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "h" param { name: "w" lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "h2" param { name: "w" } param { lr_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "sum" type: "Eltwise" bottom: "h" bottom: "h2" top: "s" }
layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "y" top: "loss" }
"""


def test_parameters_shared_by_name_use_the_same_arrays_and_sum_gradients():
    net = build(IP_NET, TRAIN, seed=3)
    w1 = net.layer_by_name("ip1").blobs[0]
    w2 = net.layer_by_name("ip2").blobs[0]
    assert w1 is w2
    # learnable: w (owner), ip1 bias, ip2 bias; the sharer is not listed again
    assert len(net.learnable_params) == 3
    assert [p.lr_mult for p in net.learnable_params] == [1, 2, 0]
    rng = np.random.default_rng(0)
    net.blobs["x"].data[...] = rng.standard_normal((4, 3))
    net.blobs["y"].data[...] = rng.standard_normal((4, 2))
    net.clear_param_diffs()
    net.forward_backward()
    s = net.blobs["s"].data
    y = net.blobs["y"].data
    x = net.blobs["x"].data
    ds = (s - y) / 4
    # d/dW of (x W^T + b1) + (x W^T + b2): both uses contribute
    np.testing.assert_allclose(w1.diff, 2 * ds.T @ x, rtol=1e-5, atol=1e-6)
    # lr_mult 0 bias: no gradient computed
    assert not np.any(net.layer_by_name("ip2").blobs[1].diff)


def test_shared_parameter_shape_mismatch_is_an_error():
    text = IP_NET.replace('inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }\nlayer { name: "sum"',
                          'inner_product_param { num_output: 3 } }\nlayer { name: "sum"')
    with pytest.raises(RistrettoError, match="cannot share param 'w'"):
        build(text)


def test_backward_analysis_skips_layers_that_do_not_lead_to_a_loss():
    text = """
    layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
    layer { name: "fixed" type: "InnerProduct" bottom: "x" top: "f" param { lr_mult: 0 } param { lr_mult: 0 }
            inner_product_param { num_output: 3 } }
    layer { name: "learn" type: "InnerProduct" bottom: "f" top: "g" inner_product_param { num_output: 3 } }
    layer { name: "side" type: "Sigmoid" bottom: "g" top: "side" }
    layer { name: "loss" type: "EuclideanLoss" bottom: "g" bottom: "y" top: "loss" }
    """
    net = build(text, TRAIN)
    need = dict(zip(net.layer_names, net.layer_need_backward))
    assert need["fixed"] is False          # no learnable params, input needs no gradient
    assert need["learn"] is True
    assert need["side"] is False           # does not contribute to the loss
    assert need["loss"] is True
    loss_layer = net.layer_names.index("loss")
    assert net.bottom_need_backward[loss_layer] == [True, False]
    forced = build("force_backward: true\n" + text, TRAIN)
    assert all(forced.layer_need_backward)
    # force_backward never propagates into loss labels
    assert forced.bottom_need_backward[forced.layer_names.index("loss")][1] is True  # Euclidean allows both


def test_propagate_down_overrides_the_bottom_flag():
    text = """
    layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "g" inner_product_param { num_output: 3 } }
    layer { name: "ip2" type: "InnerProduct" bottom: "g" top: "h" propagate_down: false inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss" }
    """
    net = build(text, TRAIN)
    assert net.bottom_need_backward[net.layer_names.index("ip2")] == [False]
    # "ip" still needs backward for its parameters (Caffe decides before the skip analysis)
    assert net.layer_need_backward[net.layer_names.index("ip")] is False


def test_copy_trained_layers_by_name_and_shape_errors():
    net = build(IP_NET, TEST, seed=1)
    src = net.to_proto()
    other = build(IP_NET, TEST, seed=2)
    other.copy_trained_layers_from(src)
    for a, b in zip(net.params, other.params):
        np.testing.assert_array_equal(a.data, b.data)
    bad = caffe_pb2.NetParameter()
    bad.CopyFrom(src)
    ip1 = [lp for lp in bad.layer if lp.name == "ip1"][0]
    del ip1.blobs[0].shape.dim[:]
    ip1.blobs[0].shape.dim.extend([3, 3])
    ip1.blobs[0].data.extend([0.0] * 3)
    with pytest.raises(RistrettoError, match="shape mismatch") as err:
        other.copy_trained_layers_from(bad, path="w.caffemodel")
    assert err.value.layer == "ip1" and err.value.path == "w.caffemodel"
    assert "3 3 (9)" in str(err.value) and "2 3 (6)" in str(err.value)


def test_to_proto_records_phase_implicit_loss_weight_and_blobs():
    net = build(IP_NET, TRAIN, seed=1)
    proto = net.to_proto()
    assert all(lp.phase == TRAIN for lp in proto.layer)
    loss = [lp for lp in proto.layer if lp.name == "loss"][0]
    assert list(loss.loss_weight) == [1.0]
    ip1 = [lp for lp in proto.layer if lp.name == "ip1"][0]
    assert [list(b.shape.dim) for b in ip1.blobs] == [[2, 3], [2]]


def test_input_reshape_propagates():
    text = INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h" inner_product_param { num_output: 5 } }'
    net = build(text)
    net.blobs["x"].reshape((7, 3))
    net.reshape()
    assert net.blobs["h"].shape == (7, 5)
    net.forward()
    assert net.blobs["h"].shape == (7, 5)


CONV_RELU = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "%s" bottom: "x" top: "y"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" }
                      bias_filler { type: "gaussian" } } %s }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
layer { name: "pool" type: "Pooling" bottom: "y" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
'''


def _conv_relu_pair(layer_type: str = "Convolution", extra: str = "", x=None):
    """The same net twice (same seed: same weights) with the same input: once as built (ReLU
    fused into the convolution), once with the fusion switched off."""
    nets = [build(CONV_RELU % (layer_type, extra), seed=3) for _ in range(2)]
    for a, b in zip(nets[0].layers[1].blobs, nets[1].layers[1].blobs):
        np.testing.assert_array_equal(a.data, b.data)
    x = np.random.default_rng(5).standard_normal((2, 3, 6, 6)).astype(np.float32) if x is None else x
    for net in nets:
        net.blobs["x"].data[...] = x
    nets[1]._fused_relus = set()
    return nets


def test_relu_after_a_convolution_runs_inside_it_with_the_same_values():
    fused, plain = _conv_relu_pair()
    assert fused._fused_relus == {fused.layer_names.index("relu")}
    fused.forward()
    plain.forward()
    assert fused.layers[1].rectified_top and not plain.layers[1].rectified_top
    assert (fused.blobs["y"].data >= 0).all() and (fused.blobs["y"].data == 0).any()
    np.testing.assert_array_equal(fused.blobs["y"].data, plain.blobs["y"].data)
    np.testing.assert_array_equal(fused.blobs["p"].data, plain.blobs["p"].data)


def test_a_forward_that_stops_at_the_convolution_leaves_its_top_unrectified():
    fused, plain = _conv_relu_pair()
    conv = fused.layer_names.index("conv")
    fused.forward(0, conv)
    plain.forward(0, conv)
    assert (fused.blobs["y"].data < 0).any()
    np.testing.assert_array_equal(fused.blobs["y"].data, plain.blobs["y"].data)
    fused.forward(conv + 1)                 # the ReLU then runs on its own
    assert (fused.blobs["y"].data >= 0).all()


POOL_RELU = '''
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 dim: 7 dim: 7 } } }
layer { name: "target" type: "Input" top: "t" input_param { shape { dim: 3 dim: 4 dim: %d dim: %d } } }
layer { name: "pool" type: "Pooling" bottom: "x" top: "p" pooling_param { %s } }
layer { name: "relu" type: "ReLU" bottom: "p" top: "p" }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "t" top: "loss" }
'''


@pytest.mark.parametrize("pooling, pooled", [
    ("pool: MAX kernel_size: 3 stride: 2", 3),
    ("pool: AVE kernel_size: 3 stride: 2 pad: 1", 4),
    ("pool: MAX global_pooling: true", 1),
    ("pool: AVE global_pooling: true", 1),
    ("pool: STOCHASTIC kernel_size: 2 stride: 2", 4),     # not fused: the net runs the ReLU
])
@pytest.mark.parametrize("phase", [TRAIN, TEST])
def test_relu_after_pooling_runs_inside_it_block_by_block(pooling, pooled, phase, monkeypatch):
    from ristretto_cli.layers import pooling as pooling_module
    text = POOL_RELU % (pooled, pooled, pooling)
    fused, plain = build(text, phase, seed=4), build(text, phase, seed=4)
    plain._fused_relus = set()
    assert fused._fused_relus == {fused.layer_names.index("relu")}
    rng = np.random.default_rng(8)
    x, t = rng.standard_normal((3, 4, 7, 7)), rng.standard_normal((3, 4, pooled, pooled))
    x[0, 1] = -np.abs(x[0, 1]) - 0.1        # planes whose every result the ReLU zeroes
    x[2, 3] = -np.abs(x[2, 3]) - 0.1
    monkeypatch.setattr(pooling_module, "PHASE_BLOCK_BYTES", 1)     # a block per plane
    monkeypatch.setattr(pooling_module, "GLOBAL_BLOCK_BYTES", 1)
    monkeypatch.setattr(pooling_module, "PARALLEL_MIN_BYTES", 1)
    monkeypatch.setattr(parallel, "_threads", 2)
    for net in (fused, plain):
        net.blobs["x"].data[...] = x
        net.blobs["t"].data[...] = t
        net.forward()
        net.backward()
    assert fused.layers[2].rectified_top == ("STOCHASTIC" not in pooling)
    assert (fused.blobs["p"].data >= 0).all() and (fused.blobs["p"].data == 0).any()
    np.testing.assert_array_equal(fused.blobs["p"].data, plain.blobs["p"].data)
    np.testing.assert_array_equal(fused.blobs["x"].diff, plain.blobs["x"].diff)


def test_relu_is_fused_only_in_place_and_without_a_negative_slope():
    leaky = (CONV_RELU % ("Convolution", "")).replace(
        'top: "y" }\nlayer { name: "pool"', 'top: "y" relu_param { negative_slope: 0.1 } }\nlayer { name: "pool"')
    assert build(leaky)._fused_relus == set()
    apart = (CONV_RELU % ("Convolution", "")).replace('bottom: "y" top: "y" }', 'bottom: "y" top: "r" }')
    assert build(apart)._fused_relus == set()


def test_fused_relu_comes_after_a_quantized_convolution_s_output_trimming():
    qp = ('quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 6 fl_layer_out: 2 '
          'bw_params: 8 fl_params: 5 }')
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 6)).astype(np.float32) * 4
    fused, plain = _conv_relu_pair("ConvolutionRistretto", qp, x)
    fused.forward()
    plain.forward()
    np.testing.assert_array_equal(fused.blobs["y"].data, plain.blobs["y"].data)
    assert fused.layers[1].rectified_top
    # stochastic rounding trims the whole top after the convolution: the layer then leaves
    # the ReLU to the net, to run after the trimming
    fused, plain = _conv_relu_pair("ConvolutionRistretto", qp.replace("{", "{ rounding_scheme: STOCHASTIC", 1), x)
    fused.forward()
    plain.forward()
    assert not fused.layers[1].rectified_top
    assert (fused.blobs["y"].data >= 0).all()
    np.testing.assert_array_equal(fused.blobs["y"].data, plain.blobs["y"].data)


def test_row_blocks_keep_the_quantized_trimming_and_the_fused_relu(monkeypatch):
    """Convolving in blocks of output rows (large feature maps) gives the values of the whole
    convolution, with Ristretto's input and output trimming and the fused ReLU."""
    from ristretto_cli.layers import convolution
    qp = ('quantization_param { bw_layer_in: 8 fl_layer_in: 4 bw_layer_out: 6 fl_layer_out: 2 '
          'bw_params: 8 fl_params: 5 }')
    x = np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(np.float32) * 4
    for layer_type, extra in (("Convolution", ""), ("ConvolutionRistretto", qp)):
        whole, _ = _conv_relu_pair(layer_type, extra, x)
        whole.forward()
        blocked, _ = _conv_relu_pair(layer_type, extra, x)
        with monkeypatch.context() as m:
            m.setattr(convolution, "BLOCK_COL_ELEMENTS", 1)
            m.setattr(convolution, "ROW_BLOCK_ELEMENTS", 1)
            m.setattr(convolution, "BLOCK_MIN_COLUMNS", 1)
            assert blocked.layers[1]._row_blocks(27) == [(r, r + 1) for r in range(6)]
            blocked.forward()
        assert blocked.layers[1].rectified_top
        np.testing.assert_array_equal(blocked.blobs["y"].data, whole.blobs["y"].data)
        np.testing.assert_array_equal(blocked.blobs["x"].data, whole.blobs["x"].data)


FIRE = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 dim: 6 dim: 6 } } }
layer { name: "in2" type: "Input" top: "z" input_param { shape { dim: 3 dim: 2 dim: 6 dim: 6 } } }
layer { name: "sq" type: "Convolution" bottom: "x" top: "s" convolution_param { num_output: 3 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
layer { name: "sq_relu" type: "ReLU" bottom: "s" top: "s" }
layer { name: "e1" type: "Convolution" bottom: "s" top: "a" convolution_param { num_output: 5 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: -0.1 } } }
layer { name: "e1_relu" type: "ReLU" bottom: "a" top: "a" }
layer { name: "e3" type: "Convolution" bottom: "s" top: "b" convolution_param { num_output: 4 kernel_size: 3
        pad: 1 weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.2 } } }
layer { name: "e3_relu" type: "ReLU" bottom: "b" top: "b" }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" bottom: "z" top: "c" }
layer { name: "after" type: "Convolution" bottom: "c" top: "y" convolution_param { num_output: 2 kernel_size: 3
        weight_filler { type: "gaussian" std: 0.5 } } }
"""


def _fire_pair(text, phase=TEST):
    aliased, copied = build(text, phase, seed=3), build(text, phase, seed=3)
    for layer in copied.layers:
        if layer.type == "Concat":
            layer.alias_bottoms = ()
    rng = np.random.default_rng(11)
    return aliased, copied, rng


@pytest.mark.parametrize("phase", [TEST, TRAIN])
def test_concat_bottoms_become_views_of_its_top_with_the_same_values(phase):
    """A fire module: the expand layers (convolution + in-place ReLU) write straight into
    their slots of the Concat's top from the second pass on; every blob and gradient equals
    the copying net's, pass after pass, also after the input shape changes."""
    text = FIRE + ('force_backward: true\n' if phase == TRAIN else "")
    aliased, copied, rng = _fire_pair(text, phase)
    cat = aliased.layers[aliased.layer_names.index("cat")]
    assert cat.alias_bottoms == (True, True, False)        # "z" is an input: no producer
    for n in (3, 3, 2, 2):
        x, z = rng.standard_normal((n, 4, 6, 6)), rng.standard_normal((n, 2, 6, 6))
        dy = rng.standard_normal((n, 2, 4, 4))
        for net in (aliased, copied):
            net.blobs["x"].reshape(x.shape)
            net.blobs["z"].reshape(z.shape)
            net.blobs["x"].data[...] = x
            net.blobs["z"].data[...] = z
            net.forward()
            net.blobs["y"].diff[...] = dy
            net.backward()
        for name in copied.blobs:
            np.testing.assert_array_equal(aliased.blobs[name].data, copied.blobs[name].data)
            if copied.blobs[name].has_diff:
                np.testing.assert_array_equal(aliased.blobs[name].diff, copied.blobs[name].diff)
        top = aliased.blobs["c"].data
        assert np.shares_memory(aliased.blobs["a"].data, top) and np.shares_memory(aliased.blobs["b"].data, top)
        assert not np.shares_memory(aliased.blobs["z"].data, top)
        assert not np.shares_memory(aliased.blobs["a"].diff, aliased.blobs["c"].diff)


def test_concat_skips_the_copies_of_bottoms_that_are_its_slots(monkeypatch):
    aliased, _, rng = _fire_pair(FIRE)
    aliased.blobs["x"].data[...] = rng.standard_normal((3, 4, 6, 6))
    aliased.forward()                       # first pass: copies, then hands out the views
    copied = []
    real = np.copyto
    monkeypatch.setattr(np, "copyto", lambda dst, src, **kw: (copied.append(src.shape), real(dst, src, **kw))[1])
    aliased.forward()
    assert copied.count((3, 2, 6, 6)) == 1 and (3, 5, 6, 6) not in copied and (3, 4, 6, 6) not in copied


def test_concat_keeps_copying_when_its_top_is_rewritten_after_it():
    """A top that a later in-place layer rewrites keeps its bottoms apart: Caffe's Concat
    copied the values they had, and the later layer must not change them. (A bottom read
    after the Concat goes through a Split, which keeps it apart too.)"""
    later = 'layer { name: "late" type: "ReLU" bottom: "c" top: "c" }'
    text = FIRE.replace('layer { name: "after"', later + '\nlayer { name: "after"')
    aliased, copied, rng = _fire_pair(text)
    cat = aliased.layers[aliased.layer_names.index("cat")]
    assert cat.alias_bottoms == (False, False, False)
    for _ in range(2):
        x = rng.standard_normal((3, 4, 6, 6)) * 3
        for net in (aliased, copied):
            net.blobs["x"].data[...] = x
            net.forward()
        for name in copied.blobs:
            np.testing.assert_array_equal(aliased.blobs[name].data, copied.blobs[name].data)


def test_concat_of_a_split_blob_or_of_the_same_blob_twice_copies():
    text = FIRE.replace('bottom: "a" bottom: "b" bottom: "z"', 'bottom: "a" bottom: "a" bottom: "b"').replace(
        'layer { name: "after"', 'layer { name: "other" type: "ReLU" bottom: "b" top: "b2" }\nlayer { name: "after"')
    net = build(text)
    cat = net.layers[net.layer_names.index("cat")]
    assert cat.alias_bottoms == (False, False, False)     # "a" twice; "b" goes through a Split


def test_concat_keeps_copying_in_a_net_that_trims_its_inputs():
    """Ristretto's layers trim their bottoms in place (TEST): through the Concat's top they
    would reach its bottoms if those were views of it, which Caffe's copies never see."""
    qp = 'quantization_param { bw_layer_in: 4 fl_layer_in: 1 bw_layer_out: 8 fl_layer_out: 2 bw_params: 8 fl_params: 5 }'
    text = FIRE.replace('name: "after" type: "Convolution"', 'name: "after" type: "ConvolutionRistretto"').replace(
        'kernel_size: 3\n        weight_filler { type: "gaussian" std: 0.5 } } }',
        'kernel_size: 3\n        weight_filler { type: "gaussian" std: 0.5 } } ' + qp + ' }')
    net = build(text)
    assert net.layers[-1].type == "ConvolutionRistretto"
    rng = np.random.default_rng(2)
    for _ in range(2):
        net.blobs["x"].data[...] = rng.standard_normal((3, 4, 6, 6))
        net.forward()
    assert not np.shares_memory(net.blobs["a"].data, net.blobs["c"].data)
    assert not np.array_equal(net.blobs["a"].data, net.blobs["c"].data[:, :5])  # c was trimmed, a not


def test_batchnorm_without_param_specs_needs_backward_as_in_caffe():
    """Caffe decides a layer's need for backward from the ParamSpecs written in the net;
    BatchNorm's own lr_mult 0 specs are added to its copy only. So with none written, the
    BatchNorm needs backward (default lr_mult 1), the layers above it pass gradients down to
    it, and its backward writes the input's gradient: the same as with force_backward. Its
    statistics are still never learned."""
    text = '''
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "b" }
layer { name: "ip" type: "InnerProduct" bottom: "b" top: "h"
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "h" bottom: "y" top: "loss" }'''
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    diffs = []
    for prefix in ("", "force_backward: true\n"):
        net = build(prefix + text, TRAIN, seed=3)
        assert net.layer_need_backward[net.layer_names.index("bn")]
        net.blobs["x"].data[...], net.blobs["y"].data[...] = x, y
        net.forward()
        net.backward()
        diffs.append((net.blobs["x"].diff.copy(), net.blobs["b"].diff.copy()))
    assert np.abs(diffs[0][0]).max() > 0 and np.abs(diffs[0][1]).max() > 0
    np.testing.assert_array_equal(diffs[0][0], diffs[1][0])
    np.testing.assert_array_equal(diffs[0][1], diffs[1][1])
    bn_blobs = {id(b) for b in net.layers[net.layer_names.index("bn")].blobs}
    assert all(p.lr_mult == 0 for p in net.learnable_params if id(p.blob) in bn_blobs)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_loss_weighted_top_keeps_its_weight_after_a_reshape(batch):
    """A top with a loss weight carries the weight as its gradient; after the input is
    reshaped (smaller or larger batch) the loss and the gradients are those of a net built
    for the new shape, not a loss with no gradient behind it."""
    text = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: %d dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "h"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "sig" type: "Sigmoid" bottom: "h" top: "s" loss_weight: 2 }
layer { name: "s2" type: "Sigmoid" bottom: "h" top: "t" loss_weight: 0.5 }'''
    x = np.linspace(-1, 1, batch * 3, dtype=np.float32).reshape(batch, 3)
    results = []
    for reshaped in (True, False):
        net = build(text % (2 if reshaped else batch), TRAIN, seed=7)
        if reshaped:
            net.blobs["x"].reshape((batch, 3))
            net.reshape()
        net.blobs["x"].data[...] = x
        loss = net.forward()
        net.clear_param_diffs()
        net.backward()
        results.append((loss, net.layers[net.layer_names.index("ip")].blobs[0].diff.copy()))
    assert results[0][0] == results[1][0]
    assert np.abs(results[1][1]).max() > 0
    np.testing.assert_array_equal(results[0][1], results[1][1])


SHARED_IP_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "a" type: "InnerProduct" bottom: "x" top: "ya"
        param { name: "w" } param { name: "b" } inner_product_param { num_output: 3 } }
layer { name: "b" type: "InnerProduct" bottom: "x" top: "yb"
        param { name: "w" } param { name: "b" } inner_product_param { num_output: 3 } }
"""


def test_only_hdf5_weights_may_leave_out_a_shared_parameter(tmp_path):
    """Caffe's CopyTrainedLayersFromHDF5 skips a missing dataset of a weight-shared parameter;
    its binary loader requires every blob ('Incompatible number of blobs')."""
    from ristretto_cli.io import read_weights, write_caffemodel, write_caffemodel_h5
    net = build(SHARED_IP_NET, TEST, seed=1)
    w = np.arange(9, dtype=np.float32).reshape(3, 3)
    b = np.array([1, 2, 3], np.float32)
    h5 = tmp_path / "w.caffemodel.h5"
    write_caffemodel_h5(h5, [("a", [w, b], None), ("b", [None, None], None)])
    net.copy_trained_layers_from(read_weights(h5), path=str(h5))
    layer_b = net.layers[net.layer_names.index("b")]
    np.testing.assert_array_equal(layer_b.blobs[0].data, w)
    np.testing.assert_array_equal(layer_b.blobs[1].data, b)

    binary = net.to_proto()
    del [lp for lp in binary.layer if lp.name == "b"][0].blobs[:]
    path = tmp_path / "w.caffemodel"
    write_caffemodel(path, binary)
    with pytest.raises(RistrettoError, match="incompatible number of blobs: the weights file has 0, "
                                             "the net has 2") as err:
        build(SHARED_IP_NET, TEST).copy_trained_layers_from(read_weights(path), path=str(path))
    assert err.value.layer == "b"
    complete = tmp_path / "complete.caffemodel"
    write_caffemodel(complete, net.to_proto())
    fresh = build(SHARED_IP_NET, TEST, seed=3)
    fresh.copy_trained_layers_from(read_weights(complete), path=str(complete))
    np.testing.assert_array_equal(fresh.layers[fresh.layer_names.index("a")].blobs[0].data, w)


def test_shape_strings_are_caffes():
    """Blob::shape_string: each dimension and a space, then the count; '(1)' for a scalar."""
    from ristretto_cli.blob import shape_str
    assert shape_str((64, 1, 28, 28)) == "64 1 28 28 (50176)"
    assert shape_str(()) == "(1)"
    assert shape_str((0, 3)) == "0 3 (0)"


TWIN_NAMES_NET = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y1" inner_product_param { num_output: 1 bias_term: false } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y2" inner_product_param { num_output: 1 bias_term: false } }
"""


def test_weights_for_a_repeated_layer_name_and_ignored_layers(tmp_path):
    """Caffe's binary loader fills the first layer of a repeated name, its HDF5 loader the last
    (its name index keeps the last); a layer the net lacks is logged at INFO."""
    from log_support import capture_log

    from ristretto_cli.io import read_weights, write_caffemodel, write_caffemodel_h5
    w = np.array([[3.0, 4.0]], np.float32)
    binary = caffe_pb2.NetParameter(name="w")
    for name in ("ip", "extra"):
        lp = binary.layer.add(name=name, type="InnerProduct")
        lp.blobs.add(data=w.ravel()).shape.dim.extend(w.shape)
    write_caffemodel(tmp_path / "w.caffemodel", binary)
    write_caffemodel_h5(tmp_path / "w.h5", [("ip", [w], None), ("extra", [w], None)])
    for path, filled in (("w.caffemodel", 0), ("w.h5", 1)):
        net = build(TWIN_NAMES_NET, TEST, seed=1)
        ips = [layer for layer in net.layers if layer.type == "InnerProduct"]
        before = [layer.blobs[0].data.copy() for layer in ips]
        with capture_log() as log:
            net.copy_trained_layers_from(read_weights(tmp_path / path), path=str(tmp_path / path))
        got = [layer.blobs[0].data for layer in ips]
        np.testing.assert_array_equal(got[filled], w)
        np.testing.assert_array_equal(got[1 - filled], before[1 - filled])
        assert ("INFO", "Ignoring source layer extra") in log.entries
