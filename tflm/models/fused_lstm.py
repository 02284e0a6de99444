"""A fused LSTM layer for CPU training: keras.layers.LSTM's math, weights and checkpoint layout,
with its time loop and backward pass written for speed.

  - the input projection of every time step is one matmul before the loop;
  - the forward loop does one [batch, units] x [units, 4 units] matmul per step and stores each
    step's c and gates (h = o * tanh(c) is recomputed for all steps at once after the loop);
  - the backward pass is written by hand (`tf.custom_gradient`): what does not depend on the
    gradient flowing back (gate derivatives, tanh(c)) is computed for all steps before its loop,
    the loop does one matmul per step (against a transposed copy of the recurrent kernel), and
    the weight gradients are two large matmuls over all time steps after the loop, as cuDNN and
    oneDNN do it.
Measured on a 2-core AMD EPYC (avx512_bf16, no AMX; TensorFlow 2.21, PyTorch 2.13, 2 threads; a
machine shared with other work, so each pair below was timed side by side in one process and
only its ratio carries over), one layer of 256 units on [12, 64, 256] inputs (the batch and
context of configs/char_lstm.yaml), forward and backward under XLA: keras.layers.LSTM 70.8 ms against this
layer's 36.2 ms (TensorFlow's autodiff of the loop differentiates each step's cell separately);
the previous version of this file (three arrays stored per step, sigmoids and tanh apart, a
transpose_b matmul per backward step, gate derivatives inside the loop) 24.2 ms against 18.8 ms,
and a whole training step of the char LSTM 49.8 ms against 38.3 ms. PyTorch's nn.LSTM (oneDNN)
took 14.8 ms for that layer (5.2 ms forward, this layer 7.4 ms): its 6 matmuls of 0.4 GFLOP
(projection, 64 recurrent steps forward and 64 back, three gradients) run at 140-200 GFLOP/s
under XLA too, so the difference is the loops' per-step work besides the matmul (about 30 us a
step forward and 50 back, the time measured less its matmuls at those rates: XLA runs each
step's few fused ops and array writes one after another). Slower here:
without XLA 1.3x (graph mode; tf.raw_ops.BlockLSTMV2, which XLA cannot compile, 5.5x),
mixed_bfloat16 1.36x (XLA's CPU matmul has no fast bf16 path); unrolling the loops 2 or 4 steps
per iteration was no faster.
Gates are i, f, g, o in Keras' order; the cell is a `keras.layers.LSTMCell` (so checkpoints of
`keras.layers.LSTM` restore: lstm_i/cell/kernel, recurrent_kernel, bias).
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="tflm")
class FusedLSTM(keras.layers.Layer):
    """LSTM over [batch, time, features] -> (outputs [batch, time, units], h, c).

    Call as `lstm(x)` or `lstm(x, initial_state=[h, c])`, like
    `keras.layers.LSTM(units, return_sequences=True, return_state=True)`; `step_mask` [batch, time]
    (False: the step keeps the state it had) does what that layer's `mask` does.
    """

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.cell = keras.layers.LSTMCell(units, name="lstm_cell", dtype=self.dtype_policy)

    def build(self, input_shape):
        self.cell.build(input_shape[:1] + input_shape[2:])

    def call(self, inputs, initial_state=None, step_mask=None, training=False):
        batch = tf.shape(inputs)[0]
        if initial_state is None:
            zeros = tf.zeros([batch, self.units], inputs.dtype)
            initial_state = [zeros, zeros]
        h0, c0 = (tf.cast(s, inputs.dtype) for s in initial_state)
        weights = [tf.cast(tf.convert_to_tensor(w), inputs.dtype)
                   for w in (self.cell.kernel, self.cell.recurrent_kernel, self.cell.bias)]
        sequence = masked_lstm_sequence(inputs, step_mask, *weights, h0, c0) if step_mask is not None else \
            lstm_sequence(inputs, *weights, h0, c0)
        outputs, h, c = sequence
        outputs = tf.ensure_shape(outputs, inputs.shape[:2] + (self.units,))  # the loop's TensorArray loses it
        return outputs, h, c

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def lstm_cell(z, c):
    """(h, c, gates i f g o) of one step from its pre-activations `z` [batch, 4 units]."""
    i, f, g, o = tf.split(z, 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = f * c + i * g
    return o * tf.tanh(c), c, (i, f, g, o)


def masked_lstm_sequence(inputs, mask, kernel, recurrent_kernel, bias, h0, c0):
    """(outputs, h, c) where a step whose `mask` [batch, time] is False keeps the state it had, as
    keras.layers.LSTM does with a mask (for inference on right-padded batches: no custom gradient)."""
    projected = tf.einsum("btf,fg->tbg", inputs, kernel) + bias
    keep = tf.transpose(mask)[:, :, None]  # [time, batch, 1]

    def step(t, h, c, hs):
        new_h, new_c, _ = lstm_cell(projected[t] + tf.matmul(h, recurrent_kernel), c)
        h, c = tf.where(keep[t], new_h, h), tf.where(keep[t], new_c, c)
        return t + 1, h, c, hs.write(t, h)

    steps = tf.shape(projected)[0]
    _, h, c, hs = tf.while_loop(lambda t, *_: t < steps, step,
                                (0, h0, c0, tf.TensorArray(inputs.dtype, size=steps)))
    return tf.transpose(hs.stack(), [1, 0, 2]), h, c


@tf.custom_gradient
def lstm_sequence(inputs, kernel, recurrent_kernel, bias, h0, c0):
    """(outputs [batch, time, units], h, c) of an LSTM, with a hand-written backward pass."""
    x = tf.transpose(inputs, [1, 0, 2])  # time-major
    projected = tf.einsum("tbf,fg->tbg", x, kernel) + bias  # every step's input term at once
    h, c, cs, gates = forward_loop(projected, recurrent_kernel, h0, c0)
    hs = gates[..., -tf.shape(h)[-1]:] * tf.tanh(cs)  # o * tanh(c): the loop's h, not stored by it
    outputs = tf.transpose(hs, [1, 0, 2])

    def backward(d_outputs, d_h, d_c):
        d_hs = tf.zeros_like(hs) if d_outputs is None else tf.transpose(d_outputs, [1, 0, 2])
        d_h = tf.zeros_like(h) if d_h is None else d_h
        d_c = tf.zeros_like(c) if d_c is None else d_c
        previous_h = tf.concat([h0[None], hs[:-1]], axis=0)
        previous_c = tf.concat([c0[None], cs[:-1]], axis=0)
        d_zs, d_h0, d_c0 = backward_loop(d_hs, d_h, d_c, gates, cs, previous_c, recurrent_kernel)
        units = tf.shape(h)[-1]
        flat_dz = tf.reshape(d_zs, [-1, 4 * units])  # [time x batch, 4 units]
        d_recurrent = tf.matmul(tf.reshape(previous_h, [-1, units]), flat_dz, transpose_a=True)
        d_kernel = tf.matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), flat_dz, transpose_a=True)
        d_inputs = tf.einsum("tbg,fg->btf", d_zs, kernel)
        return d_inputs, d_kernel, d_recurrent, tf.reduce_sum(flat_dz, axis=0), d_h0, d_c0

    return (outputs, h, c), backward


def forward_loop(projected, recurrent_kernel, h0, c0):
    """(h, c, every step's c [time, batch, units], every step's gates i f g o [time, batch, 4 units])."""
    steps = tf.shape(projected)[0]
    # sigmoid(x) = (1 + tanh(x / 2)) / 2: the four gates as one tanh, scaled and shifted (a layer's
    # forward and backward 1.05-1.14x faster under XLA than tf.sigmoid on i, f, o and tf.tanh on g).
    half, one = tf.fill(tf.shape(h0)[-1:], tf.constant(0.5, h0.dtype)), tf.ones_like(h0[0])
    scale, shift = tf.concat([half, half, one, half], 0), tf.concat([half, half, one - one, half], 0)

    def step(t, h, c, cs, gates):
        gate_values = scale * tf.tanh(scale * (projected[t] + tf.matmul(h, recurrent_kernel))) + shift
        i, f, g, o = tf.split(gate_values, 4, axis=-1)
        c = f * c + i * g
        return t + 1, o * tf.tanh(c), c, cs.write(t, c), gates.write(t, gate_values)

    arrays = [tf.TensorArray(projected.dtype, size=steps) for _ in range(2)]
    _, h, c, cs, gates = tf.while_loop(lambda t, *_: t < steps, step, (0, h0, c0, *arrays))
    return h, c, cs.stack(), gates.stack()


def backward_loop(d_hs, d_h, d_c, gates, cs, previous_c, recurrent_kernel):
    """(d pre-activations [time, batch, 4 units], d h0, d c0) from the gradients of every step's h."""
    i, f, g, o = tf.split(gates, 4, axis=-1)
    tanh_c = tf.tanh(cs)
    # What does not depend on the gradient flowing back, for all steps at once outside the loop:
    # d h_t / d c_t, and d c_t / d z_t (gates i, f, g) or d h_t / d z_t (gate o).
    h_by_c = o * (1.0 - tanh_c * tanh_c)
    z_factors = tf.concat([g * i * (1.0 - i), previous_c * f * (1.0 - f), i * (1.0 - g * g),
                           tanh_c * o * (1.0 - o)], axis=-1)
    # A transposed copy: with transpose_b instead, XLA's CPU matmul (Eigen) made a layer's forward
    # and backward 1.13x slower (48.8 against 43.2 ms, side by side).
    recurrent_t = tf.transpose(recurrent_kernel)

    def back_step(t, d_h, d_c, d_zs):
        d_h = d_h + d_hs[t]
        d_c = d_c + d_h * h_by_c[t]
        d_z = tf.concat([d_c, d_c, d_c, d_h], axis=-1) * z_factors[t]
        return t - 1, tf.matmul(d_z, recurrent_t), d_c * f[t], d_zs.write(t, d_z)

    steps = tf.shape(d_hs)[0]
    _, d_h0, d_c0, d_zs = tf.while_loop(lambda t, *_: t >= 0, back_step,
                                        (steps - 1, d_h, d_c, tf.TensorArray(d_hs.dtype, size=steps)))
    return d_zs.stack(), d_h0, d_c0
