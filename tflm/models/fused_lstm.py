"""A fused LSTM layer for CPU training: keras.layers.LSTM's math, weights and checkpoint layout,
with its time loop and backward pass written for speed.

Measured (benchmarks/peer_speed.py; the char LSTM config, 2 x 256 units, batch 32, context 64):
Keras' LSTM spends most of a training step in the backward pass of its time loop, which
differentiates each step's cell separately (three small matmuls per step: input, recurrent and
weight gradients). Here:
  - the input projection of every time step is one matmul before the loop;
  - the forward loop does one [batch, units] x [units, 4 units] matmul per step;
  - the backward pass is written by hand (`tf.custom_gradient`): its loop does one matmul per step
    (the gradient flowing to the previous state), and the weight gradients are two large matmuls
    over all time steps after the loop, as cuDNN and oneDNN do it.
Under XLA (configs/char_lstm.yaml) a 2 x 256 training step took 94 ms against 290 ms without XLA
and 0.85x PyTorch's nn.LSTM tokens/s, from 0.37x with keras.layers.LSTM (AVX2 CPU, README).
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
    units = tf.shape(recurrent_kernel)[0]
    projected = tf.einsum("btf,fg->tbg", inputs, kernel) + bias  # every step's input term at once
    steps = tf.shape(projected)[0]

    def step(t, h, c, hs, cs, gates):
        h, c, gate_values = lstm_cell(projected[t] + tf.matmul(h, recurrent_kernel), c)
        return t + 1, h, c, hs.write(t, h), cs.write(t, c), gates.write(t, tf.concat(gate_values, axis=-1))

    arrays = [tf.TensorArray(inputs.dtype, size=steps) for _ in range(3)]
    _, h, c, hs, cs, gates = tf.while_loop(lambda t, *_: t < steps, step, (0, h0, c0, *arrays))
    hs, cs, gates = hs.stack(), cs.stack(), gates.stack()  # [time, batch, ...]
    outputs = tf.transpose(hs, [1, 0, 2])

    def backward(d_outputs, d_h, d_c):
        d_hs = tf.transpose(tf.zeros_like(outputs) if d_outputs is None else d_outputs, [1, 0, 2])
        d_h = tf.zeros_like(h) if d_h is None else d_h
        d_c = tf.zeros_like(c) if d_c is None else d_c
        previous_h = tf.concat([h0[None], hs[:-1]], axis=0)
        previous_c = tf.concat([c0[None], cs[:-1]], axis=0)

        def back_step(t, d_h, d_c, d_zs):
            i, f, g, o = tf.split(gates[t], 4, axis=-1)
            d_h = d_h + d_hs[t]
            tanh_c = tf.tanh(cs[t])
            d_c = d_c + d_h * o * (1.0 - tanh_c * tanh_c)
            d_z = tf.concat([d_c * g * i * (1.0 - i), d_c * previous_c[t] * f * (1.0 - f),
                             d_c * i * (1.0 - g * g), d_h * tanh_c * o * (1.0 - o)], axis=-1)
            return t - 1, tf.matmul(d_z, recurrent_kernel, transpose_b=True), d_c * f, d_zs.write(t, d_z)

        _, d_h0, d_c0, d_zs = tf.while_loop(lambda t, *_: t >= 0, back_step,
                                            (steps - 1, d_h, d_c, tf.TensorArray(inputs.dtype, size=steps)))
        d_zs = d_zs.stack()  # [time, batch, 4 units]
        flat_dz = tf.reshape(d_zs, [-1, 4 * units])
        d_recurrent = tf.matmul(tf.reshape(previous_h, [-1, units]), flat_dz, transpose_a=True)
        d_kernel = tf.einsum("btf,tbg->fg", inputs, d_zs)
        d_inputs = tf.einsum("tbg,fg->btf", d_zs, kernel)
        return d_inputs, d_kernel, d_recurrent, tf.reduce_sum(flat_dz, axis=0), d_h0, d_c0

    return (outputs, h, c), backward
