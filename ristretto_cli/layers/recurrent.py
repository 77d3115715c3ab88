"""Recurrent layers: RNN and LSTM (Caffe's RecurrentLayer family) and the LSTMUnit cell.

Caffe runs RNN and LSTM as a net unrolled over the T time steps of the input (InnerProduct,
Eltwise, Scale, TanH and LSTMUnit layers); here the recurrence runs directly with the same
arithmetic: one GEMM takes the inputs of every time step to the gate dimension (with the
bias), then a loop over the time steps adds the recurrent product of the previous hidden
state, each step vectorised over the streams and units. The parameter blobs are the ones
the unrolled net owns, in its order, so weights files are interchangeable with Caffe's:

* LSTM: ``W_xc`` (4H, K), ``b_c`` (4H), [``W_xc_static`` (4H, K_static)], ``W_hc`` (4H, H);
  gate rows in the order i, f, o, g.
* RNN: ``W_xh`` (H, K), ``b_h`` (H), [``W_xh_static`` (H, K_static)], ``W_hh`` (H, H),
  ``W_ho`` (H, H), ``b_o`` (H).

Bottoms: ``x`` (T, N, ...), the continuation indicators ``cont`` (T, N), where
``cont[t, n] = 0`` starts a new sequence in stream n (it multiplies the previous hidden state,
and LSTM's previous cell state through the forget gate), an optional static input (N, ...)
added at every step, and with ``expose_hidden``
the initial states (1, N, H) (RNN: h; LSTM: h, c). Tops: (T, N, H), and with
``expose_hidden`` the final states. Without ``expose_hidden`` the final states of one forward
are the initial states of the next, as in Caffe. As there, gradients never flow into the
initial states nor out of the exposed final states (Caffe shares only their values with the
unrolled net), nor into ``cont``. ``recurrent_param.debug_info`` (Caffe's log of the
unrolled net's blobs) is accepted and logs nothing: there is no unrolled net.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ristretto_cli import parallel
from ristretto_cli.blob import canonical_axis, count, shape_str
from ristretto_cli.layers.base import Layer
from ristretto_cli.layers.neuron import in_double, sigmoid_in_double
from ristretto_cli.layers.registry import register
from ristretto_cli.log import logger

WEIGHT, BIAS = "weight", "bias"


# --------------------------------------------------------------------------- LSTM cell
def lstm_activations(gates: np.ndarray, cont: np.ndarray, acts: np.ndarray) -> None:
    """The activated gates ``[i, f, o, g]`` of the pre-activations ``gates`` (..., 4H):
    sigmoid for i, f, o and tanh for g, each evaluated in double and rounded once (Caffe's
    LSTMUnit computes them in double); the forget gate is multiplied by ``cont`` (...),
    and is exactly 0 where ``cont`` is 0."""
    h = gates.shape[-1] // 4
    sigmoid_in_double(gates[..., :3 * h], acts[..., :3 * h])
    in_double(np.tanh, gates[..., 3 * h:], acts[..., 3 * h:])
    forget = acts[..., h:2 * h]
    forget *= cont[..., None]
    restart = cont == 0
    if restart.any():
        forget[restart] = 0


def lstm_cell(c_prev, acts, c, tanh_c, h) -> None:
    """``c = f * c_prev + i * g`` and ``h = o * tanh(c)`` from the activated gates."""
    n = c_prev.shape[-1]
    i, f, o, g = (acts[..., k * n:(k + 1) * n] for k in range(4))
    np.multiply(f, c_prev, out=c)
    c += i * g
    in_double(np.tanh, c, tanh_c)
    np.multiply(o, tanh_c, out=h)


def lstm_cell_backward(c_prev, acts, tanh_c, dc, dh, dgates) -> np.ndarray:
    """Caffe's LSTMUnit gradients: writes those of the gate pre-activations into ``dgates``
    and returns that of ``c_prev``. The forget gate's derivative is taken as ``f * (1 - f)``
    of the cont-scaled gate, as Caffe does: exact for binary ``cont``."""
    n = c_prev.shape[-1]
    i, f, o, g = (acts[..., k * n:(k + 1) * n] for k in range(4))
    c_term = dh * o * (1 - tanh_c * tanh_c) + dc
    dgates[..., :n] = c_term * g * i * (1 - i)
    dgates[..., n:2 * n] = c_term * c_prev * f * (1 - f)
    dgates[..., 2 * n:3 * n] = dh * tanh_c * o * (1 - o)
    dgates[..., 3 * n:] = c_term * i * (1 - g * g)
    return c_term * f


@register("LSTMUnit")
class LSTMUnitLayer(Layer):
    """One LSTM step: bottoms ``c_prev`` (1, N, H), the gate pre-activations (1, N, 4H) in the
    order i, f, o, g, and ``cont`` (1, N); tops ``c`` and ``h`` (1, N, H), with
    ``c = cont * sigmoid(f') * c_prev + sigmoid(i') * tanh(g')`` and ``h = sigmoid(o') * tanh(c)``."""
    exact_bottoms = 3
    exact_tops = 2

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 2

    def reshape(self, bottom, top):
        for i, blob in enumerate(bottom):
            want = 2 if i == 2 else 3
            if blob.num_axes != want:
                raise self.error(f"bottom[{i}] must have {want} axes, got shape {shape_str(blob.shape)}")
        n = bottom[0].shape[1]
        for i, blob in enumerate(bottom):
            if blob.shape[0] != 1 or blob.shape[1] != n:
                raise self.error(f"bottom[{i}] must have shape (1, {n}, ...) like bottom[0], got "
                                 f"{shape_str(blob.shape)}")
        self.hidden_dim = bottom[0].shape[2]
        if bottom[1].shape[2] != 4 * self.hidden_dim:
            raise self.error(f"the gate input (bottom[1]) must have 4 * {self.hidden_dim} = "
                             f"{4 * self.hidden_dim} channels, got {bottom[1].shape[2]}")
        top[0].reshape(bottom[0].shape)
        top[1].reshape(bottom[0].shape)

    def forward_cpu(self, bottom, top):
        gates, cont = bottom[1].data, bottom[2].data
        acts = np.empty_like(gates)
        lstm_activations(gates, cont, acts)
        c = np.empty_like(top[0].data)
        lstm_cell(bottom[0].data, acts, c, np.empty_like(c), top[1].data)
        top[0].data[...] = c        # after the reads: c may be c_prev's own array

    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[2]:
            raise self.error("Cannot backpropagate to sequence indicators.")
        if not (propagate_down[0] or propagate_down[1]):
            return
        # Like Caffe, the activations are recomputed from the bottoms and the top c.
        gates, cont = bottom[1].data, bottom[2].data
        acts = np.empty_like(gates)
        lstm_activations(gates, cont, acts)
        tanh_c = np.empty_like(top[0].data)
        in_double(np.tanh, top[0].data, tanh_c)
        dgates = np.empty_like(gates)
        dc_prev = lstm_cell_backward(bottom[0].data, acts, tanh_c, top[0].diff, top[1].diff, dgates)
        if propagate_down[0]:
            bottom[0].diff[...] = dc_prev
        if propagate_down[1]:
            bottom[1].diff[...] = dgates


# --------------------------------------------------------------------------- RNN, LSTM
def recurrent_sum(h_prev, cont_t, w_rec, pre_t, static, h_conted_t) -> np.ndarray:
    """One step's pre-activation ``W_rec (cont_t h_{t-1}) + pre_t [+ static]``, summed in the
    order of Caffe's unrolled net; the cont-scaled state is kept in ``h_conted_t`` for the
    recurrent weight's gradient."""
    np.multiply(h_prev, cont_t[:, None], out=h_conted_t)
    total = h_conted_t @ w_rec.T
    total += pre_t
    if static is not None:
        total += static
    return total


class RecurrentLayer(Layer):
    """What RNN and LSTM share: bottoms, shape checks, the input transforms of ``x`` and the
    static input, the hidden states carried from one forward to the next."""
    inplace_allowed = False
    #: the recurrent states, in Caffe's order of the exposed bottoms and tops
    state_names: ClassVar[tuple[str, ...]] = ()
    #: rows of the input transforms per hidden unit (4 gates for LSTM)
    gates_per_unit: ClassVar[int] = 1

    def __init__(self, param, **kwargs):
        super().__init__(param, **kwargs)
        self.expose_hidden = self.param.recurrent_param.expose_hidden
        exposed = len(self.state_names) if self.expose_hidden else 0
        self.min_bottoms = 2 + exposed
        self.max_bottoms = 3 + exposed
        self.exact_tops = 1 + exposed
        #: per state, the values the last forward ended with (flat, Caffe's blob memory)
        self._carried: list[np.ndarray] = []

    def allow_force_backward(self, bottom_index: int) -> bool:
        return bottom_index != 1

    def recurrent_shapes(self, hidden: int) -> list[tuple[tuple[int, ...], str]]:
        """Shapes and kinds (WEIGHT, BIAS) of the blobs after the input transforms."""
        raise NotImplementedError

    def layer_setup(self, bottom, top):
        p = self.param.recurrent_param
        x = bottom[0]
        if x.num_axes < 2:
            raise self.error("bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...)")
        self.num_timesteps, streams = x.shape[:2]
        logger.info("Initializing recurrent layer: assuming input batch contains %d timesteps "
                    "of %d independent streams.", self.num_timesteps, streams)
        self._check_cont(bottom[1], streams)
        self.static_input = len(bottom) > self.min_bottoms
        if self.static_input and (bottom[2].num_axes < 1 or bottom[2].shape[0] != streams):
            raise self.error(f"the static input (bottom[2]) must have {streams} streams on axis 0, "
                             f"got shape {shape_str(bottom[2].shape)}")
        if p.num_output <= 0:
            raise self.error("num_output must be positive")
        self.hidden = int(p.num_output)
        canonical_axis(2, x.num_axes, "inner product axis")
        self.input_dim = count(x.shape, 2)
        rows = self.gates_per_unit * self.hidden
        specs = [((rows, self.input_dim), WEIGHT), ((rows,), BIAS)]
        if self.static_input:
            canonical_axis(1, bottom[2].num_axes, "inner product axis")
            self.static_dim = count(bottom[2].shape, 1)
            specs.append(((rows, self.static_dim), WEIGHT))
        specs += self.recurrent_shapes(self.hidden)
        #: index of the first blob after the input transforms
        self.recurrent_index = 3 if self.static_input else 2
        if not self.check_param_shapes([shape for shape, _ in specs]):
            for shape, kind in specs:
                self.add_param_blob(shape, p.weight_filler if kind == WEIGHT else p.bias_filler)

    def _check_cont(self, cont, streams: int) -> None:
        if cont.num_axes != 2:
            raise self.error("bottom[1] must have exactly 2 axes -- (#timesteps, #streams)")
        if cont.shape != (self.num_timesteps, streams):
            raise self.error(f"bottom[1] must have shape ({self.num_timesteps}, {streams}) "
                             f"-- (#timesteps, #streams), got {shape_str(cont.shape)}")

    def reshape(self, bottom, top):
        x = bottom[0]
        if x.num_axes < 2:
            raise self.error("bottom[0] must have at least 2 axes -- (#timesteps, #streams, ...)")
        if x.shape[0] != self.num_timesteps:
            raise self.error(f"input number of timesteps changed: {x.shape[0]}, the layer was "
                             f"set up for {self.num_timesteps}")
        streams = x.shape[1]
        self._check_cont(bottom[1], streams)
        canonical_axis(2, x.num_axes, "inner product axis")
        if count(x.shape, 2) != self.input_dim:
            raise self.error(f"Input size incompatible with inner product parameters: the layer "
                             f"was set up for {self.input_dim} inputs per step, bottom[0] "
                             f"{shape_str(x.shape)} has {count(x.shape, 2)}")
        state_shape = (1, streams, self.hidden)
        first_state = 2
        if self.static_input:
            first_state = 3
            xs = bottom[2]
            canonical_axis(1, xs.num_axes, "inner product axis")
            if xs.shape[0] != streams or count(xs.shape, 1) != self.static_dim:
                raise self.error(f"the static input (bottom[2]) must have shape ({streams}, ...) "
                                 f"with {self.static_dim} values per stream, got {shape_str(xs.shape)}")
        if self.expose_hidden:
            for j, blob in enumerate(bottom[first_state:]):
                if blob.shape != state_shape:
                    raise self.error(f"shape mismatch - the initial {self.state_names[j]} state "
                                     f"(bottom[{first_state + j}]) must be {shape_str(state_shape)}, "
                                     f"got {shape_str(blob.shape)}")
            for t in top[1:]:
                t.reshape(state_shape)
        else:
            # Caffe's final-state blobs keep their memory while it is large enough, and a new
            # (zeroed) one comes with a larger batch: the carried states follow that.
            size = streams * self.hidden
            dtype = x.data.dtype
            if not self._carried:
                self._carried = [np.zeros(size, dtype) for _ in self.state_names]
            self._carried = [s.astype(dtype, copy=False) if s.size >= size else np.zeros(size, dtype)
                             for s in self._carried]
        top[0].reshape((self.num_timesteps, streams, self.hidden))

    # ----------------------------------------------------------------- forward
    def forward_cpu(self, bottom, top):
        x = bottom[0].data
        steps, streams = x.shape[:2]
        dt = x.dtype
        rows = self.gates_per_unit * self.hidden
        # The input transform of every step as one GEMM (Caffe's x_transform), bias added after.
        pre = np.empty((steps * streams, rows), dt)
        parallel.matmul(x.reshape(steps * streams, self.input_dim), self.blobs[0].data.T, pre)
        pre += self.blobs[1].data
        static = None
        if self.static_input:
            xs = bottom[2].data.reshape(streams, self.static_dim)
            static = xs @ self.blobs[2].data.T
        states = self._initial_states(bottom, streams)
        finals = self.recur(pre.reshape(steps, streams, rows), bottom[1].data, static, states,
                            top[0].data)
        for j, final in enumerate(finals):
            if self.expose_hidden:
                top[1 + j].data[...] = final.reshape(top[1 + j].shape)
            else:
                self._carried[j][:final.size] = final.ravel()

    def _initial_states(self, bottom, streams: int) -> list[np.ndarray]:
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            return [b.data.reshape(streams, self.hidden) for b in bottom[first:]]
        return [s[:streams * self.hidden].reshape(streams, self.hidden).copy() for s in self._carried]

    def recur(self, pre, cont, static, states, out) -> list[np.ndarray]:
        """Run the recurrence over the steps of ``pre`` (T, N, G), the transformed inputs, with
        ``static`` (N, G) or None added at every step, from the initial ``states``; write the
        top into ``out`` (T, N, H); return the final states."""
        raise NotImplementedError

    # ----------------------------------------------------------------- backward
    def backward_cpu(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("Cannot backpropagate to sequence indicators.")
        dpre = self.recur_backward(top, bottom[1].data)
        steps, streams, rows = dpre.shape
        dpre2 = dpre.reshape(steps * streams, rows)
        x2 = bottom[0].data.reshape(steps * streams, self.input_dim)
        if self.wants_param(0):
            self.blobs[0].diff += dpre2.T @ x2
        if self.wants_param(1):
            self.blobs[1].diff += dpre2.sum(axis=0)
        if propagate_down[0]:
            bottom[0].diff[...] = (dpre2 @ self.blobs[0].data).reshape(bottom[0].shape)
        first_state = 2
        if self.static_input:
            first_state = 3
            per_stream = dpre.sum(axis=0)       # the static term is added at every step
            if self.wants_param(2):
                xs = bottom[2].data.reshape(streams, self.static_dim)
                self.blobs[2].diff += per_stream.T @ xs
            if propagate_down[2]:
                bottom[2].diff[...] = (per_stream @ self.blobs[2].data).reshape(bottom[2].shape)
        for i in range(first_state, len(bottom)):
            if propagate_down[i]:
                bottom[i].diff[...] = 0     # Caffe passes no gradient to the initial states

    def wants_param(self, index: int) -> bool:
        ppd = self.param_propagate_down
        return index < len(ppd) and ppd[index]

    def recur_backward(self, top, cont) -> np.ndarray:
        """Back through the recurrence of the last forward: accumulate the gradients of the
        recurrent blobs; return that of the transformed inputs (T, N, G)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- resumable state
    def state_dict(self) -> dict | None:
        """The states carried to the next forward, which an exact resume needs."""
        if self.expose_hidden or not self._carried:
            return None
        return {"carried": [s.tolist() for s in self._carried], "dtype": self._carried[0].dtype.name}

    def load_state_dict(self, state: dict) -> None:
        self._carried = [np.array(s, dtype=state["dtype"]) for s in state["carried"]]


@register("RNN")
class RNNLayer(RecurrentLayer):
    """``h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static])``,
    output ``o_t = tanh(W_ho h_t + b_o)``."""
    state_names = ("h",)

    def recurrent_shapes(self, hidden):
        return [((hidden, hidden), WEIGHT), ((hidden, hidden), WEIGHT), ((hidden,), BIAS)]

    def recur(self, pre, cont, static, states, out):
        steps, streams, hidden = pre.shape
        w_hh = self.blobs[self.recurrent_index].data
        w_ho, b_o = (b.data for b in self.blobs[self.recurrent_index + 1:])
        self._h = h = np.empty_like(pre)
        self._h_conted = h_conted = np.empty_like(pre)
        (h_prev,) = states
        for t in range(steps):
            in_double(np.tanh, recurrent_sum(h_prev, cont[t], w_hh, pre[t], static, h_conted[t]), h[t])
            h_prev = h[t]
        # The output transform of every step as one GEMM, then its tanh.
        y = out.reshape(steps * streams, hidden)
        parallel.matmul(h.reshape(steps * streams, hidden), w_ho.T, y)
        y += b_o
        in_double(np.tanh, y, y)
        return [h[steps - 1]]

    def recur_backward(self, top, cont):
        steps, streams, hidden = self._h.shape
        w_hh, w_ho = self.blobs[self.recurrent_index].data, self.blobs[self.recurrent_index + 1].data
        y = top[0].data.reshape(steps * streams, hidden)
        dy = top[0].diff.reshape(steps * streams, hidden)
        dout = dy * (1 - y * y)
        h2 = self._h.reshape(steps * streams, hidden)
        if self.wants_param(self.recurrent_index + 1):
            self.blobs[self.recurrent_index + 1].diff += dout.T @ h2
        if self.wants_param(self.recurrent_index + 2):
            self.blobs[self.recurrent_index + 2].diff += dout.sum(axis=0)
        dh_out = (dout @ w_ho).reshape(steps, streams, hidden)
        dpre = np.empty_like(self._h)
        dh_next = None
        for t in reversed(range(steps)):
            dh = dh_out[t] if dh_next is None else dh_out[t] + dh_next
            dpre[t] = dh * (1 - self._h[t] * self._h[t])
            if t:
                dh_next = dpre[t] @ w_hh
                dh_next *= cont[t][:, None]
        if self.wants_param(self.recurrent_index):
            self.blobs[self.recurrent_index].diff += (
                dpre.reshape(-1, hidden).T @ self._h_conted.reshape(-1, hidden))
        return dpre


@register("LSTM")
class LSTMLayer(RecurrentLayer):
    """Gates ``W_hc (cont_t h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static]`` in the order
    i, f, o, g; ``c_t = cont_t f_t c_{t-1} + i_t g_t``, top ``h_t = o_t tanh(c_t)``
    (Caffe's LSTMUnit at every step)."""
    state_names = ("h", "c")
    gates_per_unit = 4

    def recurrent_shapes(self, hidden):
        return [((4 * hidden, hidden), WEIGHT)]

    def recur(self, pre, cont, static, states, out):
        steps, streams, rows = pre.shape
        hidden = rows // 4
        w_hc = self.blobs[self.recurrent_index].data
        h_prev, c0 = states
        self._h_conted = h_conted = np.empty_like(out)
        self._acts = acts = np.empty_like(pre)
        self._c = c = np.empty((steps + 1, streams, hidden), pre.dtype)
        self._tanh_c = tanh_c = np.empty_like(out)
        c[0] = c0
        for t in range(steps):
            gates = recurrent_sum(h_prev, cont[t], w_hc, pre[t], static, h_conted[t])
            lstm_activations(gates, cont[t], acts[t])
            lstm_cell(c[t], acts[t], c[t + 1], tanh_c[t], out[t])
            h_prev = out[t]
        return [out[steps - 1], c[steps]]

    def recur_backward(self, top, cont):
        steps, streams, hidden = self._tanh_c.shape
        w_hc = self.blobs[self.recurrent_index].data
        dy = top[0].diff
        dgates = np.empty_like(self._acts)
        dh_next = np.zeros((streams, hidden), dy.dtype)
        dc_next = np.zeros_like(dh_next)
        for t in reversed(range(steps)):
            dc_next = lstm_cell_backward(self._c[t], self._acts[t], self._tanh_c[t], dc_next,
                                         dy[t] + dh_next, dgates[t])
            if t:
                dh_next = dgates[t] @ w_hc
                dh_next *= cont[t][:, None]
        if self.wants_param(self.recurrent_index):
            self.blobs[self.recurrent_index].diff += (
                dgates.reshape(-1, 4 * hidden).T @ self._h_conted.reshape(-1, hidden))
        return dgates
