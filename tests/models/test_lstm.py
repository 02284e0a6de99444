"""The fused LSTM computes keras.layers.LSTM's outputs, states and gradients, and loads its weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tflm.models.fused_lstm import FusedLSTM


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_lstm_matches_keras_lstm_forward_and_backward(jit_compile):
    x = tf.random.stateless_normal((3, 7, 5), seed=(1, 2))
    initial = [tf.random.stateless_normal((3, 4), seed=(3, i)) for i in range(2)]
    reference = keras.layers.LSTM(4, return_sequences=True, return_state=True)
    reference(x)
    fused = FusedLSTM(4)
    fused(x)
    fused.cell.set_weights(reference.cell.get_weights())  # the same variables, the same layout

    def loss_and_grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            tape.watch(initial)
            outputs, h, c = layer(x, initial_state=initial)
            loss = tf.reduce_sum(outputs * tf.range(1.0, 5.0)) + tf.reduce_sum(h * h) - tf.reduce_sum(c)
        variables = layer.cell.trainable_variables
        return [outputs, h, c, *tape.gradient(loss, [x, *initial, *variables])]

    expected = loss_and_grads(reference)
    actual = tf.function(lambda: loss_and_grads(fused), jit_compile=jit_compile)()
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-4, atol=1e-5)


def test_fused_lstm_keeps_keras_lstm_checkpoint_paths():
    fused = FusedLSTM(4, name="lstm_0")
    fused(tf.zeros((1, 2, 3)))
    assert sorted(v.path for v in fused.weights) == [
        "lstm_0/lstm_cell/bias", "lstm_0/lstm_cell/kernel", "lstm_0/lstm_cell/recurrent_kernel"]
