"""RNN, LSTM and LSTMUnit: forward against per-step references of the textbook equations,
sequences restarted by ``cont``, states carried between forward calls, the static input,
``expose_hidden``, shape checks, parameter blobs in Caffe's order, gradients, and a whole net
saved to and loaded from a caffemodel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from layer_check import TRAIN, check_gradient, setup

from ristretto_cli import pycaffe as caffe
from ristretto_cli.errors import RistrettoError
from ristretto_cli.io import array_to_blob, blob_to_array, read_weights, write_caffemodel
from ristretto_cli.proto import caffe_pb2
from ristretto_cli.solver import train

FILLERS = 'weight_filler { type: "gaussian" std: 0.4 } bias_filler { type: "gaussian" std: 0.3 }'


def lstm_spec(num_output=4, extra=""):
    return f'type: "LSTM" recurrent_param {{ num_output: {num_output} {FILLERS} {extra} }}'


def rnn_spec(num_output=4, extra=""):
    return f'type: "RNN" recurrent_param {{ num_output: {num_output} {FILLERS} {extra} }}'


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


# ------------------------------------------------------------------ references
def lstm_reference(x, cont, w_xc, b_c, w_hc, h0=None, c0=None, x_static=None, w_static=None):
    """The LSTM one step at a time: gates z = W_xc x_t + b_c + W_hc (cont_t h_{t-1})
    [+ W_static x_static], rows i, f, o, g; c_t = f (cont_t c_{t-1}) + i g; h_t = o tanh(c_t).
    Returns every h_t and the final (h, c)."""
    steps, streams = cont.shape
    hidden = w_hc.shape[1]
    h = np.zeros((streams, hidden)) if h0 is None else h0.reshape(streams, hidden)
    c = np.zeros((streams, hidden)) if c0 is None else c0.reshape(streams, hidden)
    outputs = []
    for t in range(steps):
        keep = cont[t][:, None]
        z = x[t].reshape(streams, -1) @ w_xc.T + b_c + (keep * h) @ w_hc.T
        if x_static is not None:
            z = z + x_static.reshape(streams, -1) @ w_static.T
        i = sigmoid(z[:, :hidden])
        f = sigmoid(z[:, hidden:2 * hidden])
        o = sigmoid(z[:, 2 * hidden:3 * hidden])
        g = np.tanh(z[:, 3 * hidden:])
        c = f * (keep * c) + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), h, c


def rnn_reference(x, cont, w_xh, b_h, w_hh, w_ho, b_o, h0=None, x_static=None, w_static=None):
    """The RNN one step at a time: h_t = tanh(W_xh x_t + b_h + W_hh (cont_t h_{t-1})
    [+ W_static x_static]), o_t = tanh(W_ho h_t + b_o). Returns every o_t and the final h."""
    steps, streams = cont.shape
    hidden = w_hh.shape[0]
    h = np.zeros((streams, hidden)) if h0 is None else h0.reshape(streams, hidden)
    outputs = []
    for t in range(steps):
        a = x[t].reshape(streams, -1) @ w_xh.T + b_h + (cont[t][:, None] * h) @ w_hh.T
        if x_static is not None:
            a = a + x_static.reshape(streams, -1) @ w_static.T
        h = np.tanh(a)
        outputs.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(outputs), h


def params(layer):
    return [b.data.astype(np.float64) for b in layer.blobs]


RNG = np.random.default_rng(20240611)
# Five steps of three streams: stream 0 restarts at t=0 and t=4, stream 1 at t=0 and t=2,
# stream 2 continues from the (zero) initial state at t=0 and restarts at t=3.
CONT = np.array([[0, 0, 1], [1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)


def inputs(steps=5, streams=3, dims=(2, 3)):
    return RNG.standard_normal((steps, streams, *dims)).astype(np.float32)


# ------------------------------------------------------------------ forward
def test_lstm_forward_matches_the_reference_across_sequence_restarts():
    x = inputs()
    layer, bottoms, tops = setup(lstm_spec(), [x, CONT])
    layer.forward(bottoms, tops)
    want, _, _ = lstm_reference(x, CONT, *params(layer))
    assert tops[0].shape == (5, 3, 4) and tops[0].data.dtype == np.float32
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)


def test_rnn_forward_matches_the_reference_across_sequence_restarts():
    x = inputs()
    layer, bottoms, tops = setup(rnn_spec(), [x, CONT])
    layer.forward(bottoms, tops)
    want, _ = rnn_reference(x, CONT, *params(layer))
    assert tops[0].shape == (5, 3, 4)
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)


def test_a_restart_forgets_everything_before_it():
    """Where cont is 0, the stream's output is that of a fresh sequence starting there."""
    x = inputs()
    layer, bottoms, tops = setup(lstm_spec(), [x, CONT])
    layer.forward(bottoms, tops)
    fresh, _, _ = lstm_reference(x[2:], np.vstack([np.zeros((1, 3)), CONT[3:]]), *params(layer))
    np.testing.assert_allclose(tops[0].data[2:, 1], fresh[:, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_the_final_states_carry_into_the_next_forward(kind):
    spec, reference = (lstm_spec(), lstm_reference) if kind == "LSTM" else (rnn_spec(), rnn_reference)
    x = inputs(steps=6)
    cont = np.ones((6, 3), np.float32)
    cont[0] = 0
    cont[4, 1] = 0
    layer, bottoms, tops = setup(spec, [x[:3], cont[:3]])
    layer.forward(bottoms, tops)
    bottoms[0].data[...] = x[3:]
    bottoms[1].data[...] = cont[3:]
    layer.forward(bottoms, tops)
    whole = reference(x, cont, *params(layer))[0]
    np.testing.assert_allclose(tops[0].data, whole[3:], rtol=1e-5, atol=1e-6)
    # cont 0 at the start of a call drops the carried state
    bottoms[1].data[0] = 0
    layer.forward(bottoms, tops)
    alone = reference(x[3:], bottoms[1].data, *params(layer))[0]
    np.testing.assert_allclose(tops[0].data, alone, rtol=1e-5, atol=1e-6)


def test_one_step_per_call_equals_the_whole_sequence():
    """Caffe's own LSTM test: T steps in one call, or one step per call with the carried state."""
    x = inputs(steps=3)
    cont = np.array([[0, 0, 0], [1, 1, 1], [1, 1, 1]], np.float32)
    whole_layer, bottoms, tops = setup(lstm_spec(), [x, cont])
    whole_layer.forward(bottoms, tops)
    whole = tops[0].data.copy()
    step_layer, step_bottoms, step_tops = setup(lstm_spec(), [x[:1], cont[:1]])
    for t in range(3):
        step_bottoms[0].data[...] = x[t:t + 1]
        step_bottoms[1].data[...] = cont[t:t + 1]
        step_layer.forward(step_bottoms, step_tops)
        np.testing.assert_allclose(step_tops[0].data[0], whole[t], rtol=1e-5, atol=1e-6)


def test_carried_states_follow_caffes_blob_memory_when_the_batch_changes():
    """A smaller batch keeps the first streams' states (Caffe's blob keeps its memory); a
    batch larger than any before starts from zero (a new, zeroed blob)."""
    x = inputs(steps=2, streams=3)
    cont = np.ones((2, 3), np.float32)
    layer, bottoms, tops = setup(lstm_spec(), [x, cont])
    layer.forward(bottoms, tops)
    _, h, c = lstm_reference(x, cont, *params(layer))
    bottoms[0].data, bottoms[1].data = x[:, :2].copy(), cont[:, :2].copy()
    layer.forward(bottoms, tops)
    want, _, _ = lstm_reference(x[:, :2], cont[:, :2], *params(layer), h0=h[:2], c0=c[:2])
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)
    bigger = inputs(steps=2, streams=4)
    bottoms[0].data, bottoms[1].data = bigger, np.ones((2, 4), np.float32)
    layer.forward(bottoms, tops)
    want, _, _ = lstm_reference(bigger, np.ones((2, 4)), *params(layer))
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)


def test_static_input_is_added_at_every_step():
    x, x_static = inputs(), RNG.standard_normal((3, 2, 2)).astype(np.float32)
    layer, bottoms, tops = setup(lstm_spec(), [x, CONT, x_static])
    layer.forward(bottoms, tops)
    w_xc, b_c, w_static, w_hc = params(layer)
    want, _, _ = lstm_reference(x, CONT, w_xc, b_c, w_hc, x_static=x_static, w_static=w_static)
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)

    layer, bottoms, tops = setup(rnn_spec(), [x, CONT, x_static])
    layer.forward(bottoms, tops)
    w_xh, b_h, w_static, w_hh, w_ho, b_o = params(layer)
    want, _ = rnn_reference(x, CONT, w_xh, b_h, w_hh, w_ho, b_o, x_static=x_static, w_static=w_static)
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)


def test_expose_hidden_takes_the_initial_states_and_gives_the_final_ones():
    x = inputs()
    h0, c0 = (RNG.standard_normal((1, 3, 4)).astype(np.float32) for _ in range(2))
    spec = lstm_spec(extra="expose_hidden: true")
    layer, bottoms, tops = setup(spec, [x, CONT, h0, c0], num_tops=3)
    for _ in range(2):              # nothing carried: the same result twice
        layer.forward(bottoms, tops)
        want, h, c = lstm_reference(x, CONT, *params(layer), h0=h0, c0=c0)
        np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)
        assert tops[1].shape == tops[2].shape == (1, 3, 4)
        np.testing.assert_allclose(tops[1].data[0], h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tops[2].data[0], c, rtol=1e-5, atol=1e-6)
        assert layer.state_dict() is None

    layer, bottoms, tops = setup(rnn_spec(extra="expose_hidden: true"), [x, CONT, h0], num_tops=2)
    layer.forward(bottoms, tops)
    want, h = rnn_reference(x, CONT, *params(layer), h0=h0)
    np.testing.assert_allclose(tops[0].data, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tops[1].data[0], h, rtol=1e-5, atol=1e-6)


def test_lstm_unit_forward_matches_the_cell_equations():
    c_prev = RNG.standard_normal((1, 3, 4))
    gates = RNG.standard_normal((1, 3, 16)) * 2
    cont = np.array([[1.0, 0.0, 1.0]])
    layer, bottoms, tops = setup('type: "LSTMUnit"', [c_prev, gates, cont], num_tops=2, dtype=np.float64)
    layer.forward(bottoms, tops)
    z = gates[0]
    i, f, o, g = sigmoid(z[:, :4]), sigmoid(z[:, 4:8]), sigmoid(z[:, 8:12]), np.tanh(z[:, 12:])
    c = cont[0][:, None] * f * c_prev[0] + i * g
    np.testing.assert_allclose(tops[0].data[0], c, rtol=1e-12)
    np.testing.assert_allclose(tops[1].data[0], o * np.tanh(c), rtol=1e-12)


def test_lstm_is_lstm_unit_at_every_step():
    """The gate pre-activations of the LSTM, fed to LSTMUnit step by step, give its output."""
    x = inputs()
    lstm, bottoms, tops = setup(lstm_spec(), [x, CONT], dtype=np.float64)
    lstm.forward(bottoms, tops)
    w_xc, b_c, w_hc = params(lstm)
    unit, ub, ut = setup('type: "LSTMUnit"', [np.zeros((1, 3, 4)), np.zeros((1, 3, 16)), np.ones((1, 3))],
                         num_tops=2, dtype=np.float64)
    h = np.zeros((3, 4))
    for t in range(5):
        ub[1].data[0] = x[t].reshape(3, -1) @ w_xc.T + b_c + (CONT[t][:, None] * h) @ w_hc.T
        ub[2].data[0] = CONT[t]
        unit.forward(ub, ut)
        h = ut[1].data[0].copy()
        ub[0].data[...] = ut[0].data
        np.testing.assert_allclose(tops[0].data[t], h, rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------ parameters
def test_parameter_blobs_are_in_caffes_order_and_shapes():
    x, x_static = inputs(dims=(2, 3)), np.zeros((3, 5, 2), np.float32)
    shapes = lambda spec, bottoms: [b.shape for b in setup(spec, bottoms)[0].blobs]  # noqa: E731
    assert shapes(lstm_spec(7), [x, CONT]) == [(28, 6), (28,), (28, 7)]
    assert shapes(lstm_spec(7), [x, CONT, x_static]) == [(28, 6), (28,), (28, 10), (28, 7)]
    assert shapes(rnn_spec(7), [x, CONT]) == [(7, 6), (7,), (7, 7), (7, 7), (7,)]
    assert shapes(rnn_spec(7), [x, CONT, x_static]) == [(7, 6), (7,), (7, 10), (7, 7), (7, 7), (7,)]


def test_weights_take_the_weight_filler_and_biases_the_bias_filler():
    spec = ('type: "RNN" recurrent_param { num_output: 3 weight_filler { type: "constant" value: 0.25 } '
            'bias_filler { type: "constant" value: -2 } }')
    layer, *_ = setup(spec, [inputs(), CONT, np.zeros((3, 4), np.float32)])
    assert [float(b.data.flat[0]) for b in layer.blobs] == [0.25, -2, 0.25, 0.25, 0.25, -2]
    assert all(np.all(b.data == b.data.flat[0]) for b in layer.blobs)
    # unset fillers are Caffe's default: constant 0
    layer, *_ = setup('type: "LSTM" recurrent_param { num_output: 3 }', [inputs(), CONT])
    assert all(not b.data.any() for b in layer.blobs)


def test_fillers_draw_from_the_layers_seeded_generator():
    one = [b.data for b in setup(lstm_spec(), [inputs(), CONT], seed=5)[0].blobs]
    two = [b.data for b in setup(lstm_spec(), [inputs(), CONT], seed=5)[0].blobs]
    other = [b.data for b in setup(lstm_spec(), [inputs(), CONT], seed=6)[0].blobs]
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    assert not np.array_equal(one[0], other[0])


def test_parameter_gradients_accumulate():
    x = inputs()
    layer, bottoms, tops = setup(lstm_spec(), [x, CONT])
    layer.forward(bottoms, tops)
    tops[0].diff[...] = 1
    layer.backward(tops, [True, False], bottoms)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(tops, [True, False], bottoms)
    for blob, first in zip(layer.blobs, once):
        assert first.any()
        np.testing.assert_allclose(blob.diff, 2 * first, rtol=1e-6)


# ------------------------------------------------------------------ gradients
# With cont 0 at the first step of every stream, the state carried from the previous forward
# has no effect, so the repeated forwards of the finite differences all see the same function.
GRAD_CONT = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float64)


@pytest.mark.parametrize("spec", [lstm_spec(3), rnn_spec(3)], ids=["LSTM", "RNN"])
def test_gradients_to_the_input_and_every_parameter(spec):
    check_gradient(spec, [RNG.standard_normal((4, 2, 3)), GRAD_CONT], check_bottoms=[0])


@pytest.mark.parametrize("spec", [lstm_spec(3), rnn_spec(3)], ids=["LSTM", "RNN"])
def test_gradients_with_a_static_input(spec):
    check_gradient(spec, [RNG.standard_normal((4, 2, 3)), GRAD_CONT, RNG.standard_normal((2, 2, 2))],
                   check_bottoms=[0, 2])


@pytest.mark.parametrize("cont", [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
def test_lstm_unit_gradients(cont):
    check_gradient('type: "LSTMUnit"',
                   [RNG.standard_normal((1, 3, 4)), RNG.standard_normal((1, 3, 16)), np.array([cont])],
                   check_bottoms=[0, 1], num_tops=2)


def numeric_gradient(objective, array, eps=1e-6):
    grad = np.zeros_like(array)
    for idx in np.ndindex(array.shape):
        original = array[idx]
        array[idx] = original + eps
        plus = objective()
        array[idx] = original - eps
        minus = objective()
        array[idx] = original
        grad[idx] = (plus - minus) / (2 * eps)
    return grad


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_backward_stops_at_the_state_carried_from_the_previous_call(kind):
    """The second call's gradients treat the carried state as a constant (truncated
    backpropagation through time), though it does enter the recurrent weights' gradient."""
    spec = lstm_spec(3) if kind == "LSTM" else rnn_spec(3)
    x = RNG.standard_normal((3, 2, 2))
    cont = np.ones((3, 2))
    layer, bottoms, tops = setup(spec, [x, cont], dtype=np.float64)
    layer.forward(bottoms, tops)                # leaves a non-zero state
    carried = json.loads(json.dumps(layer.state_dict()))
    weights = RNG.standard_normal((3, 2, 3))

    def objective():
        layer.load_state_dict(carried)
        layer.forward(bottoms, tops)
        return float(np.sum(weights * tops[0].data))

    objective()
    tops[0].diff[...] = weights
    for blob in layer.blobs:
        blob.diff = np.zeros_like(blob.data)
    layer.backward(tops, [True, False], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, numeric_gradient(objective, bottoms[0].data), atol=1e-7)
    for blob in layer.blobs:
        np.testing.assert_allclose(blob.diff, numeric_gradient(objective, blob.data), atol=1e-7)


def test_expose_hidden_gradients_stop_at_the_exposed_states():
    """As in Caffe, the exposed initial states get no gradient and the gradients of the exposed
    final states are ignored; x and the parameters get the gradient of the first top."""
    x = RNG.standard_normal((3, 2, 2))
    cont = np.array([[1, 0], [1, 1], [0, 1]], np.float64)
    h0, c0 = RNG.standard_normal((1, 2, 3)), RNG.standard_normal((1, 2, 3))
    layer, bottoms, tops = setup(lstm_spec(3, "expose_hidden: true"), [x, cont, h0, c0],
                                 num_tops=3, dtype=np.float64)
    weights = RNG.standard_normal((3, 2, 3))

    def objective():
        layer.forward(bottoms, tops)
        return float(np.sum(weights * tops[0].data))

    objective()
    tops[0].diff[...] = weights
    tops[1].diff[...] = 5.0           # ignored
    tops[2].diff[...] = -3.0          # ignored
    for blob in layer.blobs:
        blob.diff = np.zeros_like(blob.data)
    for b in bottoms[2:]:
        b.diff[...] = 7.0
    layer.backward(tops, [True, False, True, True], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, numeric_gradient(objective, bottoms[0].data), atol=1e-7)
    for blob in layer.blobs:
        np.testing.assert_allclose(blob.diff, numeric_gradient(objective, blob.data), atol=1e-7)
    assert not bottoms[2].diff.any() and not bottoms[3].diff.any()
    assert np.abs(numeric_gradient(objective, bottoms[2].data)).max() > 1e-3   # though h0 matters


def test_no_gradient_to_the_continuation_indicators():
    layer, bottoms, tops = setup(lstm_spec(), [inputs(), CONT])
    layer.forward(bottoms, tops)
    assert layer.allow_force_backward(0) and not layer.allow_force_backward(1)
    assert layer.allow_force_backward(2)
    with pytest.raises(RistrettoError, match="Cannot backpropagate to sequence indicators"):
        layer.backward(tops, [True, True], bottoms)
    unit, bottoms, tops = setup('type: "LSTMUnit"', [np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.ones((1, 2))],
                                num_tops=2)
    unit.forward(bottoms, tops)
    assert unit.allow_force_backward(1) and not unit.allow_force_backward(2)
    with pytest.raises(RistrettoError, match="Cannot backpropagate to sequence indicators"):
        unit.backward(tops, [True, True, True], bottoms)


# ------------------------------------------------------------------ shape checks
@pytest.mark.parametrize("spec, bottoms, message", [
    (lstm_spec(), [np.zeros(5), np.zeros((5, 3))], "bottom\\[0\\] must have at least 2 axes"),
    (lstm_spec(), [np.zeros((5, 3)), np.zeros((5, 3))], "inner product axis 2 out of range"),
    (lstm_spec(), [np.zeros((5, 3, 2)), np.zeros((5, 3, 1))], "bottom\\[1\\] must have exactly 2 axes"),
    (lstm_spec(), [np.zeros((5, 3, 2)), np.zeros((5, 2))], "bottom\\[1\\] must have shape \\(5, 3\\)"),
    (rnn_spec(), [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((2, 4))], "static input"),
    ('type: "LSTM" recurrent_param { }', [np.zeros((5, 3, 2)), np.zeros((5, 3))], "num_output must be positive"),
    (lstm_spec(), [np.zeros((5, 3, 2))], "takes at least 2 bottom"),
    (lstm_spec(extra="expose_hidden: true"), [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((1, 3, 4))],
     "takes at least 4 bottom"),
    (lstm_spec(extra="expose_hidden: true"),
     [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((1, 3, 4)), np.zeros((1, 3, 5))], "shape mismatch"),
    (rnn_spec(), [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((3, 2)), np.zeros((3, 2))],
     "takes at most 3 bottom"),
])
def test_set_up_refuses_bad_shapes(spec, bottoms, message):
    with pytest.raises(RistrettoError, match=message):
        setup(spec, bottoms, num_tops=3 if "expose" in spec else 1)


def test_tops_must_match_expose_hidden():
    with pytest.raises(RistrettoError, match="takes 3 top"):
        setup(lstm_spec(extra="expose_hidden: true"),
              [np.zeros((5, 3, 2)), np.zeros((5, 3)), np.zeros((1, 3, 4)), np.zeros((1, 3, 4))])
    with pytest.raises(RistrettoError, match="takes 1 top"):
        setup(rnn_spec(), [np.zeros((5, 3, 2)), np.zeros((5, 3))], num_tops=2)


def test_reshape_keeps_the_number_of_steps_and_the_input_size():
    layer, bottoms, tops = setup(lstm_spec(), [inputs(), CONT])
    bottoms[0].data, bottoms[1].data = inputs(steps=4), np.ones((4, 3), np.float32)
    with pytest.raises(RistrettoError, match="input number of timesteps changed"):
        layer.forward(bottoms, tops)
    bottoms[0].data, bottoms[1].data = inputs(dims=(7,)), CONT
    with pytest.raises(RistrettoError, match="Input size incompatible"):
        layer.forward(bottoms, tops)
    bottoms[0].data, bottoms[1].data = inputs(streams=2), CONT
    with pytest.raises(RistrettoError, match="must have shape \\(5, 2\\)"):
        layer.forward(bottoms, tops)


@pytest.mark.parametrize("bottoms, message", [
    ([np.zeros((1, 2, 3)), np.zeros((1, 2, 12)), np.zeros((1, 2, 1))], "bottom\\[2\\] must have 2 axes"),
    ([np.zeros((2, 3)), np.zeros((1, 2, 12)), np.zeros((1, 2))], "bottom\\[0\\] must have 3 axes"),
    ([np.zeros((1, 2, 3)), np.zeros((1, 3, 12)), np.zeros((1, 2))], "bottom\\[1\\] must have shape \\(1, 2"),
    ([np.zeros((2, 2, 3)), np.zeros((2, 2, 12)), np.zeros((2, 2))], "bottom\\[0\\] must have shape \\(1, 2"),
    ([np.zeros((1, 2, 3)), np.zeros((1, 2, 10)), np.zeros((1, 2))], "4 \\* 3 = 12 channels"),
])
def test_lstm_unit_refuses_bad_shapes(bottoms, message):
    with pytest.raises(RistrettoError, match=message):
        setup('type: "LSTMUnit"', bottoms, num_tops=2)


def test_preloaded_blobs_are_used_and_checked():
    layer, *_ = setup(lstm_spec(), [inputs(), CONT])
    param = caffe_pb2.LayerParameter()
    param.CopyFrom(layer.param)
    for blob in layer.blobs:
        param.blobs.add().CopyFrom(array_to_blob(blob.data))
    again, *_ = setup(param, [inputs(), CONT], seed=99)
    assert all(np.array_equal(a.data, b.data) for a, b in zip(layer.blobs, again.blobs))
    param.ClearField("blobs")
    param.blobs.add().CopyFrom(array_to_blob(np.zeros((16, 5), np.float32)))
    with pytest.raises(RistrettoError, match="incorrect number of parameter blobs"):
        setup(param, [inputs(), CONT])


def test_carried_state_survives_a_json_round_trip():
    x = inputs()
    layer, bottoms, tops = setup(lstm_spec(), [x, np.ones((5, 3), np.float32)])
    layer.forward(bottoms, tops)
    state = json.loads(json.dumps(layer.state_dict()))
    layer.forward(bottoms, tops)
    after = tops[0].data.copy()
    resumed, rb, rt = setup(lstm_spec(), [x, np.ones((5, 3), np.float32)])
    resumed.load_state_dict(state)
    resumed.forward(rb, rt)
    np.testing.assert_array_equal(rt[0].data, after)


# ------------------------------------------------------------------ a whole net
NET = """
name: "sequences"
layer { name: "data" type: "Input" top: "x" top: "cont" top: "target"
        input_param { shape { dim: 4 dim: 2 dim: 3 } shape { dim: 4 dim: 2 } shape { dim: 4 dim: 2 dim: 2 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 5 weight_filler { type: "uniform" min: -0.3 max: 0.3 }
                          bias_filler { type: "constant" value: 0.1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 axis: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


def feed(net, x, cont, target):
    net.blobs["x"].data[...] = x
    net.blobs["cont"].data[...] = cont
    net.blobs["target"].data[...] = target


def test_a_net_with_an_lstm_trains_saves_and_loads(tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    x = RNG.standard_normal((4, 2, 3)).astype(np.float32)
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float32)
    target = RNG.standard_normal((4, 2, 2)).astype(np.float32)
    net = caffe.Net(str(proto), caffe.TRAIN, seed=3)
    assert [p.data.shape for p in net.params["lstm"]] == [(20, 3), (20,), (20, 5)]
    np.testing.assert_array_equal(net.params["lstm"][1].data, np.float32(0.1))
    feed(net, x, cont, target)
    loss = net.forward()["loss"]
    net.backward()
    assert all(p.diff.any() for p in net.params["lstm"])
    assert not net.blobs["cont"].diff.any()
    w_xc, b_c, w_hc = (p.data.astype(np.float64) for p in net.params["lstm"])
    h, _, _ = lstm_reference(x, cont, w_xc, b_c, w_hc)
    np.testing.assert_allclose(net.blobs["h"].data, h, rtol=1e-5, atol=1e-6)
    for p in net.params["lstm"]:                # one plain gradient step lowers the loss
        p.data[...] -= 0.05 * p.diff
    feed(net, x, cont, target)
    assert net.forward()["loss"] < loss

    weights = tmp_path / "net.caffemodel"
    net.save(str(weights))
    saved = {lp.name: lp for lp in read_weights(str(weights)).layer}
    assert [tuple(b.shape.dim) for b in saved["lstm"].blobs] == [(20, 3), (20,), (20, 5)]
    loaded = caffe.Net(str(proto), str(weights), caffe.TEST)
    for mine, theirs in zip(net.params["lstm"], loaded.params["lstm"]):
        np.testing.assert_array_equal(mine.data, theirs.data)
    feed(net, x, cont, target)
    feed(loaded, x, cont, target)
    np.testing.assert_array_equal(loaded.forward()["loss"], net.forward()["loss"])


def test_a_caffemodel_laid_out_as_caffe_writes_it_loads(tmp_path):
    """Caffe's LSTM owns the unrolled net's parameters W_xc, b_c, W_hc in that order."""
    proto = tmp_path / "net.prototxt"
    proto.write_text(NET)
    model = caffe_pb2.NetParameter(name="sequences")
    w_xc, b_c, w_hc = (RNG.standard_normal(s).astype(np.float32) * 0.5 for s in [(20, 3), (20,), (20, 5)])
    lp = model.layer.add(name="lstm", type="LSTM")
    for array in (w_xc, b_c, w_hc):
        lp.blobs.add().CopyFrom(array_to_blob(array))
    weights = tmp_path / "caffe.caffemodel"
    write_caffemodel(str(weights), model)
    net = caffe.Net(str(proto), str(weights), caffe.TEST)
    x = RNG.standard_normal((4, 2, 3)).astype(np.float32)
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float32)
    feed(net, x, cont, np.zeros((4, 2, 2), np.float32))
    net.forward()
    want, _, _ = lstm_reference(x, cont, *(a.astype(np.float64) for a in (w_xc, b_c, w_hc)))
    np.testing.assert_allclose(net.blobs["h"].data, want, rtol=1e-5, atol=1e-6)


def test_force_backward_leaves_the_continuation_indicators_alone(tmp_path):
    proto = tmp_path / "net.prototxt"
    proto.write_text("force_backward: true\n" + NET)
    net = caffe.Net(str(proto), caffe.TRAIN)
    feed(net, RNG.standard_normal((4, 2, 3)), np.ones((4, 2)), np.zeros((4, 2, 2)))
    net.forward()
    net.backward()          # would fail if cont were asked for a gradient
    assert net.blobs["x"].diff.any()


def test_train_phase_behaves_as_test():
    x = inputs()
    a = setup(lstm_spec(), [x, CONT], phase=TRAIN)
    b = setup(lstm_spec(), [x, CONT])
    a[0].forward(a[1], a[2])
    b[0].forward(b[1], b[2])
    np.testing.assert_array_equal(a[2][0].data, b[2][0].data)


SEQUENCE_NET = """
name: "sequences"
layer { name: "data" type: "DummyData" top: "x" top: "cont" top: "target"
        dummy_data_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } shape { dim: 3 dim: 2 dim: 2 }
                           data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
                           data_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" top: "h"
        recurrent_param { num_output: 3 weight_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "h" top: "y"
        inner_product_param { num_output: 2 axis: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "target" top: "loss" }
"""


def test_resume_restores_the_carried_state(tmp_path, monkeypatch):
    """cont is always 1, so every iteration starts from the state the previous one ended with;
    a resumed run must end with the same weights, bit for bit, as an uninterrupted one."""
    monkeypatch.chdir(tmp_path)
    text = 'base_lr: 0.1 lr_policy: "fixed" momentum: 0.9 random_seed: 7 max_iter: 8 snapshot: 5 '
    for prefix in ("full", "part"):
        with open(f"{prefix}.prototxt", "w") as f:
            f.write(f'net_param {{ {SEQUENCE_NET} }}\n{text} snapshot_prefix: "{prefix}"\n')
        train(f"{prefix}.prototxt", show_progress=False)
    train("part.prototxt", snapshot="part_iter_5.solverstate", show_progress=False)
    full, part = read_weights("full_iter_8.caffemodel"), read_weights("part_iter_8.caffemodel")
    for a, b in zip(full.layer, part.layer):
        assert [blob_to_array(x).tobytes() for x in a.blobs] == [blob_to_array(x).tobytes() for x in b.blobs]
